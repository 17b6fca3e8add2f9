"""sCD: continuous-time consistency distillation (Lu & Song 2024, arXiv 2410.11081) of a diffusion
teacher: a TrigFlow diffusion model (`--method edm --time-input t`), which the student starts from
as in the paper, or an EDM denoiser, from which a fresh student with time input t learns."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import InvalidInputError
from ..settings import BudgetDefault, RunSettings
from .options import teacher_time
from .registry import LossInputs, Method, register
from .scm import SCMLoss, SCMOptions, adaptive_weight_option, weight_bound_option
from .sct import exported_parametrization, scm_loss


def copies_a_trigflow_teacher(run: RunSettings) -> bool:
    return bool(run.init_from_teacher) and teacher_time(run) == "t"


@dataclass
class SCDOptions(SCMOptions):
    """sCD's settings: sCT's, with the learned weighting bounded (B = 1) and on only for a student
    that starts as a TrigFlow teacher. With the teacher's (noise-free) velocity the error at t near
    π/2 gets tiny and an unbounded w(t) grows to ~7.5 there (e^w ≈ 1800), starving the middle t
    (2-D toy, 1-step on-mode 35 % with it, 89 % without). Bounded at 1 it helps the copy of a
    TrigFlow teacher on digits and is even on the toy; a fresh student from an EDM teacher does
    better without it (toy: 91.5/90.1/83.4 % off, 84.4/87.3/82.5 % bounded; README, sCD section)."""

    adaptive_weight: bool | None = adaptive_weight_option(
        None, BudgetDefault(copies_a_trigflow_teacher, "on for a copy of a TrigFlow teacher, else off"))
    weight_bound: float | None = weight_bound_option(
        None, BudgetDefault(lambda run: 1.0 if run.options.adaptive_weight else 0.0, "1 when the weighting is on"))


def build_loss(inputs: LossInputs) -> SCMLoss:
    # The teacher's raw network, read in TrigFlow time by its own time input (an EDM one: F = −F_edm).
    # That time (t = arctan(σ/σ_d)) and the network's input scaling are the run's σ_d's: a teacher
    # trained with another σ_data would be misread, so it is refused.
    run, teacher = inputs.config, inputs.teacher
    if teacher.sigma_data != run.sigma_data:
        raise InvalidInputError(f"sigma_data: {run.sigma_data} for this run, but the teacher {run.teacher} was trained "
                                f"with sigma_data {teacher.sigma_data}; sCD reads it in the run's TrigFlow time, give "
                                f"--sigma-data {teacher.sigma_data}")
    return scm_loss(inputs, teacher.network)


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
