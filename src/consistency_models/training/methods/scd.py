"""sCD: continuous-time consistency distillation (Lu & Song 2024, arXiv 2410.11081) of an EDM teacher."""

from __future__ import annotations

from .registry import LossInputs, Method, register
from .scm import SCMLoss
from .sct import SCM_DEFAULTS, exported_parametrization, scm_loss


def build_loss(inputs: LossInputs) -> SCMLoss:
    # The teacher's raw network: in TrigFlow time an EDM denoiser is F = −F_edm (see trigflow.py).
    return scm_loss(inputs, inputs.teacher.network)


METHOD = register(Method(
    name="scd",
    summary="continuous-time consistency distillation (sCM, TrigFlow) of --teacher",
    parametrization=exported_parametrization,
    build_loss=build_loss,
    # Without the adaptive weight by default: with the teacher's (noise-free) velocity the error at t
    # near π/2 gets tiny, w(t) grows to ~7.5 there (e^w ≈ 1800) and starves the middle t — measured
    # on the 2-D toy, 1-step on-mode 35 % with it, 89 % without (bench/toy_scm.py; docs/benchmarks.md).
    defaults={**SCM_DEFAULTS, "adaptive_weight": False},
    teacher="required",
    init_from_teacher=True,
))
