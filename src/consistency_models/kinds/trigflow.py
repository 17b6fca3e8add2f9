"""sCM's TrigFlow consistency models (Lu & Song 2024), in σ-space: with the paper's time input t
("trigflow"), or an EDM-preconditioned network's 250·ln σ ("trigflow_edm", e.g. an sCD student
started from its EDM teacher). Both sample with sCM's re-noising and carry diffusers' SCMScheduler."""

from __future__ import annotations

from ..parametrization import Denoiser, TrigFlowFunction
from ..sampling import TRIGFLOW_SAMPLER
from . import TRIGFLOW_SCHEDULER_CLASS, ModelKind, register

SEARCH = "an sCM (TrigFlow) model: give its two times directly, e.g. --timesteps 1.56454,1.1"

KIND = register(ModelKind(
    name="trigflow",
    summary="an sCM (TrigFlow) model",
    wrapper=TrigFlowFunction,
    sampler=TRIGFLOW_SAMPLER,
    scheduler_class=TRIGFLOW_SCHEDULER_CLASS,
    time_input="t",
    network_time="t",
    grid_search=SEARCH,
))

EDM_TIME_KIND = register(ModelKind(
    name="trigflow_edm",
    summary="an sCM (TrigFlow) model with an EDM network's time input",
    wrapper=Denoiser,            # f(x_t, t) = D(x_σ, σ) (see ../trigflow.py)
    sampler=TRIGFLOW_SAMPLER,
    scheduler_class=TRIGFLOW_SCHEDULER_CLASS,
    time_input="log_sigma",
    grid_search=SEARCH,
))
