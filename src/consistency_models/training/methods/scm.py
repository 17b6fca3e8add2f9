"""The continuous-time consistency loss of sCT and sCD (Lu & Song 2024, arXiv 2410.11081, Algorithm 1).

With TrigFlow time (see `trigflow.py`), for data x₀, z ~ N(0, σ_d²I), τ ~ N(P_mean, P_std²):

    t = arctan(e^τ/σ_d),   x_t = cos t·x₀ + sin t·z
    dx_t/dt = cos t·z − sin t·x₀ (sCT)   or   σ_d·F_teacher(x_t/σ_d, t) (sCD)
    (F⁻, J) = JVP of F_θ⁻ at (x_t/σ_d, t) along (cos t·sin t·dx_t/dt, cos t·sin t·σ_d)
              so that J = cos t·sin t·σ_d·dF_θ⁻/dt, the total derivative along the trajectory
    g = −cos²t·(σ_d·F⁻ − dx_t/dt) − r·(cos t·sin t·x_t + J),   r = min(1, k/H)  (tangent warm-up)
    g ← g / (‖g‖ + c)                                                              (normalisation)
    L = e^{w_φ(t)}/D·‖F_θ(x_t/σ_d, t) − F⁻ − g‖² − w_φ(t)                         (adaptive weight)

(w_φ = 0 when the adaptive weight is off: sCD's default here, see scd.py.)

F_θ⁻ is the network itself without gradient, evaluated (and differentiated) with the dropout
mask of the student's forward pass. The tangent pass (the teacher's velocity and the JVP) is its
own pass without gradient: no tangent activation is kept for the backward. It runs in the run's
precision (bfloat16 autocast on a GPU: the attention's softmax and tangent sums and GroupNorm
stay float32, see networks/attention.py) or, with jvp_precision="float32", in float32 with
autocast off; g and its normalisation are always formed in float32.
"""

from __future__ import annotations

import copy
import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from ...errors import InvalidInputError
from ...trigflow import TrigFlow
from ..jvp import JVP_PRECISIONS, jvp
from ..settings import MAX_STEPS, BudgetDefault, MethodOptions, RunSettings, integer_range, positive_number, setting
from .loss import Loss, same_dropout, unwrap
from .options import jvp_option, p_mean_option, p_std_option, teacher_time, time_input_option

PAPER_WARMUP = 10_000   # H of the paper's runs (of 100k–400k steps)


def budget_warmup(run: RunSettings) -> int:
    """H = a tenth of the run, at most the paper's 10k: a short run reaches the full tangent (r = 1)."""
    return min(PAPER_WARMUP, max(1, run.steps // 10))


def default_time_input(run: RunSettings) -> str:
    """A student started from a teacher keeps the teacher's time input (log_sigma from an EDM
    teacher, t from a TrigFlow one); else t."""
    return teacher_time(run) if run.init_from_teacher else "t"


def adaptive_weight_option(default: bool | None, budget: BudgetDefault | None = None):
    return setting(default, "learn the weighting w(t) jointly (L = e^w/D |.|^2 - w)", budget=budget)


def weight_bound_option(default: float | None, budget: BudgetDefault | None = None):
    return setting(default, "bound B of the learned weighting: w = B tanh(w_phi/B) (0: unbounded)",
                   check=(lambda v: math.isfinite(v) and v >= 0, "a number >= 0 (0: unbounded)"), budget=budget)


@dataclass
class SCMOptions(MethodOptions):
    """sCT's and sCD's settings. P_mean, P_std, c: the paper's small-image settings (CIFAR-10;
    ImageNet-64 used P_mean −0.8, P_std 1.6); the loss's defaults too."""

    p_mean: float = p_mean_option(-1.0)
    p_std: float = p_std_option(1.4)
    tangent_warmup: int | None = setting(None, "tangent warm-up H: r = min(1, step/H) (0: none)",
                                         check=integer_range(0, MAX_STEPS, "a number of steps"),
                                         budget=BudgetDefault(budget_warmup, "steps/10, at most 10000"))
    tangent_c: float = setting(0.1, "tangent normalisation g/(|g| + c)", check=positive_number("a number > 0"))
    adaptive_weight: bool = adaptive_weight_option(True)
    time_input: str | None = time_input_option(None, BudgetDefault(default_time_input,
                                                                   "the teacher's when started from it, else t"))
    weight_bound: float = weight_bound_option(0.0)
    jvp: str = jvp_option("exact")
    jvp_precision: str = setting("run", "precision of the tangent pass (teacher velocity, JVP): run (the run's "
                                        "--precision; softmax and GroupNorm in float32) or float32 (autocast off)",
                                 choices=JVP_PRECISIONS)

    def check(self, run: RunSettings) -> None:
        taken = teacher_time(run) if run.init_from_teacher else None   # read once from the teacher's folder
        if taken is not None and self.time_input != taken:
            raise InvalidInputError(f"time_input: {self.time_input!r} does not fit a student started from the "
                                    f"teacher (its network takes {taken}); give --time-input {taken} or "
                                    "--no-init-from-teacher")
        if self.weight_bound and not self.adaptive_weight:
            raise InvalidInputError(f"weight_bound: {self.weight_bound!r} bounds the learned weighting, which "
                                    "is off; give --adaptive-weight or leave --weight-bound out")


class AdaptiveWeight(nn.Module):
    """w_φ(t), the learned log-weight of sCM (its eq. 8, after EDM2's uncertainty weighting):
    fixed Fourier features of c = ¼·ln(σ_d·tan t), then one linear layer, zero at the start;
    with `bound` B > 0 the weight is B·tanh(w/B), within (−B, B) and w itself near 0."""

    def __init__(self, sigma_data: float = 0.5, channels: int = 128, seed: int = 0, bound: float = 0.0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.sigma_data = sigma_data
        self.bound = float(bound)
        self.register_buffer("frequencies", torch.randn(channels, generator=gen))
        self.register_buffer("phases", torch.rand(channels, generator=gen))
        self.linear = nn.Linear(channels, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        c = (torch.log(self.sigma_data * torch.tan(t.double())) / 4).float()
        features = torch.cos(2 * math.pi * (c[:, None] * self.frequencies + self.phases)) * math.sqrt(2)
        w = self.linear(features).squeeze(-1)
        return self.bound * torch.tanh(w / self.bound) if self.bound > 0 else w


class SCMLoss(Loss):
    """sCT (no teacher: dx_t/dt from the pair x₀, z) or sCD (the teacher's velocity)."""

    def __init__(
        self,
        student: nn.Module,                  # the raw network being trained (DDP-wrapped when distributed)
        weight: nn.Module | None,            # w_φ (DDP-wrapped when distributed); None: w = 0
        teacher: nn.Module | None = None,    # the teacher's raw network (sCD), else None (sCT)
        sigma_data: float = 0.5,
        p_mean: float = SCMOptions.p_mean,
        p_std: float = SCMOptions.p_std,
        tangent_warmup: int = PAPER_WARMUP,  # H: r = min(1, k/H); 0 = no warm-up
        tangent_c: float = SCMOptions.tangent_c,
        jvp_mode: str = SCMOptions.jvp,      # "exact" (forward-mode AD) or "fd" (float64 finite difference)
        time_input: str = "t",               # the student's time input (see trigflow.py)
        jvp_precision: str = SCMOptions.jvp_precision,  # "run": the run's autocast; "float32": autocast off
        teacher_time_input: str = "log_sigma",  # the teacher network's time input: an EDM denoiser's or
                                                # a TrigFlow diffusion model's t
    ) -> None:
        if jvp_precision not in JVP_PRECISIONS:
            raise InvalidInputError(f"jvp_precision: {jvp_precision!r} is not one of {', '.join(JVP_PRECISIONS)}")
        self.student = TrigFlow(student, sigma_data, time_input)
        self.target = TrigFlow(unwrap(student), sigma_data, time_input)   # F_θ⁻: the same weights, no gradient
        # an EDM teacher is F = −F_edm in TrigFlow time with its own time input (see trigflow.py)
        self.teacher = TrigFlow(teacher, sigma_data, teacher_time_input) if teacher is not None else None
        self.weight = weight
        self.sigma_data, self.p_mean, self.p_std = sigma_data, p_mean, p_std
        self.tangent_warmup, self.tangent_c, self.jvp_mode = tangent_warmup, tangent_c, jvp_mode
        self.jvp_precision = jvp_precision

    def parameters(self) -> list[nn.Parameter]:
        return [] if self.weight is None else list(self.weight.parameters())

    def state_dict(self) -> dict:
        return {} if self.weight is None else {"weight": unwrap(self.weight).state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if self.weight is not None:
            unwrap(self.weight).load_state_dict(state["weight"])

    def sample_time(self, rng) -> torch.Tensor:
        """t = arctan(e^τ/σ_d), τ ~ N(P_mean, P_std²), per sample, float64."""
        tau = self.p_mean + self.p_std * rng.randn().to(torch.float64)
        return torch.atan(torch.exp(tau) / self.sigma_data)

    def tangent_precision(self, device: torch.device):
        """The context of the tangent pass: the run's autocast as it is ("run"), or autocast off
        ("float32", and always for the float64 finite differences)."""
        if self.jvp_precision == "run" and self.jvp_mode != "fd":
            return nullcontext()
        return torch.autocast(device.type, enabled=False)

    def tangent(self, x_t, t, dxdt, class_labels, step, rewind) -> tuple[torch.Tensor, torch.Tensor]:
        """(F⁻, the normalised tangent g), in float32, without gradient."""
        cos, sin = (_dims(f(t), x_t) for f in (torch.cos, torch.sin))
        target = self.target
        if self.jvp_mode == "fd":  # a float64 copy of the current weights
            target = TrigFlow(copy.deepcopy(self.target.network).double(), self.sigma_data, self.target.time_input)
        u = x_t / self.sigma_data
        dtype = torch.float64 if self.jvp_mode == "fd" else torch.float32
        with self.tangent_precision(x_t.device):
            f_minus, j = jvp(lambda uu, tt: target.F_scaled(uu, tt, class_labels), (u.to(dtype), t),
                             ((cos * sin * dxdt).to(dtype), torch.cos(t) * torch.sin(t) * self.sigma_data),
                             self.jvp_mode, before_call=rewind)
        f_minus, j = f_minus.float(), j.float()
        r = 1.0 if self.tangent_warmup <= 0 else min(1.0, step / self.tangent_warmup)
        g = -(cos * cos) * (self.sigma_data * f_minus - dxdt) - r * (cos * sin * x_t + j)
        norm = g.reshape(g.shape[0], -1).norm(dim=1)
        return f_minus, g / _dims(norm + self.tangent_c, g)

    def __call__(self, x, class_labels, step, rng):
        x = x.float()
        t = self.sample_time(rng)
        z = rng.randn(*x.shape[1:]) * self.sigma_data
        return self.loss_at(x, t, z, class_labels, step)

    def loss_at(self, x, t, z, class_labels, step) -> torch.Tensor:
        """The per-sample loss for data x, times t (float64, (B,)) and noise z ~ N(0, σ_d²I)."""
        cos, sin = (_dims(f(t), x) for f in (torch.cos, torch.sin))
        x_t = cos * x + sin * z
        with torch.no_grad():
            if self.teacher is None:
                dxdt = cos * z - sin * x
            else:
                with self.tangent_precision(x.device):
                    dxdt = self.teacher.velocity(x_t, t, class_labels).float()
            with same_dropout(x.device) as rewind:
                f_minus, g = self.tangent(x_t, t, dxdt, class_labels, step, rewind)
        rewind()
        f_theta = self.student.F(x_t, t, class_labels).float()
        w = self.weight(t).float() if self.weight is not None else torch.zeros(x.shape[0], device=x.device)
        squared = (f_theta - f_minus - g).pow(2).reshape(x.shape[0], -1).mean(dim=1)
        return torch.exp(w) * squared - w


def _dims(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-sample vector as float32 (B, 1, …) against `like`."""
    return v.to(torch.float32).reshape(-1, *([1] * (like.ndim - 1)))


__all__ = ["AdaptiveWeight", "SCMLoss", "SCMOptions"]
