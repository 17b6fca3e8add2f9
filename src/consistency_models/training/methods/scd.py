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
    defaults=SCM_DEFAULTS,
    teacher="required",
    init_from_teacher=True,
))
