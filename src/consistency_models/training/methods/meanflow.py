"""MeanFlow: the average velocity u(z_t, r, t) trained from scratch, no teacher, no curriculum
(Geng, Deng, Bai, Kolter, He 2025, arXiv 2505.13447, Algorithm 1; the flow and the identity are
in ../../meanflow.py).

For data x, ε ~ N(0, I) and times r ≤ t:

    z_t = (1 − t)·x + t·ε,  v = ε − x                               (the conditional velocity)
    (u⁻, du/dt) = JVP of u_θ⁻(·, r, ·) at (z_t, t) along (v, 1)       (du/dt = v·∂_z u + ∂_t u)
    u_tgt = v − clip(t − r, 0, 1)·du/dt                              (eq. 10, stop-gradient)
    Δ = u_θ(z_t, r, t) − u_tgt,  L = ‖Δ‖² / sg(‖Δ‖² + c)^p            (adaptive weight, §4.3)

(r, t): two logit-normal draws (logit ~ N(mean, std²)), t the larger; then r = t for a share of
the batch (plain flow matching: u(z, t, t) = v). Defaults are the paper's ImageNet ones (mean
−0.4, std 1.0, r = t for 75 %, p = 1, c = 1e-3; its CIFAR-10 run used −2.0, 2.0, 75 %, p = 0.75).

Guidance (§4.2, eq. 13–15; off by default, ω = 1): with `guidance` ω the conditional velocity in
the target becomes ṽ = ω·v + (1 − ω)·u_θ⁻(z_t, t, t | ∅), the network's own unconditional
velocity (no gradient), and the JVP runs along (ṽ, 1); labels are dropped to the null class
(`networks.unet.NULL_CLASS`, a zero class embedding) for a share `class_dropout` of the batch
(the paper's 10 %), whose targets keep v. One step then samples the guided model, still 1 NFE.

As in sCM (scm.py) the JVP is its own pass without gradient (u⁻ is the network itself, with the
student's dropout mask), then u_θ is evaluated with gradient; the paper takes both from one JVP.
"""

from __future__ import annotations

import copy
import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from ...errors import InvalidInputError
from ...meanflow import AverageVelocity
from ...networks.unet import NULL_CLASS
from ..jvp import jvp
from ..settings import FINITE, BudgetDefault, MethodOptions, RunSettings, positive_number, setting
from .loss import Loss, same_dropout, unwrap
from .options import jvp_option
from .registry import LossInputs, Method, register


@dataclass
class MeanFlowOptions(MethodOptions):
    """MeanFlow's settings (the paper's ImageNet defaults)."""

    time_mean: float = setting(-0.4, "mean of the logit-normal proposal of t and r: logit(t) ~ N(mean, std^2)",
                               check=FINITE)
    time_std: float = setting(1.0, "std of the logit-normal proposal", check=positive_number("a number > 0"))
    equal_times: float = setting(0.75, "share of samples with r = t (plain flow matching)",
                                 check=(lambda v: 0 <= v <= 1, "a share in [0, 1]"))
    weight_power: float = setting(1.0, "adaptive weight w = 1/(|delta|^2 + c)^p: the power p (0: plain squared error)",
                                  check=(lambda v: 0 <= v <= 2, "a power in [0, 2]"))
    weight_c: float = setting(1e-3, "adaptive weight's c", check=positive_number("a number > 0"))
    jvp: str = jvp_option("exact")
    guidance: float = setting(1.0, "classifier-free guidance scale omega in the target (1: none); needs class labels",
                              check=(lambda v: math.isfinite(v) and v >= 1, "a scale >= 1 (1: no guidance)"))
    class_dropout: float | None = setting(None, "share of labels dropped to the null class (trains the "
                                                "unconditional velocity guidance uses)",
                                          check=(lambda v: 0 <= v < 1, "a share in [0, 1)"),
                                          budget=BudgetDefault(lambda run: 0.1 if run.options.guidance != 1 else 0.0,
                                                               "0.1 with --guidance (the paper's), else 0"))

    def check(self, run: RunSettings) -> None:
        if self.guidance != 1 and self.class_dropout == 0:
            raise InvalidInputError(f"class_dropout: 0 leaves --guidance {self.guidance:g} no unconditional "
                                    "velocity to learn; give a share > 0 (the paper's: 0.1)")
        if (self.guidance != 1 or self.class_dropout) and not run.use_labels:
            raise InvalidInputError("guidance: --guidance and --class-dropout need class labels; this run is "
                                    "--unconditional")


class MeanFlowLoss(Loss):
    """The MeanFlow loss of a network with two time inputs (t, t − r)."""

    def __init__(
        self,
        student: nn.Module,                  # the raw network being trained (DDP-wrapped when distributed)
        time_mean: float = MeanFlowOptions.time_mean,
        time_std: float = MeanFlowOptions.time_std,
        equal_times: float = MeanFlowOptions.equal_times,
        weight_power: float = MeanFlowOptions.weight_power,
        weight_c: float = MeanFlowOptions.weight_c,
        jvp_mode: str = MeanFlowOptions.jvp,
        guidance: float = MeanFlowOptions.guidance,
        class_dropout: float = 0.0,
    ) -> None:
        self.student = AverageVelocity(student)
        self.target = AverageVelocity(unwrap(student))   # u_θ⁻: the same weights, no gradient
        self.time_mean, self.time_std, self.equal_times = time_mean, time_std, equal_times
        self.weight_power, self.weight_c, self.jvp_mode = weight_power, weight_c, jvp_mode
        self.guidance, self.class_dropout = guidance, class_dropout

    def sample_times(self, rng) -> tuple[torch.Tensor, torch.Tensor]:
        """(r, t) per sample, float64: the smaller and larger of two logit-normal draws, with r = t
        for a share `equal_times` of the samples."""
        logits = self.time_mean + self.time_std * rng.randn(2).to(torch.float64)
        a, b = torch.sigmoid(logits).unbind(dim=1)
        t, r = torch.maximum(a, b), torch.minimum(a, b)
        equal = rng.rand().to(torch.float64) < self.equal_times
        return torch.where(equal, t, r), t

    def __call__(self, x, class_labels, step, rng):
        x = x.float()
        r, t = self.sample_times(rng)
        noise = rng.randn(*x.shape[1:])
        if self.class_dropout > 0 or self.guidance != 1:
            if class_labels is None:
                raise InvalidInputError("guidance: --guidance and --class-dropout need class labels; the data has none")
            dropped = rng.rand() < self.class_dropout
            class_labels = torch.where(dropped, torch.full_like(class_labels, NULL_CLASS), class_labels)
        return self.loss_at(x, noise, r, t, class_labels)

    def guided(self, z, t, v, class_labels) -> torch.Tensor:
        """ṽ = ω·v + (1 − ω)·u_θ⁻(z, t, t | ∅) for labelled samples, v for those dropped to the null class."""
        if self.guidance == 1 or class_labels is None:
            return v
        unconditional = self.target(z, t, t, torch.full_like(class_labels, NULL_CLASS)).float()
        guided = self.guidance * v + (1 - self.guidance) * unconditional
        return torch.where(_dims(class_labels == NULL_CLASS, v).bool(), v, guided)

    def target_velocity(self, z, r, t, v, class_labels, rewind) -> tuple[torch.Tensor, torch.Tensor]:
        """(u⁻, u_tgt) in float32, without gradient: u_tgt = v − clip(t − r, 0, 1)·du/dt."""
        target = self.target
        dtype = torch.float32
        if self.jvp_mode == "fd":   # a float64 copy of the current weights
            target, dtype = AverageVelocity(copy.deepcopy(self.target.network).double()), torch.float64
        precision = torch.autocast(z.device.type, enabled=False) if self.jvp_mode == "fd" else nullcontext()
        with precision:
            u_minus, dudt = jvp(lambda zz, tt: target(zz, r.to(dtype), tt, class_labels), (z.to(dtype), t.to(dtype)),
                                (v.to(dtype), torch.ones_like(t, dtype=dtype)), self.jvp_mode, before_call=rewind)
        gap = _dims((t - r).clamp(0, 1), z)
        return u_minus.float(), v - gap * dudt.float()

    def loss_at(self, x, noise, r, t, class_labels, velocity=None) -> torch.Tensor:
        """The per-sample loss for data x, noise ε, times r ≤ t ((B,), float64). `velocity`: the
        velocity field v(z, t) to use instead of the conditional ε − x (the exact marginal one, in tests)."""
        tt = _dims(t, x)
        z = (1 - tt) * x + tt * noise
        v = noise - x if velocity is None else velocity(z, t).float()
        with torch.no_grad():
            with same_dropout(x.device) as rewind:
                v = self.guided(z, t, v, class_labels)
                _, u_target = self.target_velocity(z, r, t, v, class_labels, rewind)
        rewind()
        u = self.student(z, r, t, class_labels).float()
        squared = (u - u_target).pow(2).reshape(x.shape[0], -1).sum(dim=1)
        weight = (squared.detach() + self.weight_c) ** -self.weight_power
        return weight * squared


def _dims(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-sample vector as float32 (B, 1, …) against `like`."""
    return v.to(torch.float32).reshape(-1, *([1] * (like.ndim - 1)))


def build_loss(inputs: LossInputs) -> MeanFlowLoss:
    o = inputs.options
    return MeanFlowLoss(inputs.student, time_mean=o.time_mean, time_std=o.time_std, equal_times=o.equal_times,
                        weight_power=o.weight_power, weight_c=o.weight_c, jvp_mode=o.jvp, guidance=o.guidance,
                        class_dropout=o.class_dropout)


METHOD = register(Method(
    name="meanflow",
    summary="MeanFlow: the average velocity u(z, r, t), one step from noise, from scratch (no teacher)",
    parametrization="meanflow",
    build_loss=build_loss,
    options=MeanFlowOptions,
))

__all__ = ["MeanFlowLoss", "MeanFlowOptions"]
