"""Fréchet distance between Gaussians fitted to two feature sets (the distance behind FID).

d² = ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2})  (Dowson & Landau 1982;
Heusel et al. 2017). tr((Σ₁Σ₂)^{1/2}) is computed as the sum of the square roots of the
eigenvalues of the symmetric matrix Σ₁^{1/2} Σ₂ Σ₁^{1/2}, with symmetric eigendecompositions in
float64 (no scipy); rounding can leave eigenvalues (and the distance of near-equal sets) slightly
below zero, which are clamped to 0.
Covariances are unbiased (divided by N − 1), as numpy.cov and the FID reference code.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InvalidInputError

ArrayLike = torch.Tensor | np.ndarray


def _float64(a: ArrayLike) -> torch.Tensor:
    return torch.as_tensor(a).detach().to(device="cpu", dtype=torch.float64)


def _features(features: ArrayLike) -> torch.Tensor:
    f = _float64(features)
    if f.ndim != 2:
        raise InvalidInputError(f"features: shape {tuple(f.shape)} is not (N, D); give one feature vector per row")
    return f


class RunningStatistics:
    """Mean and covariance of features that arrive in batches; sums kept in float64."""

    def __init__(self) -> None:
        self.count = 0
        self.total: torch.Tensor | None = None        # Σ x, (D,)
        self.outer: torch.Tensor | None = None        # Σ x xᵀ, (D, D)

    def update(self, batch: ArrayLike) -> None:
        """Add a (B, D) batch of feature vectors."""
        f = _features(batch)
        if self.total is None:
            self.total = torch.zeros(f.shape[1], dtype=torch.float64)
            self.outer = torch.zeros(f.shape[1], f.shape[1], dtype=torch.float64)
        elif f.shape[1] != self.total.shape[0]:
            raise InvalidInputError(f"batch: {f.shape[1]} features per row, but earlier batches had {self.total.shape[0]}")
        self.count += f.shape[0]
        self.total += f.sum(dim=0)
        self.outer += f.T @ f

    def finalize(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ (D,), Σ (D, D)) in float64, Σ = (Σ x xᵀ − N μ μᵀ)/(N − 1)."""
        if self.count < 2:
            raise InvalidInputError(f"features: need at least 2 feature vectors for a covariance, got {self.count}")
        mu = self.total / self.count
        sigma = (self.outer - self.count * torch.outer(mu, mu)) / (self.count - 1)
        return mu, (sigma + sigma.T) / 2


def gaussian_statistics(features: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    """(μ (D,), Σ (D, D)) of (N, D) features, in float64 (unbiased covariance)."""
    f = _features(features)
    if f.shape[0] < 2:
        raise InvalidInputError(f"features: need at least 2 feature vectors for a covariance, got {f.shape[0]}")
    mu = f.mean(dim=0)
    centred = f - mu
    return mu, centred.T @ centred / (f.shape[0] - 1)


def _sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:
    """The symmetric square root of a symmetric positive semi-definite matrix (eigenvalues clamped ≥ 0)."""
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2}), in float64."""
    mu1, mu2, sigma1, sigma2 = (_float64(a) for a in (mu1, mu2, sigma1, sigma2))
    d = mu1.shape[0] if mu1.ndim == 1 else -1
    for name, a, shape in (("mu2", mu2, (d,)), ("sigma1", sigma1, (d, d)), ("sigma2", sigma2, (d, d))):
        if d < 0 or tuple(a.shape) != shape:
            raise InvalidInputError(
                f"{name}: shape {tuple(a.shape)} does not fit mu1 of shape {tuple(mu1.shape)}; "
                "give means (D,) and covariances (D, D)"
            )
    root1 = _sqrt_psd(sigma1)
    middle = root1 @ sigma2 @ root1
    eigenvalues = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0)
    trace_sqrt = eigenvalues.sqrt().sum()
    diff = mu1 - mu2
    value = float(diff @ diff + torch.trace(sigma1) + torch.trace(sigma2) - 2 * trace_sqrt)
    return max(value, 0.0)  # a squared distance; rounding can leave it a hair below 0
