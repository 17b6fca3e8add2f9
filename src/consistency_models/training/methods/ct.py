"""Consistency training (Song et al. 2023, Algorithm 3) with OpenAI's adaptive N(k), μ(k)."""

from __future__ import annotations

from dataclasses import dataclass

from ...parametrization import RHO, SIGMA_MAX, SIGMA_MIN, Preconditioned
from ..curricula import ct_curriculum
from ..distances import Distance
from ..ema import ema_update_
from ..settings import RATE, RunSettings, setting
from .loss import CurriculumPairLoss, unwrap
from .options import CurriculumOptions, s0_option, s1_option
from .registry import LossInputs, Method, register

MU_FORMS = ("openai", "paper")


@dataclass
class CTOptions(CurriculumOptions):
    """CT's settings; the defaults are OpenAI's CT runs (s0, s1, μ0 of the paper's Table 3)."""

    s0: int = s0_option(2)
    s1: int = s1_option(150)
    mu0: float = setting(0.9, "initial target EMA rate", check=RATE)
    mu_form: str = setting("openai", "mu(k): OpenAI's code (N-1) or the paper (N)", choices=MU_FORMS)


class CTLoss(CurriculumPairLoss):
    """Consistency training (Algorithm 3): x_lo = x + t_n·z with the same z; adaptive N(k), μ(k)."""

    def __init__(
        self,
        student: Preconditioned,
        target: Preconditioned,
        total_steps: int,
        s0: int = CTOptions.s0,                # initial grid size term
        s1: int = CTOptions.s1,                # final grid size term
        mu0: float = CTOptions.mu0,            # initial target EMA rate
        mu_form: str = CTOptions.mu_form,      # "openai": ln μ0·s0/(N−1); "paper": /N
        distance: str | Distance = CTOptions.distance,
        sigma_min: float = SIGMA_MIN,
        sigma_max: float = SIGMA_MAX,
        rho: float = RHO,
    ) -> None:
        super().__init__(student, target, distance, total_steps, s0, s1, (sigma_min, sigma_max, rho))
        self.mu0, self.mu_form = mu0, mu_form

    def schedule(self, step: int) -> tuple[int, float]:
        return ct_curriculum(step, self.total_steps, self.s0, self.s1, self.mu0, self.mu_form)

    def __call__(self, x, class_labels, step, rng):
        num_scales, _ = self.schedule(step)
        grid = self.grid(num_scales)
        n = rng.randint(num_scales - 1).cpu()
        student, target, _, _ = self.same_noise_pair(x, class_labels, grid, n, rng)
        return self.distance(student, target)

    def after_step(self, step):
        _, mu = self.schedule(step)
        ema_update_(unwrap(self.target.network), unwrap(self.student.network), mu)


def build_loss(inputs: LossInputs) -> CTLoss:
    options: CTOptions = inputs.options
    return CTLoss(inputs.wrap(inputs.student), inputs.wrap(inputs.target), total_steps=inputs.config.steps,
                  s0=options.s0, s1=options.s1, mu0=options.mu0, mu_form=options.mu_form,
                  distance=inputs.distance(), **inputs.sigma_range)


def grid_size(run: RunSettings) -> int:
    """N(K): the grid the run ends on."""
    options: CTOptions = run.options
    return ct_curriculum(run.steps, run.steps, options.s0, options.s1, options.mu0, options.mu_form)[0]


METHOD = register(Method(
    name="ct",
    summary="consistency training",
    parametrization="consistency",
    build_loss=build_loss,
    options=CTOptions,
    teacher="optional",
    init_from_teacher=True,
    teacher_in_loss=False,
    target_network=True,
    grid_size=grid_size,
))
