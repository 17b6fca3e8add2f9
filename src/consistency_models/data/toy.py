"""2-D toy distributions as fixed point sets (σ_data = 0.5), and the exact denoiser of `toy:mog8`.

Each toy is 20,000 points drawn once with numpy `default_rng(seed)` (the same points every
time), float32, unlabelled:

- `mog8`: 8 equally weighted isotropic Gaussians, std 0.05, means evenly on a circle of radius
  r = √(2·(0.25 − 0.05²)), so the per-coordinate variance r²/2 + 0.05² is exactly 0.25;
- `moons`: two interleaving half circles (as scikit-learn's `make_moons`, noise 0.05);
- `checkerboard`: uniform on the 8 dark squares of a 4×4 board (as in FFJORD).
`moons` and `checkerboard` are centered and scaled per coordinate to std 0.5.

`mog8_denoiser` is the exact EDM denoiser D(x, σ) = E[x0 | x0 + σ·n = x] of the `mog8` mixture.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InvalidInputError
from .dataset import PointDataset

NUM_POINTS = 20_000
SEED = 0
SIGMA_DATA = 0.5
MOG8_STD = 0.05


@dataclass(frozen=True)
class GaussianMixture:
    """Σ_k w_k N(μ_k, std²·I): means (K, D), weights (K,) summing to 1, one shared std."""

    means: torch.Tensor
    std: float
    weights: torch.Tensor


def mog8_mixture() -> GaussianMixture:
    """The exact parameters of `toy:mog8` (float64)."""
    radius = math.sqrt(2.0 * (SIGMA_DATA**2 - MOG8_STD**2))
    angles = 2.0 * math.pi * torch.arange(8, dtype=torch.float64) / 8
    means = radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    return GaussianMixture(means=means, std=MOG8_STD, weights=torch.full((8,), 1 / 8, dtype=torch.float64))


def gmm_denoiser(x: torch.Tensor, sigma: torch.Tensor, mixture: GaussianMixture) -> torch.Tensor:
    """Exact E[x0 | x_σ = x] for x0 ~ `mixture`, x_σ = x0 + σ·n.

    Component posteriors r_k ∝ w_k·N(x; μ_k, (s² + σ²)I) (normalised with logsumexp); within a
    component E[x0 | x, k] = μ_k + s²/(s² + σ²)·(x − μ_k); the result is their r-weighted sum.
    x: (B, D); sigma: (B,) or a scalar. Computed in float64 and returned in x's dtype.
    """
    x64 = x.double()
    means = mixture.means.to(x.device, torch.float64)
    log_w = mixture.weights.to(x.device, torch.float64).log()
    var = mixture.std**2 + torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1, 1) ** 2
    dist2 = ((x64[:, None, :] - means[None]) ** 2).sum(-1)                  # (B, K)
    logits = log_w[None] - dist2 / (2 * var)
    resp = (logits - torch.logsumexp(logits, dim=1, keepdim=True)).exp()     # (B, K)
    mean = resp @ means                                                      # Σ r_k μ_k
    return (mean + mixture.std**2 / var * (x64 - mean)).to(x.dtype)


def mog8_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Exact E[x0 | x_σ = x] of `toy:mog8`; x: (B, 2), sigma: (B,)."""
    return gmm_denoiser(x, sigma, mog8_mixture())


def _standardize(points: np.ndarray) -> np.ndarray:
    """Center each coordinate and scale it to std σ_data = 0.5."""
    return (points - points.mean(0)) / points.std(0) * SIGMA_DATA


def sample_mog8(rng: np.random.Generator, n: int) -> np.ndarray:
    mix = mog8_mixture()
    component = rng.integers(0, 8, size=n)
    return mix.means.numpy()[component] + mix.std * rng.standard_normal((n, 2))


def sample_moons(rng: np.random.Generator, n: int) -> np.ndarray:
    t = rng.uniform(0.0, math.pi, size=n)
    upper = rng.integers(0, 2, size=n).astype(bool)
    x = np.where(upper, np.cos(t), 1.0 - np.cos(t))
    y = np.where(upper, np.sin(t), 0.5 - np.sin(t))
    return _standardize(np.stack([x, y], axis=1) + 0.05 * rng.standard_normal((n, 2)))


def sample_checkerboard(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.uniform(-2.0, 2.0, size=n)
    y = rng.uniform(0.0, 1.0, size=n) - 2.0 * rng.integers(0, 2, size=n) + np.floor(x) % 2
    return _standardize(np.stack([x, y], axis=1))


TOYS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "mog8": sample_mog8,
    "moons": sample_moons,
    "checkerboard": sample_checkerboard,
}


def toy_points(name: str, n: int = NUM_POINTS, seed: int = SEED) -> torch.Tensor:
    """The fixed point set `toy:name`, (n, 2) float32."""
    if name not in TOYS:
        raise InvalidInputError(f"toy: {name!r} is not a toy distribution; use one of {', '.join(TOYS)}")
    return torch.from_numpy(TOYS[name](np.random.default_rng(seed), n).astype(np.float32))


def load_toy(name: str) -> PointDataset:
    """`toy:name` as an unlabelled `PointDataset` of 20,000 points."""
    return PointDataset(toy_points(name), source=f"toy:{name}")
