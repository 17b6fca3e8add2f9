"""Diffusion model training: the teachers of CD, ECT and sCD.

Two forms of the same objective, chosen by the network's time input:

- log_sigma (default): the EDM denoiser (Karras et al. 2022, eq. 2 and Table 1),
  λ(σ)·‖D_θ(x + σn, σ) − x‖², σ ~ lognormal(P_mean, P_std), λ = (σ² + σ_d²)/(σ·σ_d)².
- t: the TrigFlow diffusion model of sCM (Lu & Song 2024, arXiv 2410.11081, §2 and eq. 4):
  x_t = cos t·x₀ + sin t·z, z ~ N(0, σ_d²I), t = arctan(σ/σ_d) with the same σ draw,
  ‖σ_d·F_θ(x_t/σ_d, t) − (cos t·z − sin t·x₀)‖²: the network predicts the velocity dx_t/dt
  and takes t itself as its time input, as the sCD student started from it must.

They are one objective up to the constant σ_d²: with D = cos t·x_t − sin t·σ_d·F (x_σ = x_t/cos t),
D − x₀ = sin t·(v − σ_d·F), and λ(σ) = 1/(σ_d·sin t)², so λ·‖D − x₀‖² = ‖σ_d·F − v‖²/σ_d².
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...kinds import teacher_kind
from ...parametrization import Preconditioned, append_dims
from ...trigflow import TrigFlow
from ..curricula import lognormal_sigmas
from ..settings import BudgetDefault, MethodOptions, RunSettings
from .loss import Loss
from .options import p_mean_option, p_std_option, time_input_option
from .registry import LossInputs, Method, register

EDM_PROPOSAL = (-1.2, 1.2)   # Karras et al. 2022, Table 1
SCM_PROPOSAL = (-1.0, 1.4)   # Lu & Song 2024, the small-image runs (the sCM methods' default too)


def _proposal(run: RunSettings) -> tuple[float, float]:
    return SCM_PROPOSAL if run.options.time_input == "t" else EDM_PROPOSAL


@dataclass
class EDMOptions(MethodOptions):
    """The diffusion model's form (its network's time input) and its σ proposal."""

    time_input: str = time_input_option("log_sigma")
    p_mean: float | None = p_mean_option(None, BudgetDefault(lambda run: _proposal(run)[0],
                                                             "-1.2 (EDM), -1.0 with --time-input t (sCM)"))
    p_std: float | None = p_std_option(None, BudgetDefault(lambda run: _proposal(run)[1],
                                                           "1.2 (EDM), 1.4 with --time-input t (sCM)"))


class EDMLoss(Loss):
    """λ(σ)·‖D(x + σn, σ) − x‖² (mean over elements), σ ~ lognormal, λ = (σ² + σ_d²)/(σ·σ_d)²."""

    def __init__(self, denoiser: Preconditioned, p_mean: float = EDM_PROPOSAL[0],
                 p_std: float = EDM_PROPOSAL[1]) -> None:
        self.denoiser = denoiser
        self.p_mean, self.p_std = p_mean, p_std

    def __call__(self, x, class_labels, step, rng):
        sigma = lognormal_sigmas(rng.randn(), self.p_mean, self.p_std).to(torch.float64)
        noise = rng.randn(*x.shape[1:])
        sd = self.denoiser.sigma_data
        weight = (sigma**2 + sd**2) / (sigma * sd) ** 2
        denoised = self.denoiser(x + append_dims(sigma, x) * noise, sigma, class_labels)
        return weight.to(torch.float32) * (denoised - x).pow(2).reshape(x.shape[0], -1).mean(dim=1)


class TrigFlowDiffusionLoss(Loss):
    """‖σ_d·F_θ(x_t/σ_d, t) − (cos t·z − sin t·x₀)‖² (mean over elements); σ and the noise are
    drawn as `EDMLoss` draws them, t = arctan(σ/σ_d), z = σ_d·n."""

    def __init__(self, network: torch.nn.Module, sigma_data: float, p_mean: float = SCM_PROPOSAL[0],
                 p_std: float = SCM_PROPOSAL[1]) -> None:
        self.model = TrigFlow(network, sigma_data, "t")
        self.sigma_data, self.p_mean, self.p_std = sigma_data, p_mean, p_std

    def __call__(self, x, class_labels, step, rng):
        sigma = lognormal_sigmas(rng.randn(), self.p_mean, self.p_std).to(torch.float64)
        z = rng.randn(*x.shape[1:]) * self.sigma_data
        t = torch.atan(sigma / self.sigma_data)
        cos, sin = (append_dims(f(t), x).to(torch.float32) for f in (torch.cos, torch.sin))
        x_t = cos * x + sin * z
        velocity = self.model.velocity(x_t, t, class_labels)
        return (velocity - (cos * z - sin * x)).pow(2).reshape(x.shape[0], -1).mean(dim=1)


def build_loss(inputs: LossInputs) -> Loss:
    options = inputs.options
    if options.time_input == "t":
        return TrigFlowDiffusionLoss(inputs.student, inputs.config.sigma_data, options.p_mean, options.p_std)
    return EDMLoss(inputs.wrap(inputs.student, "edm"), options.p_mean, options.p_std)


def diffusion_kind(run: RunSettings) -> str:
    """The exported kind: the teacher kind whose network takes the run's time input."""
    return teacher_kind(run.options.time_input).name


METHOD = register(Method(
    name="edm",
    summary="diffusion model: EDM denoiser (a teacher for cd and ect), or TrigFlow with --time-input t "
            "(the teacher scd starts from)",
    parametrization=diffusion_kind,
    build_loss=build_loss,
    options=EDMOptions,
))
