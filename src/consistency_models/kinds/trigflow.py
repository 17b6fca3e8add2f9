"""sCM's TrigFlow models (Lu & Song 2024), in σ-space: consistency models with the paper's time
input t ("trigflow") or an EDM-preconditioned network's 250·ln σ ("trigflow_edm", e.g. an sCD
student started from its EDM teacher), both sampled with sCM's re-noising; and the TrigFlow
diffusion model ("trigflow_diffusion", trained by `--method edm --time-input t`), the teacher sCD
starts its student from. All carry diffusers' SCMScheduler (its time t and velocity output)."""

from __future__ import annotations

from ..parametrization import Denoiser, TrigFlowFunction
from ..sampling import HEUN_SAMPLER, TRIGFLOW_SAMPLER
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

DIFFUSION_KIND = register(ModelKind(
    name="trigflow_diffusion",
    summary="a TrigFlow diffusion model (velocity, time input t)",
    # x̂₀ = cos t·x_t − sin t·σ_d·F_θ(x_t/σ_d, t) is the denoiser D(x_σ, σ) of a diffusion model as
    # it is f_θ of a consistency model (the same c_skip, c_out, c_in), so it samples with Heun's method
    wrapper=TrigFlowFunction,
    sampler=HEUN_SAMPLER,
    scheduler_class=TRIGFLOW_SCHEDULER_CLASS,
    teacher=True,
    network_time="t",
    grid_search="a diffusion (TrigFlow) model",
))
