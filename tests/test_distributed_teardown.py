"""Leaving the process group: what still holds it (a finished run's DDP wrapper, alive through
reference cycles) is freed before `destroy_process_group`, while the interpreter is fully alive.
Freed at interpreter exit instead, gloo's worker threads abort a rank now and then
("terminate called without an active exception", SIGABRT). Real gloo groups, in-process."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from consistency_models.distributed import teardown_distributed


@pytest.fixture
def one_rank_group(tmp_path, monkeypatch):
    """A one-process gloo group; the automatic collector off (only explicit collections free
    cycles); `alive_at_destroy` records, at each destroy_process_group, which watched objects live."""
    watched: list[weakref.ref] = []
    alive_at_destroy: list[list[bool]] = []
    destroy = dist.destroy_process_group

    def recording_destroy(*args, **kwargs):
        alive_at_destroy.append([ref() is not None for ref in watched])
        return destroy(*args, **kwargs)

    monkeypatch.setattr(dist, "destroy_process_group", recording_destroy)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    gc.disable()
    try:
        yield watched, alive_at_destroy
    finally:
        gc.enable()
        if dist.is_initialized():
            destroy()


def test_a_ddp_model_in_a_reference_cycle_is_freed_before_the_group_is_destroyed(one_rank_group):
    watched, alive_at_destroy = one_rank_group
    model = DistributedDataParallel(nn.Linear(2, 2))
    model(torch.ones(1, 2)).sum().backward()
    holder = {"model": model}
    holder["self"] = holder          # a cycle: only the collector frees it
    watched.append(weakref.ref(model))
    del model, holder
    assert watched[0]() is not None  # still alive: the test would pass without teardown's collection otherwise
    teardown_distributed()
    assert alive_at_destroy == [[False]] and not dist.is_initialized()


def test_cm_train_lets_go_of_its_trainer_before_leaving_the_group(one_rank_group, tmp_path, monkeypatch):
    from consistency_models.cli import main
    from consistency_models.training import loop

    watched, alive_at_destroy = one_rank_group
    init = loop.Trainer.__init__

    def watching_init(self, *args, **kwargs):
        watched.append(weakref.ref(self))
        init(self, *args, **kwargs)

    monkeypatch.setattr(loop.Trainer, "__init__", watching_init)
    code = main(["train", "--method", "ict", "--data", "toy:mog8", "--out", str(tmp_path / "run"), "--steps", "2",
                 "--batch-size", "8", "--save-every", "2", "--sample-every", "2", "--no-progress"])
    assert code == 0 and len(watched) == 1
    assert alive_at_destroy == [[False]]
