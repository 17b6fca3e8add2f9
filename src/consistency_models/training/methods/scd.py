"""sCD: continuous-time consistency distillation (Lu & Song 2024, arXiv 2410.11081) of a diffusion
teacher: a TrigFlow diffusion model (`--method edm --time-input t`), which the student starts from
as in the paper, or an EDM denoiser, from which a fresh student with time input t learns."""

from __future__ import annotations

from dataclasses import dataclass

from ..settings import BudgetDefault
from .options import teacher_time
from .registry import LossInputs, Method, register
from .scm import SCMLoss, SCMOptions, adaptive_weight_option
from .sct import exported_parametrization, scm_loss


@dataclass
class SCDOptions(SCMOptions):
    """sCD's settings: sCT's, without the adaptive weight by default. With the teacher's
    (noise-free) velocity the error at t near π/2 gets tiny, w(t) grows to ~7.5 there (e^w ≈ 1800)
    and starves the middle t — measured on the 2-D toy, 1-step on-mode 35 % with it, 89 % without
    (bench/toy_scm.py; docs/benchmarks.md)."""

    adaptive_weight: bool = adaptive_weight_option(False)


def build_loss(inputs: LossInputs) -> SCMLoss:
    # The teacher's raw network, read in TrigFlow time by its own time input (an EDM one: F = −F_edm).
    return scm_loss(inputs, inputs.teacher.network)


METHOD = register(Method(
    name="scd",
    summary="continuous-time consistency distillation (sCM, TrigFlow) of --teacher",
    parametrization=exported_parametrization,
    build_loss=build_loss,
    options=SCDOptions,
    teacher="required",
    # The student starts as the teacher when the teacher's network takes t (a TrigFlow diffusion
    # model), as the paper's does. From an EDM teacher (time input 250·ln σ) a fresh student with
    # input t: a copy keeps 250·ln σ, which collapses under the JVP (2-D toy, 1-step on-mode 0 %,
    # against 89 % for a fresh student; see trigflow.py); --init-from-teacher still starts from it.
    init_from_teacher=BudgetDefault(lambda run: teacher_time(run) == "t",
                                    "when the teacher is a TrigFlow diffusion model (its network takes t)"),
))
