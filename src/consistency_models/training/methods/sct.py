"""sCT: continuous-time consistency training (Lu & Song 2024, arXiv 2410.11081), no teacher."""

from __future__ import annotations

from ...errors import InvalidInputError
from ...kinds import kind_with_time_input
from .registry import BudgetDefault, LossInputs, Method, register
from .scm import AdaptiveWeight, SCMLoss

PAPER_WARMUP = 10_000   # H of the paper's runs (of 100k–400k steps)


def budget_warmup(cfg) -> int:
    """H = a tenth of the run, at most the paper's 10k: a short run reaches the full tangent (r = 1)."""
    return min(PAPER_WARMUP, max(1, cfg.steps // 10))


def default_time_input(cfg) -> str:
    """log_sigma for a student started from an EDM teacher (it keeps the teacher's time input), else t."""
    return "log_sigma" if cfg.init_from_teacher else "t"


def exported_parametrization(cfg) -> str:
    return kind_with_time_input(cfg.time_input).name


# The small-image settings of the paper (CIFAR-10); ImageNet-64 used P_mean −0.8, P_std 1.6.
SCM_DEFAULTS = {
    "p_mean": -1.0,
    "p_std": 1.4,
    "tangent_warmup": BudgetDefault(budget_warmup, "steps/10, at most 10000"),
    "tangent_c": 0.1,
    "jvp": "exact",
    "jvp_precision": "run",
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
    return SCMLoss(inputs.student, weight, teacher, cfg.sigma_data, cfg.p_mean, cfg.p_std, cfg.tangent_warmup,
                   cfg.tangent_c, cfg.jvp, cfg.time_input, cfg.jvp_precision)


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
