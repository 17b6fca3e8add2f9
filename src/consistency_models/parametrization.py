"""The σ grid and the preconditioning that turns any network into f(x, σ) or D(x, σ).

Consistency models (Song et al. 2023, arXiv 2303.01469, Appendix C) reuse the EDM
preconditioning (Karras et al. 2022, arXiv 2206.00364, Table 1) with the skip and output
scalings shifted by ε = σ_min so that the boundary condition f(x, σ_min) = x holds exactly:

    c_skip(σ) = σ_d² / ((σ − σ_min)² + σ_d²)
    c_out(σ)  = (σ − σ_min)·σ_d / √(σ² + σ_d²)
    c_in(σ)   = 1 / √(σ² + σ_d²)
    c_noise(σ) = 1000 · ¼ · ln(σ + 1e-44)

The EDM denoiser (the teachers) uses the unshifted c_skip = σ_d²/(σ² + σ_d²) and
c_out = σ·σ_d/√(σ² + σ_d²). The network itself never sees σ, only c_in·x and c_noise.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

SIGMA_MIN = 0.002
SIGMA_MAX = 80.0
SIGMA_DATA = 0.5
RHO = 7.0


def karras_sigmas(
    num: int,
    sigma_min: float = SIGMA_MIN,
    sigma_max: float = SIGMA_MAX,
    rho: float = RHO,
) -> torch.Tensor:
    """The N-point Karras grid, index 0 = σ_max (EDM eq. 5), in float64."""
    if num < 2:
        raise ValueError(f"num: the grid needs at least 2 points, got {num}")
    ramp = torch.linspace(0, 1, num, dtype=torch.float64)
    return sigmas_at(ramp, sigma_min, sigma_max, rho)


def sigmas_at(
    ramp: torch.Tensor,
    sigma_min: float = SIGMA_MIN,
    sigma_max: float = SIGMA_MAX,
    rho: float = RHO,
) -> torch.Tensor:
    """σ(u) = (σ_max^{1/ρ} + u·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ for u in [0, 1] (u = i/(N−1))."""
    ramp = torch.as_tensor(ramp, dtype=torch.float64)
    max_inv_rho = sigma_max ** (1 / rho)
    min_inv_rho = sigma_min ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def noise_conditioning(sigma: torch.Tensor) -> torch.Tensor:
    """c_noise(σ) = 250·ln(σ + 1e-44): the 'timestep' the UNet is given."""
    return 1000 * 0.25 * torch.log(sigma + 1e-44)


def sigma_from_noise_conditioning(c_noise: torch.Tensor) -> torch.Tensor:
    """σ = exp(c_noise/250), the inverse of `noise_conditioning` (in float64)."""
    return torch.exp(torch.as_tensor(c_noise, dtype=torch.float64) / 250.0)


def input_scaling(sigma: torch.Tensor, sigma_data: float = SIGMA_DATA) -> torch.Tensor:
    """c_in(σ) = 1/√(σ² + σ_d²), shared by the consistency and EDM parametrizations."""
    return 1 / (sigma**2 + sigma_data**2) ** 0.5


def consistency_scalings(
    sigma: torch.Tensor, sigma_data: float = SIGMA_DATA, sigma_min: float = SIGMA_MIN
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c_skip, c_out, c_in) with the σ_min-shifted boundary condition (CM paper, Appendix C)."""
    c_skip = sigma_data**2 / ((sigma - sigma_min) ** 2 + sigma_data**2)
    c_out = (sigma - sigma_min) * sigma_data / (sigma**2 + sigma_data**2) ** 0.5
    return c_skip, c_out, input_scaling(sigma, sigma_data)


def edm_scalings(
    sigma: torch.Tensor, sigma_data: float = SIGMA_DATA
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c_skip, c_out, c_in) of the EDM denoiser (Karras et al. 2022, Table 1)."""
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data / (sigma**2 + sigma_data**2) ** 0.5
    return c_skip, c_out, input_scaling(sigma, sigma_data)


def _sigma_vector(sigma: float | Sequence[float] | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """σ as a float64 vector of length batch on x's device (float64 keeps c_noise exact)."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    return sigma


def append_dims(c: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-sample factor (a number or a (B,) tensor) as float32 on x's device, shaped (B, 1, …, 1)
    to broadcast against x (k-diffusion's `append_dims`)."""
    c = torch.as_tensor(c, device=x.device)
    return c.to(torch.float32).reshape(-1, *([1] * (x.ndim - 1)))


class Preconditioned(nn.Module):
    """Wraps a raw network F(c_in·x, c_noise, class_labels) into c_skip·x + c_out·F(...).

    The network runs in its own dtype; the input scaling, the skip path and the final
    combination are computed in float32 (σ-dependent factors in float64).
    """

    def __init__(self, network: nn.Module, sigma_data: float = SIGMA_DATA, sigma_min: float = SIGMA_MIN) -> None:
        super().__init__()
        self.network = network
        self.sigma_data = float(sigma_data)
        self.sigma_min = float(sigma_min)

    def scalings(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def noise_input(self, sigma: torch.Tensor) -> torch.Tensor:
        """The time input the network is given for σ (float64): c_noise(σ) = 250·ln σ."""
        return noise_conditioning(sigma)

    def forward(
        self,
        x: torch.Tensor,
        sigma: float | Sequence[float] | torch.Tensor,
        class_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        sigma = _sigma_vector(sigma, x)
        c_skip, c_out, c_in = self.scalings(sigma)
        x = x.float()
        dtype = next(self.network.parameters()).dtype
        model_in = (x * append_dims(c_in, x)).to(dtype)
        c_noise = self.noise_input(sigma).to(torch.float32)
        model_out = self.network(model_in, c_noise, class_labels).float()
        return append_dims(c_skip, x) * x + append_dims(c_out, x) * model_out


class ConsistencyFunction(Preconditioned):
    """f_θ(x, σ) = c_skip(σ)·x + c_out(σ)·F_θ(c_in(σ)·x, c_noise(σ)), with f(x, σ_min) = x."""

    def scalings(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return consistency_scalings(sigma, self.sigma_data, self.sigma_min)


class Denoiser(Preconditioned):
    """D_θ(x, σ) of EDM: the same network with unshifted scalings (diffusion teachers)."""

    def scalings(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return edm_scalings(sigma, self.sigma_data)


class TrigFlowFunction(Preconditioned):
    """sCM's f(x_t, t) = cos t·x_t − sin t·σ_d·F_θ(x_t/σ_d, t) (Lu & Song 2024, eq. 6, time input
    c_noise(t) = t) written in σ = σ_d·tan t, x_σ = x_t/cos t: c_skip = σ_d²/(σ² + σ_d²) = cos²t,
    c_out = −σ·σ_d/√(σ² + σ_d²) = −σ_d·sin t, c_in = 1/√(σ² + σ_d²) = cos t/σ_d, and the
    network is given t = arctan(σ/σ_d). (`trigflow.TrigFlow` is the same function in t.)"""

    def scalings(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c_skip, c_out, c_in = edm_scalings(sigma, self.sigma_data)
        return c_skip, -c_out, c_in

    def noise_input(self, sigma: torch.Tensor) -> torch.Tensor:
        return torch.atan(sigma / self.sigma_data)



