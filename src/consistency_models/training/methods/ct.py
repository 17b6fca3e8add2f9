"""Consistency training (Song et al. 2023, Algorithm 3) with OpenAI's adaptive N(k), μ(k)."""

from __future__ import annotations

from ...parametrization import RHO, SIGMA_MAX, SIGMA_MIN, Preconditioned
from ..curricula import ascending_grid, ct_curriculum
from ..distances import Distance, get_distance
from ..ema import ema_update_
from .loss import PairLoss, unwrap
from .registry import LossInputs, Method, register

# OpenAI's CT runs (s0, s1, μ0 of the paper's Table 3); the loss's defaults and `cm train --method ct`'s.
DEFAULTS = {"distance": "l2", "s0": 2, "s1": 150, "mu0": 0.9, "mu_form": "openai"}


class CTLoss(PairLoss):
    """Consistency training (Algorithm 3): x_lo = x + t_n·z with the same z; adaptive N(k), μ(k)."""

    def __init__(
        self,
        student: Preconditioned,
        target: Preconditioned,
        total_steps: int,
        s0: int = DEFAULTS["s0"],              # initial grid size term
        s1: int = DEFAULTS["s1"],              # final grid size term
        mu0: float = DEFAULTS["mu0"],          # initial target EMA rate
        mu_form: str = DEFAULTS["mu_form"],    # "openai": ln μ0·s0/(N−1); "paper": /N
        distance: str | Distance = DEFAULTS["distance"],
        sigma_min: float = SIGMA_MIN,
        sigma_max: float = SIGMA_MAX,
        rho: float = RHO,
    ) -> None:
        super().__init__(student, target, get_distance(distance))
        self.total_steps = total_steps
        self.s0, self.s1, self.mu0, self.mu_form = s0, s1, mu0, mu_form
        self.sigma_range = (sigma_min, sigma_max, rho)

    def schedule(self, step: int) -> tuple[int, float]:
        return ct_curriculum(step, self.total_steps, self.s0, self.s1, self.mu0, self.mu_form)

    def __call__(self, x, class_labels, step, rng):
        num_scales, _ = self.schedule(step)
        grid = ascending_grid(num_scales, *self.sigma_range)
        n = rng.randint(num_scales - 1).cpu()
        student, target, _, _ = self.same_noise_pair(x, class_labels, grid, n, rng)
        return self.distance(student, target)

    def after_step(self, step):
        _, mu = self.schedule(step)
        ema_update_(unwrap(self.target.network), unwrap(self.student.network), mu)


def build_loss(inputs: LossInputs) -> CTLoss:
    cfg = inputs.config
    return CTLoss(inputs.wrap(inputs.student), inputs.wrap(inputs.target), total_steps=cfg.steps, s0=cfg.s0,
                  s1=cfg.s1, mu0=cfg.mu0, mu_form=cfg.mu_form, distance=inputs.distance(), **inputs.sigma_range)


def grid_size(cfg) -> int:
    """N(K): the grid the run ends on."""
    return ct_curriculum(cfg.steps, cfg.steps, cfg.s0, cfg.s1, cfg.mu0, cfg.mu_form)[0]


METHOD = register(Method(
    name="ct",
    summary="consistency training",
    parametrization="consistency",
    build_loss=build_loss,
    defaults=DEFAULTS,
    teacher="optional",
    init_from_teacher=True,
    target_network=True,
    grid_size=grid_size,
))
