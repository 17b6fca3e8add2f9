"""Training losses as callables: loss(x, class_labels, step, rng) → one loss value per sample.

Each loss owns the models it needs: the student (a `Preconditioned` wrapper around the
network being trained, possibly wrapped in DistributedDataParallel), the target θ⁻ and the
teacher D. `after_step(step)` runs after each optimizer step (the EMA target update of CD/CT).
All randomness comes from the `BatchRNG`, except dropout, which uses torch's global RNG; the
student and its stop-gradient target see the same dropout mask (iCT, ECT).

- EDMLoss: Karras et al. 2022, eq. 2 and Table 1 (the teachers).
- CDLoss: consistency distillation, Song et al. 2023, Algorithm 2.
- CTLoss: consistency training, Algorithm 3, with OpenAI's adaptive N(k), μ(k).
- ICTLoss: improved CT, Song & Dhariwal 2023.
- ECTLoss: easy consistency tuning, Geng et al. 2024.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from ..parametrization import RHO, SIGMA_MAX, SIGMA_MIN, Preconditioned
from ..sampling import euler_step, heun_step
from .batch_rng import BatchRNG
from .curricula import (
    ascending_grid,
    ct_schedule,
    ect_r,
    ect_stage,
    ict_index_probabilities,
    ict_schedule,
    lognormal_sigmas,
)
from .distances import Distance, get_distance, pseudo_huber
from .ema import ema_update_


@contextmanager
def same_dropout(device: torch.device) -> Iterator[callable]:
    """Yields `rewind()`, which puts the RNG back where it was, so a second forward reuses the masks."""
    cuda = device.type == "cuda"
    state = torch.cuda.get_rng_state(device) if cuda else torch.get_rng_state()

    def rewind() -> None:
        if cuda:
            torch.cuda.set_rng_state(state, device)
        else:
            torch.set_rng_state(state)

    yield rewind


def _unwrap(network: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper."""
    return getattr(network, "module", network)


def _column(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return sigma.to(torch.float32).reshape(-1, *([1] * (x.ndim - 1)))


class Loss:
    """Common interface of the training losses."""

    def __call__(self, x: torch.Tensor, class_labels: torch.Tensor | None, step: int, rng: BatchRNG) -> torch.Tensor:
        raise NotImplementedError

    def after_step(self, step: int) -> None:
        """Called after each optimizer step with the index of the step just taken."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class EDMLoss(Loss):
    """λ(σ)·‖D(x + σn, σ) − x‖² (mean over elements), σ ~ lognormal, λ = (σ² + σ_d²)/(σ·σ_d)²."""

    def __init__(self, denoiser: Preconditioned, p_mean: float = -1.2, p_std: float = 1.2) -> None:
        self.denoiser = denoiser
        self.p_mean, self.p_std = p_mean, p_std

    def __call__(self, x, class_labels, step, rng):
        sigma = lognormal_sigmas(rng.randn(), self.p_mean, self.p_std).to(torch.float64)
        noise = rng.randn(*x.shape[1:])
        sd = self.denoiser.sigma_data
        weight = (sigma**2 + sd**2) / (sigma * sd) ** 2
        denoised = self.denoiser(x + _column(sigma, x) * noise, sigma, class_labels)
        return weight.to(torch.float32) * (denoised - x).pow(2).reshape(x.shape[0], -1).mean(dim=1)


class _PairLoss(Loss):
    """d(f_θ(x + t_hi·z, t_hi), f_θ⁻(x_lo, t_lo)) with the target evaluated without gradient."""

    def __init__(self, student: Preconditioned, target: Preconditioned, distance: Distance) -> None:
        self.student = student
        self.target = target
        self.distance = distance

    def pair(self, x, class_labels, t_hi, x_hi, t_lo, x_lo) -> tuple[torch.Tensor, torch.Tensor]:
        with same_dropout(x.device) as rewind:
            student = self.student(x_hi, t_hi, class_labels)
            rewind()
            with torch.no_grad():
                target = self.target(x_lo, t_lo, class_labels)
        return student, target

    def same_noise_pair(self, x, class_labels, grid: torch.Tensor, index: torch.Tensor, rng: BatchRNG):
        """(student at grid[index+1], target at grid[index], t_lo, t_hi), both noised with one z (CT, iCT)."""
        t_lo, t_hi = grid[index].to(x.device), grid[index + 1].to(x.device)
        z = rng.randn(*x.shape[1:])
        student, target = self.pair(x, class_labels, t_hi, x + _column(t_hi, x) * z, t_lo, x + _column(t_lo, x) * z)
        return student, target, t_lo, t_hi


class CDLoss(_PairLoss):
    """Consistency distillation (Algorithm 2): the target sits one teacher ODE step below.

    x_hi = x + t_{n+1}·z, x_lo = Heun (or Euler) step of the teacher D from t_{n+1} to t_n,
    loss d(f_θ(x_hi, t_{n+1}), f_θ⁻(x_lo, t_n)); θ⁻ ← μθ⁻ + (1 − μ)θ after every step.
    """

    def __init__(
        self,
        student: Preconditioned,
        target: Preconditioned,
        teacher: Preconditioned,
        num_scales: int = 18,          # N, points of the Karras grid
        mu: float = 0.95,              # EMA rate of the target network
        solver: str = "heun",          # "heun" or "euler"
        distance: str = "l2",
        sigma_min: float = SIGMA_MIN,
        sigma_max: float = SIGMA_MAX,
        rho: float = RHO,
    ) -> None:
        super().__init__(student, target, get_distance(distance))
        if solver not in ("heun", "euler"):
            raise ValueError(f"solver: {solver!r} is not 'heun' or 'euler'")
        self.teacher = teacher
        self.mu = mu
        self.step_fn = heun_step if solver == "heun" else euler_step
        self.grid = ascending_grid(num_scales, sigma_min, sigma_max, rho)

    def __call__(self, x, class_labels, step, rng):
        n = rng.randint(len(self.grid) - 1).cpu()
        t_lo, t_hi = self.grid[n].to(x.device), self.grid[n + 1].to(x.device)
        x_hi = x + _column(t_hi, x) * rng.randn(*x.shape[1:])
        with torch.no_grad():
            x_lo = self.step_fn(self.teacher, x_hi, t_hi, t_lo, class_labels)
        student, target = self.pair(x, class_labels, t_hi, x_hi, t_lo, x_lo)
        return self.distance(student, target)

    def after_step(self, step):
        ema_update_(self.target.network, _unwrap(self.student.network), self.mu)


class CTLoss(_PairLoss):
    """Consistency training (Algorithm 3): x_lo = x + t_n·z with the same z; adaptive N(k), μ(k)."""

    def __init__(
        self,
        student: Preconditioned,
        target: Preconditioned,
        total_steps: int,
        s0: int = 2,                   # initial grid size term
        s1: int = 150,                 # final grid size term
        mu0: float = 0.9,              # initial target EMA rate
        mu_form: str = "openai",       # "openai": ln μ0·s0/(N−1); "paper": /N
        distance: str = "l2",
        sigma_min: float = SIGMA_MIN,
        sigma_max: float = SIGMA_MAX,
        rho: float = RHO,
    ) -> None:
        super().__init__(student, target, get_distance(distance))
        self.total_steps = total_steps
        self.s0, self.s1, self.mu0, self.mu_form = s0, s1, mu0, mu_form
        self.sigma_range = (sigma_min, sigma_max, rho)

    def schedule(self, step: int) -> tuple[int, float]:
        return ct_schedule(step, self.total_steps, self.s0, self.s1, self.mu0, self.mu_form)

    def __call__(self, x, class_labels, step, rng):
        num_scales, _ = self.schedule(step)
        grid = ascending_grid(num_scales, *self.sigma_range)
        n = rng.randint(num_scales - 1).cpu()
        student, target, _, _ = self.same_noise_pair(x, class_labels, grid, n, rng)
        return self.distance(student, target)

    def after_step(self, step):
        _, mu = self.schedule(step)
        ema_update_(self.target.network, _unwrap(self.student.network), mu)


class ICTLoss(_PairLoss):
    """Improved CT: θ⁻ = stop-grad θ, pseudo-Huber, lognormal index, λ = 1/(σ_{i+1} − σ_i)."""

    def __init__(
        self,
        student: Preconditioned,
        target: Preconditioned,
        total_steps: int,
        s0: int = 10,
        s1: int = 1280,
        p_mean: float = -1.1,
        p_std: float = 2.0,
        distance: str = "pseudo_huber",
        sigma_min: float = SIGMA_MIN,
        sigma_max: float = SIGMA_MAX,
        rho: float = RHO,
    ) -> None:
        super().__init__(student, target, get_distance(distance))
        self.total_steps = total_steps
        self.s0, self.s1, self.p_mean, self.p_std = s0, s1, p_mean, p_std
        self.sigma_range = (sigma_min, sigma_max, rho)

    def __call__(self, x, class_labels, step, rng):
        num_scales = ict_schedule(step, self.total_steps, self.s0, self.s1)
        grid = ascending_grid(num_scales, *self.sigma_range)
        i = rng.choice(ict_index_probabilities(grid, self.p_mean, self.p_std)).cpu()
        student, target, t_lo, t_hi = self.same_noise_pair(x, class_labels, grid, i, rng)
        weight = (1 / (t_hi - t_lo)).to(torch.float32)
        return weight * self.distance(student, target)


class ECTLoss(_PairLoss):
    """Easy consistency tuning: d(f_θ(x + t·ε, t), sg f_θ(x + r·ε, r)) / (t − r), pseudo-Huber.

    t ~ lognormal(P_mean, P_std) clamped to [σ_min, σ_max]; r from `ect_r` at the current stage;
    where r ≤ σ_min the target is the clean x (the boundary condition).
    """

    def __init__(
        self,
        student: Preconditioned,
        total_steps: int,
        num_stages: int = 8,           # the stage is raised every total_steps/num_stages steps
        q: float = 2.0,
        k: float = 8.0,
        b: float = 1.0,
        p_mean: float = -1.1,
        p_std: float = 2.0,
        c: float | None = None,        # pseudo-Huber c; default 0.00054·√d
        sigma_min: float = SIGMA_MIN,
        sigma_max: float = SIGMA_MAX,
        target: Preconditioned | None = None,
    ) -> None:
        super().__init__(student, target if target is not None else student, pseudo_huber)
        self.total_steps, self.num_stages = total_steps, num_stages
        self.q, self.k, self.b = q, k, b
        self.p_mean, self.p_std, self.c = p_mean, p_std, c
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def __call__(self, x, class_labels, step, rng):
        t = lognormal_sigmas(rng.randn(), self.p_mean, self.p_std).to(torch.float64)
        t = t.clamp(self.sigma_min, self.sigma_max)
        r = ect_r(t, ect_stage(step, self.total_steps, self.num_stages), self.q, self.k, self.b)
        eps = rng.randn(*x.shape[1:])
        r_eval = r.clamp(min=self.sigma_min)
        student, target = self.pair(x, class_labels, t, x + _column(t, x) * eps, r_eval, x + _column(r_eval, x) * eps)
        boundary = _column(r <= self.sigma_min, x)
        target = torch.where(boundary.bool(), x.float(), target)
        return pseudo_huber(student, target, self.c) / (t - r).to(torch.float32)

