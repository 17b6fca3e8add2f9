"""Improved consistency training (Song & Dhariwal 2023, arXiv 2310.14189)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...parametrization import RHO, SIGMA_MAX, SIGMA_MIN, Preconditioned
from ..curricula import ict_index_probabilities, ict_curriculum
from ..distances import Distance
from .loss import CurriculumPairLoss
from ..settings import BudgetDefault, RunSettings
from .options import CurriculumOptions, distance_option, s0_option, s1_option
from .registry import LossInputs, Method, register

PAPER_DOUBLINGS = 7          # the paper's s1 = s0·2^7 = 1280 over 400k steps (8 stages of 50k)
STEPS_PER_STAGE = 400        # the shortest stage the toy and digits runs here train well with


def budget_s1(run: RunSettings) -> int:
    """s1 = s0·2^d with one doubling per stage of at least 400 steps, at most the paper's 7
    (s1 = 1280 from 3,200 steps on): 2,000 steps give s1 = 160 with s0 = 10, the README's toy recipe."""
    doublings = min(PAPER_DOUBLINGS, max(1, run.steps // STEPS_PER_STAGE - 1))
    return run.options.s0 * 2**doublings


@dataclass
class ICTOptions(CurriculumOptions):
    """iCT's settings: the paper's pseudo-Huber distance and s0; s1 from the run's length."""

    distance: str = distance_option("pseudo_huber")
    s0: int = s0_option(10)
    s1: int | None = s1_option(None, BudgetDefault(budget_s1, "s0*2^d, d = min(7, max(1, steps//400 - 1)): 160 at 2000 "
                                                              "steps, 1280 from 3200"))


class ICTLoss(CurriculumPairLoss):
    """Improved CT: θ⁻ = stop-grad θ, pseudo-Huber, lognormal index, λ = 1/(σ_{i+1} − σ_i)."""

    def __init__(
        self,
        student: Preconditioned,
        target: Preconditioned,
        total_steps: int,
        s0: int = ICTOptions.s0,
        s1: int = ICTOptions.s0 * 2**PAPER_DOUBLINGS,   # the run's length decides it in `cm train` (budget_s1)
        p_mean: float = -1.1,
        p_std: float = 2.0,
        distance: str | Distance = ICTOptions.distance,
        sigma_min: float = SIGMA_MIN,
        sigma_max: float = SIGMA_MAX,
        rho: float = RHO,
    ) -> None:
        super().__init__(student, target, distance, total_steps, s0, s1, (sigma_min, sigma_max, rho))
        self.p_mean, self.p_std = p_mean, p_std

    def __call__(self, x, class_labels, step, rng):
        num_scales = ict_curriculum(step, self.total_steps, self.s0, self.s1)
        grid = self.grid(num_scales)
        i = rng.choice(ict_index_probabilities(grid, self.p_mean, self.p_std)).cpu()
        student, target, t_lo, t_hi = self.same_noise_pair(x, class_labels, grid, i, rng)
        weight = (1 / (t_hi - t_lo)).to(torch.float32)
        return weight * self.distance(student, target)


def build_loss(inputs: LossInputs) -> ICTLoss:
    options: ICTOptions = inputs.options
    # θ⁻ is the student's own weights without gradient (no EMA target).
    return ICTLoss(inputs.wrap(inputs.student), inputs.wrap(inputs.network), total_steps=inputs.config.steps,
                   s0=options.s0, s1=options.s1, distance=inputs.distance(), **inputs.sigma_range)


METHOD = register(Method(
    name="ict",
    summary="improved consistency training",
    parametrization="consistency",
    build_loss=build_loss,
    options=ICTOptions,
    teacher="optional",
    init_from_teacher=True,
    teacher_in_loss=False,
    grid_size=lambda run: ict_curriculum(run.steps, run.steps, run.options.s0, run.options.s1),
))
