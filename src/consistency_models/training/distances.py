"""Per-sample distances d(x, y) for consistency losses.

- l2: mean over elements of (x − y)², OpenAI's `mean_flat((x − y) ** 2)`.
- l1: mean over elements of |x − y|.
- pseudo-Huber (iCT, Song & Dhariwal 2023, eq. 8): √(‖x − y‖² + c²) − c on each sample's
  whole difference, c = 0.00054·√d with d the number of elements per sample.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

DISTANCES = ("l2", "l1", "pseudo_huber")  # and "lpips" in training, from user-given weights (lpips.py)


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.float().reshape(x.shape[0], -1)


def l2(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return _flat(x - y).pow(2).mean(dim=1)


def l1(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return _flat(x - y).abs().mean(dim=1)


def pseudo_huber_c(dim: int) -> float:
    """iCT's c = 0.00054·√d."""
    return 0.00054 * math.sqrt(dim)


def pseudo_huber(x: torch.Tensor, y: torch.Tensor, c: float | None = None) -> torch.Tensor:
    """√(‖x − y‖² + c²) − c per sample; c defaults to 0.00054·√d."""
    diff = _flat(x - y)
    c = pseudo_huber_c(diff.shape[1]) if c is None else c
    return torch.sqrt(diff.pow(2).sum(dim=1) + c**2) - c


def get_distance(name: str | Distance) -> Distance:
    """The distance called `name` (l2, l1, pseudo_huber); a callable (e.g. `LPIPS`) is used as it is."""
    if callable(name):
        return name
    table: dict[str, Distance] = {"l2": l2, "l1": l1, "pseudo_huber": pseudo_huber}
    if name not in table:
        raise ValueError(f"distance: {name!r} is not one of {', '.join(DISTANCES)}")
    return table[name]
