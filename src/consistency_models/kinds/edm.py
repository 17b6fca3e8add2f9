"""The EDM denoiser D_θ(x, σ) (Karras et al. 2022): a diffusion model, sampled with Heun's method;
the teacher of distillation."""

from __future__ import annotations

from ..parametrization import Denoiser
from ..sampling import HEUN_SAMPLER
from . import ModelKind, register

KIND = register(ModelKind(
    name="edm",
    summary="a diffusion (EDM) model",
    wrapper=Denoiser,
    sampler=HEUN_SAMPLER,
    teacher=True,
    openai_prefix="edm_",
    grid_search="a diffusion (EDM) model",
))
