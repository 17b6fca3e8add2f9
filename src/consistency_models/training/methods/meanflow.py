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

As in sCM (scm.py) the JVP is its own pass without gradient (u⁻ is the network itself, with the
student's dropout mask), then u_θ is evaluated with gradient; the paper takes both from one JVP.
Not built: the paper's classifier-free guidance in the target (ω) needs a network trained with
dropped labels, which our networks' class embeddings do not have.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from ...meanflow import AverageVelocity
from ..jvp import jvp
from ..settings import FINITE, MethodOptions, positive_number, setting
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
    ) -> None:
        self.student = AverageVelocity(student)
        self.target = AverageVelocity(unwrap(student))   # u_θ⁻: the same weights, no gradient
        self.time_mean, self.time_std, self.equal_times = time_mean, time_std, equal_times
        self.weight_power, self.weight_c, self.jvp_mode = weight_power, weight_c, jvp_mode

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
        return self.loss_at(x, noise, r, t, class_labels)

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
                        weight_power=o.weight_power, weight_c=o.weight_c, jvp_mode=o.jvp)


METHOD = register(Method(
    name="meanflow",
    summary="MeanFlow: the average velocity u(z, r, t), one step from noise, from scratch (no teacher)",
    parametrization="meanflow",
    build_loss=build_loss,
    options=MeanFlowOptions,
))

__all__ = ["MeanFlowLoss", "MeanFlowOptions"]
