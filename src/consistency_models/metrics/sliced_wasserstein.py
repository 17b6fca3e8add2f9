"""Sliced Wasserstein distance between two point clouds (for the 2-D toy checks).

SW_p(X, Y) = (E_θ[W_p^p(θ·X, θ·Y)])^{1/p} over random unit directions θ; each 1-D W_p is the
distance between sorted projections (equal sample counts) — Bonneel et al. 2015.
"""

from __future__ import annotations

import torch


def sliced_wasserstein(
    x: torch.Tensor, y: torch.Tensor, num_projections: int = 256, p: int = 2, seed: int = 0
) -> float:
    """SW_p between equally sized point sets x, y of shape (N, D)."""
    if x.shape != y.shape:
        raise ValueError(f"x, y: need equal shapes, got {tuple(x.shape)} and {tuple(y.shape)}")
    generator = torch.Generator().manual_seed(seed)
    theta = torch.randn(x.shape[1], num_projections, generator=generator, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    px = torch.sort(x.double().cpu() @ theta, dim=0).values
    py = torch.sort(y.double().cpu() @ theta, dim=0).values
    return float((px - py).abs().pow(p).mean().pow(1 / p))
