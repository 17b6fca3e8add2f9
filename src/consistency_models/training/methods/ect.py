"""Easy consistency tuning (Geng et al. 2024, arXiv 2406.14548) of a pretrained EDM denoiser."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...parametrization import SIGMA_MAX, SIGMA_MIN, Preconditioned, append_dims
from ..curricula import ect_r, ect_stage, lognormal_sigmas
from ..distances import pseudo_huber
from ..settings import POSITIVE_INTEGER, setting
from .loss import PairLoss
from .options import MethodOptions
from .registry import LossInputs, Method, register


@dataclass
class ECTOptions(MethodOptions):
    """ECT's settings."""

    ect_stages: int = setting(8, "stages over the run (the paper's d: the target gets closer at each)",
                              check=POSITIVE_INTEGER)


class ECTLoss(PairLoss):
    """Easy consistency tuning: d(f_θ(x + t·ε, t), sg f_θ(x + r·ε, r)) / (t − r), pseudo-Huber.

    t ~ lognormal(P_mean, P_std) clamped to [σ_min, σ_max]; r from `ect_r` at the current stage;
    where r ≤ σ_min the target is the clean x (the boundary condition).
    """

    def __init__(
        self,
        student: Preconditioned,
        total_steps: int,
        num_stages: int = ECTOptions.ect_stages,  # the stage is raised every total_steps/num_stages steps
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
        student, target = self.pair(x, class_labels, t, x + append_dims(t, x) * eps,
                                    r_eval, x + append_dims(r_eval, x) * eps)
        boundary = append_dims(r <= self.sigma_min, x)
        target = torch.where(boundary.bool(), x.float(), target)
        return pseudo_huber(student, target, self.c) / (t - r).to(torch.float32)


def build_loss(inputs: LossInputs) -> ECTLoss:
    run, options = inputs.config, inputs.options
    return ECTLoss(inputs.wrap(inputs.student), total_steps=run.steps, num_stages=options.ect_stages,
                   sigma_min=run.sigma_min, sigma_max=run.sigma_max, target=inputs.wrap(inputs.network))


METHOD = register(Method(
    name="ect",
    summary="easy consistency tuning of --teacher or of an --init-from network",
    parametrization="consistency",
    build_loss=build_loss,
    options=ECTOptions,
    teacher="required",
    init_from_teacher=True,
    teacher_in_loss=False,
))
