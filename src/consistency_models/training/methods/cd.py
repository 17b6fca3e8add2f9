"""Consistency distillation (Song et al. 2023, Algorithm 2) from an EDM teacher."""

from __future__ import annotations

import torch

from ...parametrization import RHO, SIGMA_MAX, SIGMA_MIN, Preconditioned, append_dims
from ...sampling import euler_step, heun_step
from ..curricula import ascending_grid
from ..distances import Distance, get_distance
from ..ema import ema_update_
from .loss import PairLoss, unwrap
from .registry import LossInputs, Method, register


# OpenAI's CD runs; the loss's own defaults and `cm train --method cd`'s, stated once.
DEFAULTS = {"distance": "l2", "num_scales": 40, "target_mu": 0.95, "solver": "heun"}


class CDLoss(PairLoss):
    """Consistency distillation (Algorithm 2): the target sits one teacher ODE step below.

    x_hi = x + t_{n+1}·z, x_lo = Heun (or Euler) step of the teacher D from t_{n+1} to t_n,
    loss d(f_θ(x_hi, t_{n+1}), f_θ⁻(x_lo, t_n)); θ⁻ ← μθ⁻ + (1 − μ)θ after every step.
    """

    def __init__(
        self,
        student: Preconditioned,
        target: Preconditioned,
        teacher: Preconditioned,
        num_scales: int = DEFAULTS["num_scales"],   # N, points of the Karras grid
        mu: float = DEFAULTS["target_mu"],          # EMA rate of the target network
        solver: str = DEFAULTS["solver"],           # "heun" or "euler"
        distance: str | Distance = DEFAULTS["distance"],
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
        x_hi = x + append_dims(t_hi, x) * rng.randn(*x.shape[1:])
        with torch.no_grad():
            x_lo = self.step_fn(self.teacher, x_hi, t_hi, t_lo, class_labels)
        student, target = self.pair(x, class_labels, t_hi, x_hi, t_lo, x_lo)
        return self.distance(student, target)

    def after_step(self, step):
        ema_update_(unwrap(self.target.network), unwrap(self.student.network), self.mu)


def build_loss(inputs: LossInputs) -> CDLoss:
    cfg = inputs.config
    return CDLoss(inputs.wrap(inputs.student), inputs.wrap(inputs.target), inputs.teacher, num_scales=cfg.num_scales,
                  mu=cfg.target_mu, solver=cfg.solver, distance=inputs.distance(), **inputs.sigma_range)


METHOD = register(Method(
    name="cd",
    summary="consistency distillation from --teacher",
    parametrization="consistency",
    build_loss=build_loss,
    defaults=DEFAULTS,
    teacher="required",
    init_from_teacher=True,    # as OpenAI's CD runs: the student starts as the teacher, dropout 0
    student_dropout=0.0,
    target_network=True,
    grid_size=lambda cfg: cfg.num_scales,
))
