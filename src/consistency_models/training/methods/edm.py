"""EDM denoiser training (Karras et al. 2022, eq. 2 and Table 1): the teachers of CD and ECT."""

from __future__ import annotations

import torch

from ...parametrization import Preconditioned, append_dims
from ..curricula import lognormal_sigmas
from .loss import Loss
from .registry import LossInputs, Method, register


class EDMLoss(Loss):
    """λ(σ)·‖D(x + σn, σ) − x‖² (mean over elements), σ ~ lognormal, λ = (σ² + σ_d²)/(σ·σ_d)²."""

    def __init__(self, denoiser: Preconditioned, p_mean: float = -1.2, p_std: float = 1.2) -> None:
        self.denoiser = denoiser
        self.p_mean, self.p_std = p_mean, p_std

    def __call__(self, x, class_labels, step, rng):
        sigma = lognormal_sigmas(rng.randn(), self.p_mean, self.p_std).to(torch.float64)
        noise = rng.randn(*x.shape[1:])
        sd = self.denoiser.sigma_data
        weight = (sigma**2 + sd**2) / (sigma * sd) ** 2
        denoised = self.denoiser(x + append_dims(sigma, x) * noise, sigma, class_labels)
        return weight.to(torch.float32) * (denoised - x).pow(2).reshape(x.shape[0], -1).mean(dim=1)


def build_loss(inputs: LossInputs) -> EDMLoss:
    return EDMLoss(inputs.wrap(inputs.student, "edm"))


METHOD = register(Method(
    name="edm",
    summary="EDM denoiser (a teacher for cd and ect)",
    parametrization="edm",
    build_loss=build_loss,
))
