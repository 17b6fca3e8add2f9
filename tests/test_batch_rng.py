"""BatchRNG: every process draws the global batch and keeps its rows."""

from __future__ import annotations

import pytest
import torch

from consistency_models.training.batch_rng import BatchRNG, local_rows

GLOBAL = 8
PROBS = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)


def draws(rng: BatchRNG) -> list[torch.Tensor]:
    """One step's draws in a fixed order, as a loss makes them."""
    return [rng.randn(), rng.randn(3, 2), rng.rand(5), rng.randint(7), rng.choice(PROBS), rng.randn(2)]


def direct_draws(seed: int) -> list[torch.Tensor]:
    """The same global draws made straight from torch."""
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn((GLOBAL,), generator=g),
        torch.randn((GLOBAL, 3, 2), generator=g),
        torch.rand((GLOBAL, 5), generator=g),
        torch.randint(0, 7, (GLOBAL,), generator=g),
        torch.multinomial(PROBS, GLOBAL, replacement=True, generator=g),
        torch.randn((GLOBAL, 2), generator=g),
    ]


@pytest.mark.parametrize("world_size", [1, 2, 4, 8])
def test_ranks_concatenate_to_the_single_process_draw(world_size):
    seed = 1234
    single = draws(BatchRNG(torch.Generator().manual_seed(seed), GLOBAL, slice(0, GLOBAL), "cpu"))
    reference = direct_draws(seed)
    for a, b in zip(single, reference):
        assert torch.equal(a, b)
    per_rank = [
        draws(BatchRNG(torch.Generator().manual_seed(seed), GLOBAL, local_rows(GLOBAL, rank, world_size), "cpu"))
        for rank in range(world_size)
    ]
    for index, whole in enumerate(single):
        parts = [rank_draws[index] for rank_draws in per_rank]
        assert all(p.shape[0] == GLOBAL // world_size for p in parts)
        assert torch.equal(torch.cat(parts), whole)


def test_draw_shapes_and_ranges():
    rng = BatchRNG(torch.Generator().manual_seed(0), GLOBAL, slice(2, 6), "cpu")
    assert rng.randn().shape == (4,)
    assert rng.randn(1, 2, 2).shape == (4, 1, 2, 2)
    u = rng.rand(100)
    assert u.shape == (4, 100) and bool((u >= 0).all()) and bool((u < 1).all())
    i = rng.randint(3)
    assert i.dtype == torch.int64 and bool((i >= 0).all()) and bool((i < 3).all())
    c = rng.choice(torch.tensor([0.0, 1.0, 0.0]))
    assert c.tolist() == [1, 1, 1, 1]


def test_local_rows():
    assert local_rows(8, 0, 1) == slice(0, 8)
    assert [local_rows(8, r, 4) for r in range(4)] == [slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 8)]
    with pytest.raises(ValueError, match="a batch of 10 \\(per micro-batch\\) does not split over 4 processes"):
        local_rows(10, 0, 4)
    with pytest.raises(ValueError, match="batch_size"):
        local_rows(3, 1, 2)
