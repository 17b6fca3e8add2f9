"""sCT: continuous-time consistency training (Lu & Song 2024, arXiv 2410.11081), no teacher."""

from __future__ import annotations

from ...kinds import kind_with_time_input
from ..settings import RunSettings
from .registry import LossInputs, Method, register
from .scm import AdaptiveWeight, SCMLoss, SCMOptions


def exported_parametrization(run: RunSettings) -> str:
    return kind_with_time_input(run.options.time_input).name


def scm_loss(inputs: LossInputs, teacher) -> SCMLoss:
    run, options = inputs.config, inputs.options
    weight = None
    if options.adaptive_weight:
        weight = inputs.trainable(AdaptiveWeight(run.sigma_data, seed=run.seed, bound=options.weight_bound))
    teacher_time_input = inputs.teacher_kind.network_time if teacher is not None else "log_sigma"
    return SCMLoss(inputs.student, weight, teacher, sigma_data=run.sigma_data, p_mean=options.p_mean,
                   p_std=options.p_std, tangent_warmup=options.tangent_warmup, tangent_c=options.tangent_c,
                   jvp_mode=options.jvp, time_input=options.time_input, jvp_precision=options.jvp_precision,
                   teacher_time_input=teacher_time_input)


def build_loss(inputs: LossInputs) -> SCMLoss:
    return scm_loss(inputs, None)


METHOD = register(Method(
    name="sct",
    summary="continuous-time consistency training (sCM, TrigFlow), from scratch or --init-from",
    parametrization=exported_parametrization,
    build_loss=build_loss,
    options=SCMOptions,
    teacher="optional",
    init_from_teacher=True,      # --teacher: the student starts from it (and keeps its time input)
    teacher_in_loss=False,
))
