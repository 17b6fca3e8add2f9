"""Consistency distillation (Song et al. 2023, Algorithm 2) from an EDM teacher."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...parametrization import RHO, SIGMA_MAX, SIGMA_MIN, Preconditioned, append_dims
from ...sampling import euler_step, heun_step
from ..curricula import ascending_grid
from ..distances import Distance, get_distance
from ..ema import ema_update_
from ..settings import RATE, integer_range, setting
from .loss import PairLoss, unwrap
from .options import MAX_SCALES, DistanceOptions
from .registry import LossInputs, Method, register

SOLVERS = ("heun", "euler")


@dataclass
class CDOptions(DistanceOptions):
    """CD's settings; the defaults are OpenAI's CD runs (the loss's defaults too)."""

    num_scales: int = setting(40, "grid size N", check=integer_range(2, MAX_SCALES, "an integer"))
    target_mu: float = setting(0.95, "target EMA rate mu", check=RATE)
    solver: str = setting("heun", "teacher ODE step", choices=SOLVERS)


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
        num_scales: int = CDOptions.num_scales,     # N, points of the Karras grid
        mu: float = CDOptions.target_mu,            # EMA rate of the target network
        solver: str = CDOptions.solver,             # "heun" or "euler"
        distance: str | Distance = CDOptions.distance,
        sigma_min: float = SIGMA_MIN,
        sigma_max: float = SIGMA_MAX,
        rho: float = RHO,
    ) -> None:
        super().__init__(student, target, get_distance(distance))
        if solver not in SOLVERS:
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
    options: CDOptions = inputs.options
    return CDLoss(inputs.wrap(inputs.student), inputs.wrap(inputs.target), inputs.teacher,
                  num_scales=options.num_scales, mu=options.target_mu, solver=options.solver,
                  distance=inputs.distance(), **inputs.sigma_range)


METHOD = register(Method(
    name="cd",
    summary="consistency distillation from --teacher",
    parametrization="consistency",
    build_loss=build_loss,
    options=CDOptions,
    teacher="required",
    init_from_teacher=True,    # as OpenAI's CD runs: the student starts as the teacher, dropout 0
    student_dropout=0.0,
    target_network=True,
    grid_size=lambda run: run.options.num_scales,
))
