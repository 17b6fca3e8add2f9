"""Kernel Inception Distance (Bińkowski et al. 2018, "Demystifying MMD GANs", Section 4).

KID is the squared maximum mean discrepancy between the feature distributions under the cubic
polynomial kernel k(x, y) = (xᵀy/d + 1)³, d the feature dimension, estimated without bias:

    MMD²_u = Σ_{i≠j} k(xᵢ, xⱼ) / (m(m−1)) + Σ_{i≠j} k(yᵢ, yⱼ) / (n(n−1)) − 2 Σ_{i,j} k(xᵢ, yⱼ) / (mn)

(Gretton et al. 2012, Lemma 6). As in the paper's code and torch-fidelity, it is averaged over
`num_subsets` random subsets of `subset_size` samples of each set (drawn without replacement
within a subset); the spread is the standard deviation over subsets (numpy's `std`, ddof = 0).
Being unbiased, the estimate can be slightly negative when the distributions are equal.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from ..errors import InvalidInputError

ArrayLike = torch.Tensor | np.ndarray


class KIDResult(NamedTuple):
    mean: float     # the KID estimate: mean of MMD²_u over the subsets
    std: float      # its standard deviation over the subsets


def _float64_pair(real: ArrayLike, fake: ArrayLike, device: str | torch.device | None) -> tuple[torch.Tensor, ...]:
    x, y = (torch.as_tensor(a).detach().to(device=device, dtype=torch.float64) for a in (real, fake))
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise InvalidInputError(
            f"features: shapes {tuple(x.shape)} and {tuple(y.shape)} are not two (N, D) sets with the same D"
        )
    return x, y


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """k(xᵢ, yⱼ) = (xᵢᵀyⱼ/d + 1)³ for all pairs: (m, d), (n, d) → (m, n)."""
    return (x @ y.T / x.shape[1] + 1) ** 3


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    """MMD²_u between samples x (m, d) and y (n, d) under `polynomial_kernel` (equation in the module doc)."""
    m, n = x.shape[0], y.shape[0]
    k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    within_x = (k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1))
    within_y = (k_yy.sum() - k_yy.diagonal().sum()) / (n * (n - 1))
    return float(within_x + within_y - 2 * k_xy.sum() / (m * n))


MAX_SUBSETS = 100_000  # 1,000 times the usual 100; a larger count only makes the run never end


def kernel_inception_distance(
    real: ArrayLike,                            # (N, D) features of the reference set
    fake: ArrayLike,                            # (M, D) features of the generated set
    num_subsets: int = 100,
    subset_size: int = 1000,                    # capped at each set's size
    seed: int = 0,
    device: str | torch.device | None = None,   # where the float64 kernel sums run
) -> KIDResult:
    """KID: the unbiased MMD² with the cubic polynomial kernel, mean and std over random subsets."""
    x, y = _float64_pair(real, fake, device)
    if not 1 <= num_subsets <= MAX_SUBSETS or subset_size < 2:
        raise InvalidInputError(
            f"num_subsets, subset_size: {num_subsets!r}, {subset_size!r}; need 1 to {MAX_SUBSETS} subsets "
            "of at least 2 samples"
        )
    if min(len(x), len(y)) < 2:
        raise InvalidInputError(f"features: {len(x)} real and {len(y)} fake samples; KID needs at least 2 of each")
    m, n = min(subset_size, len(x)), min(subset_size, len(y))
    gen = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(num_subsets):
        xi = torch.randperm(len(x), generator=gen)[:m].to(x.device)
        yi = torch.randperm(len(y), generator=gen)[:n].to(y.device)
        values.append(mmd2_unbiased(x[xi], y[yi]))
    return KIDResult(float(np.mean(values)), float(np.std(values)))
