"""Random draws for a slice of a global batch, identical whatever the number of processes.

Every process draws the numbers of the whole global batch from one generator seeded alike
on all ranks, and keeps its own rows. Sample i of a step therefore gets the same noise, σ
and data order with 1 or 8 processes, so a torchrun run reproduces a single-process run
with the same global batch (up to the order of floating-point reductions).
"""

from __future__ import annotations

import torch

from ..errors import InvalidInputError

class BatchRNG:
    """Draws (global_batch, ...) numbers from `generator` and returns rows [start, stop)."""

    def __init__(self, generator: torch.Generator, global_batch: int, rows: slice, device: torch.device | str) -> None:
        self.generator = generator
        self.global_batch = global_batch
        self.rows = rows
        self.device = torch.device(device)

    def _slice(self, full: torch.Tensor) -> torch.Tensor:
        return full[self.rows].to(self.device)

    def randn(self, *shape: int) -> torch.Tensor:
        """Standard normal of shape (local_batch, *shape)."""
        return self._slice(torch.randn((self.global_batch, *shape), generator=self.generator))

    def rand(self, *shape: int) -> torch.Tensor:
        """Uniform [0, 1) of shape (local_batch, *shape)."""
        return self._slice(torch.rand((self.global_batch, *shape), generator=self.generator))

    def randint(self, high: int) -> torch.Tensor:
        """Uniform integers in [0, high), one per sample."""
        return self._slice(torch.randint(0, high, (self.global_batch,), generator=self.generator))

    def choice(self, probabilities: torch.Tensor) -> torch.Tensor:
        """One index per sample drawn from a categorical distribution."""
        full = torch.multinomial(probabilities.cpu().to(torch.float64), self.global_batch, replacement=True,
                                 generator=self.generator)
        return self._slice(full)


def local_rows(global_batch: int, rank: int, world_size: int) -> slice:
    """The rows of the global batch that process `rank` of `world_size` works on."""
    if global_batch % world_size:
        raise InvalidInputError(f"batch_size: a batch of {global_batch} (per micro-batch) does not split over "
                                f"{world_size} processes; use a multiple of {world_size}")
    per = global_batch // world_size
    return slice(rank * per, (rank + 1) * per)

