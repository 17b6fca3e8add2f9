"""Improved precision and recall (Kynkäänniemi et al. 2019, "Improved Precision and Recall Metric
for Assessing Generative Models", Section 2).

Each set's manifold is approximated by the union of balls around its samples, with radius the
distance to the sample's k-th nearest neighbour in the same set (k = 3, the sample itself not
counted). A sample φ is inside a manifold if ‖φ − φ′‖₂ ≤ NND_k(φ′) for at least one φ′ of it:

    precision = |{generated samples inside the real manifold}| / |generated|
    recall    = |{real samples inside the generated manifold}| / |real|

All distances are computed block by block (`batch_size` rows × `batch_size` columns, keeping a
running k smallest per row), so no N × M matrix is ever held: 50k × 50k works on one GPU.
Distances are in float32 by default, as in the reference code and torch-fidelity; pass
`dtype=torch.float64` for exact ties on small sets.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from ..errors import InvalidInputError

ArrayLike = torch.Tensor | np.ndarray


class PrecisionRecall(NamedTuple):
    precision: float    # fraction of generated samples inside the real manifold
    recall: float       # fraction of real samples inside the generated manifold


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise InvalidInputError(f"batch_size: {batch_size!r} is not a positive number of rows per block")


def _matrix(name: str, a: ArrayLike, dtype: torch.dtype, device: str | torch.device | None) -> torch.Tensor:
    t = torch.as_tensor(a).detach().to(device=device, dtype=dtype)
    if t.ndim != 2 or len(t) == 0:
        raise InvalidInputError(f"{name}: shape {tuple(t.shape)} is not (N, D) with N ≥ 1")
    return t


def knn_radii(
    features: ArrayLike,                        # (N, D)
    k: int = 3,
    batch_size: int = 5000,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """(N,) distance of each sample to its k-th nearest neighbour in the set, itself excluded."""
    _check_batch_size(batch_size)
    x = _matrix("features", features, dtype, device)
    if not 1 <= k < len(x):
        raise InvalidInputError(f"k: {k!r} neighbours in a set of {len(x)} samples; need 1 ≤ k < N")
    radii = []
    for r0 in range(0, len(x), batch_size):
        rows = x[r0:r0 + batch_size]
        nearest = torch.full((len(rows), k), float("inf"), dtype=dtype, device=x.device)
        for c0 in range(0, len(x), batch_size):
            d = torch.cdist(rows, x[c0:c0 + batch_size])
            own = torch.arange(len(rows), device=x.device) + r0 - c0          # column of each row's own sample
            inside = (own >= 0) & (own < d.shape[1])
            d[inside.nonzero().squeeze(1), own[inside]] = float("inf")
            nearest = torch.cat([nearest, d], dim=1).topk(k, dim=1, largest=False).values
        radii.append(nearest.max(dim=1).values)
    return torch.cat(radii)


def manifold_coverage(
    queries: ArrayLike,                         # (M, D) samples to test
    points: ArrayLike,                          # (N, D) the samples that span the manifold
    radii: torch.Tensor,                        # (N,) their ball radii (`knn_radii`)
    batch_size: int = 5000,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
) -> float:
    """Fraction of `queries` within distance radii[j] of some points[j] (the ≤ of the paper)."""
    _check_batch_size(batch_size)
    q, p = _matrix("queries", queries, dtype, device), _matrix("points", points, dtype, device)
    radii = radii.to(device=p.device, dtype=dtype)
    if q.shape[1] != p.shape[1] or radii.shape != (len(p),):
        raise InvalidInputError(
            f"queries, points, radii: shapes {tuple(q.shape)}, {tuple(p.shape)}, {tuple(radii.shape)} do not fit; "
            "need (M, D), (N, D) and (N,)"
        )
    inside = 0
    for r0 in range(0, len(q), batch_size):
        rows = q[r0:r0 + batch_size]
        hit = torch.zeros(len(rows), dtype=torch.bool, device=q.device)
        for c0 in range(0, len(p), batch_size):
            hit |= (torch.cdist(rows, p[c0:c0 + batch_size]) <= radii[c0:c0 + batch_size]).any(dim=1)
        inside += int(hit.sum())
    return inside / len(q)


def precision_recall(
    real: ArrayLike,                            # (N, D) features of the reference set
    fake: ArrayLike,                            # (M, D) features of the generated set
    k: int = 3,
    batch_size: int = 5000,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
) -> PrecisionRecall:
    """Improved precision and recall with k-th nearest neighbour balls (k = 3 as in the paper)."""
    x, y = _matrix("real", real, dtype, device), _matrix("fake", fake, dtype, device)
    if x.shape[1] != y.shape[1]:
        raise InvalidInputError(f"real, fake: {x.shape[1]} and {y.shape[1]} features per sample; need the same")
    options = {"batch_size": batch_size, "dtype": dtype, "device": device}
    precision = manifold_coverage(y, x, knn_radii(x, k, **options), **options)
    recall = manifold_coverage(x, y, knn_radii(y, k, **options), **options)
    return PrecisionRecall(precision, recall)
