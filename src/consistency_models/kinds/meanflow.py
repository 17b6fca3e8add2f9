"""MeanFlow's average-velocity model u_θ(z, r, t) (Geng et al. 2025; see ../meanflow.py): a network
with two time inputs, sampled by jumps z_r = z_t − (t − r)·u. diffusers has no scheduler for it:
its folders name our own ("MeanFlowScheduler" of consistency_models) and only this package samples
them."""

from __future__ import annotations

from ..meanflow import TIME_INPUTS, AverageVelocity
from ..sampling import MEANFLOW_SAMPLER
from . import ModelKind, register

SCHEDULER_CLASS = "MeanFlowScheduler"
WHY_NOT = "a MeanFlow (average velocity) model"

KIND = register(ModelKind(
    name="meanflow",
    summary="a MeanFlow (average velocity) model",
    wrapper=AverageVelocity,
    sampler=MEANFLOW_SAMPLER,
    scheduler_class=SCHEDULER_CLASS,
    scheduler_library="consistency_models",
    grid_search=WHY_NOT + ": give its flow times directly, e.g. --timesteps 1,0.5",
    editing=WHY_NOT + ", which has no denoiser f(x, σ) for Algorithm 4 to re-noise; interpolation applies",
    time_inputs=TIME_INPUTS,
    network_time="flow_t",
    uses_sigmas=False,
))
