"""The loss interface every training method implements, and the pair loss the consistency methods share.

A loss is a callable loss(x, class_labels, step, rng) → one value per sample. It owns the
models it needs (the student — a `Preconditioned` wrapper around the network being trained,
possibly wrapped in DistributedDataParallel — the target θ⁻ and the teacher D);
`after_step(step)` runs after each optimizer step (the EMA target update of CD/CT). All
randomness comes from the `BatchRNG`, except dropout, which uses torch's global RNG; the
student and its stop-gradient target see the same dropout mask (`same_dropout`).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

from ...parametrization import Preconditioned, append_dims
from ..batch_rng import BatchRNG
from ..curricula import ascending_grid
from ..distances import Distance, get_distance


@contextmanager
def same_dropout(device: torch.device) -> Iterator[Callable[[], None]]:
    """Yields `rewind()`, which puts the RNG back where it was, so a second forward reuses the masks."""
    cuda = device.type == "cuda"
    state = torch.cuda.get_rng_state(device) if cuda else torch.get_rng_state()

    def rewind() -> None:
        if cuda:
            torch.cuda.set_rng_state(state, device)
        else:
            torch.set_rng_state(state)

    yield rewind


def unwrap(network: nn.Module) -> nn.Module:
    """The plain module inside torch.compile and DistributedDataParallel wrappers (the fast step
    compiles the DDP wrapper: compile(DDP(network)))."""
    while True:
        if isinstance(network, nn.parallel.DistributedDataParallel):
            network = network.module
        elif isinstance(getattr(network, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            network = network._orig_mod
        else:
            return network


class Loss:
    """Common interface of the training losses."""

    def __call__(self, x: torch.Tensor, class_labels: torch.Tensor | None, step: int, rng: BatchRNG) -> torch.Tensor:
        raise NotImplementedError

    def after_step(self, step: int) -> None:
        """Called after each optimizer step with the index of the step just taken."""

    def parameters(self) -> list[nn.Parameter]:
        """Parameters the loss itself trains beside the network (sCM's adaptive weight); none by default."""
        return []

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class PairLoss(Loss):
    """d(f_θ(x_hi, t_hi), f_θ⁻(x_lo, t_lo)) with the target evaluated without gradient."""

    def __init__(self, student: Preconditioned, target: Preconditioned, distance: Distance) -> None:
        self.student = student
        self.target = target
        self.distance = distance

    def pair(self, x, class_labels, t_hi, x_hi, t_lo, x_lo) -> tuple[torch.Tensor, torch.Tensor]:
        with same_dropout(x.device) as rewind:
            student = self.student(x_hi, t_hi, class_labels)
            rewind()
            with torch.no_grad():
                target = self.target(x_lo, t_lo, class_labels)
        return student, target

    def same_noise_pair(self, x, class_labels, grid: torch.Tensor, index: torch.Tensor, rng: BatchRNG):
        """(student at grid[index+1], target at grid[index], t_lo, t_hi), both noised with one z (CT, iCT)."""
        t_lo, t_hi = grid[index].to(x.device), grid[index + 1].to(x.device)
        z = rng.randn(*x.shape[1:])
        student, target = self.pair(x, class_labels, t_hi, x + append_dims(t_hi, x) * z,
                                    t_lo, x + append_dims(t_lo, x) * z)
        return student, target, t_lo, t_hi


class CurriculumPairLoss(PairLoss):
    """A pair loss on the ascending Karras grid whose size N(k) a curriculum sets from (s0, s1)
    over the run's `total_steps` (CT, iCT)."""

    def __init__(self, student: Preconditioned, target: Preconditioned, distance: str | Distance, total_steps: int,
                 s0: int, s1: int, sigma_range: tuple[float, float, float]) -> None:
        super().__init__(student, target, get_distance(distance))
        self.total_steps, self.s0, self.s1 = total_steps, s0, s1
        self.sigma_range = sigma_range   # (σ_min, σ_max, ρ)

    def grid(self, num_scales: int) -> torch.Tensor:
        return ascending_grid(num_scales, *self.sigma_range)
