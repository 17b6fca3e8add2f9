"""sCT: continuous-time consistency training (Lu & Song 2024, arXiv 2410.11081), no teacher."""

from __future__ import annotations

from ...errors import InvalidInputError
from ...kinds import kind_with_time_input
from .registry import BudgetDefault, LossInputs, Method, register
from .scm import DEFAULTS, PAPER_WARMUP, AdaptiveWeight, SCMLoss


def budget_warmup(cfg) -> int:
    """H = a tenth of the run, at most the paper's 10k: a short run reaches the full tangent (r = 1)."""
    return min(PAPER_WARMUP, max(1, cfg.steps // 10))


def default_time_input(cfg) -> str:
    """log_sigma for a student started from an EDM teacher (it keeps the teacher's time input), else t."""
    return "log_sigma" if cfg.init_from_teacher else "t"


def exported_parametrization(cfg) -> str:
    return kind_with_time_input(cfg.time_input).name


SCM_DEFAULTS = {
    **DEFAULTS,
    "tangent_warmup": BudgetDefault(budget_warmup, "steps/10, at most 10000"),
    "time_input": BudgetDefault(default_time_input, "log_sigma from an EDM teacher, else t"),
    "adaptive_weight": True,
}


def scm_loss(inputs: LossInputs, teacher) -> SCMLoss:
    cfg = inputs.config
    if cfg.init_from_teacher and cfg.time_input != "log_sigma":
        raise InvalidInputError(f"time_input: {cfg.time_input!r} does not fit a student started from the EDM "
                                "teacher (its network takes log_sigma); give --time-input log_sigma or "
                                "--no-init-from-teacher")
    weight = inputs.trainable(AdaptiveWeight(cfg.sigma_data, seed=cfg.seed)) if cfg.adaptive_weight else None
    return SCMLoss(inputs.student, weight, teacher, sigma_data=cfg.sigma_data, p_mean=cfg.p_mean, p_std=cfg.p_std,
                   tangent_warmup=cfg.tangent_warmup, tangent_c=cfg.tangent_c, jvp_mode=cfg.jvp,
                   time_input=cfg.time_input, jvp_precision=cfg.jvp_precision)


def build_loss(inputs: LossInputs) -> SCMLoss:
    return scm_loss(inputs, None)


METHOD = register(Method(
    name="sct",
    summary="continuous-time consistency training (sCM, TrigFlow), from scratch or --init-from",
    parametrization=exported_parametrization,
    build_loss=build_loss,
    defaults=SCM_DEFAULTS,
    teacher="optional",
    init_from_teacher=True,      # --teacher: the student starts from it (and keeps its time input, log_sigma)
))
