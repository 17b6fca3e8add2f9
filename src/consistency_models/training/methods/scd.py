"""sCD: continuous-time consistency distillation (Lu & Song 2024, arXiv 2410.11081) of an EDM teacher."""

from __future__ import annotations

from dataclasses import dataclass

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
    # The teacher's raw network: in TrigFlow time an EDM denoiser is F = −F_edm (see trigflow.py).
    return scm_loss(inputs, inputs.teacher.network)


METHOD = register(Method(
    name="scd",
    summary="continuous-time consistency distillation (sCM, TrigFlow) of --teacher",
    parametrization=exported_parametrization,
    build_loss=build_loss,
    options=SCDOptions,
    teacher="required",
    # A fresh student with the paper's time input t, not a copy of the teacher: this project's EDM
    # teachers take 250·ln σ as time input, and a student started from one keeps it, which collapses
    # under the JVP (2-D toy, 1-step on-mode 0 %, against 89 % for a fresh student; see trigflow.py).
    # --init-from-teacher still starts from the teacher (time input log_sigma).
    init_from_teacher=False,
))
