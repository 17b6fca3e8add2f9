"""Training checkpoints: exact resume (model, AdamW, every RNG), keep-last-K, crash leftovers, no pickle code."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from consistency_models.errors import InvalidInputError
from consistency_models.training.checkpoint import (
    capture_rng_state,
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)


@pytest.fixture(autouse=True)
def keep_global_rng():
    """Leave torch/numpy/python global RNGs as the test found them."""
    torch_state, py_state, np_state = torch.get_rng_state(), random.getstate(), np.random.get_state()
    yield
    torch.set_rng_state(torch_state)
    random.setstate(py_state)
    np.random.set_state(np_state)


def draw(gen: torch.Generator) -> tuple:
    """The next numbers of every RNG a training run uses."""
    return (
        torch.rand(5).tolist(),
        torch.randn(3, generator=gen).tolist(),
        np.random.rand(5).tolist(),
        np.random.normal(size=3).tolist(),
        [random.random() for _ in range(3)] + [random.gauss(0, 1)],
    )


def tiny_training_state(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.SiLU(), nn.Linear(8, 2))
    optim = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    return model, optim


def train_step(model: nn.Module, optim: torch.optim.Optimizer, seed: int) -> None:
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(seed))
    optim.zero_grad()
    model(x).square().mean().backward()
    optim.step()


def test_round_trip_resumes_exactly(tmp_path):
    model, optim = tiny_training_state()
    for i in range(3):
        train_step(model, optim, i)
    gen = torch.Generator().manual_seed(123)
    torch.randn(7, generator=gen)
    random.gauss(0, 1)  # python caches the second Gaussian (gauss_next)
    np.random.normal()  # numpy caches one as well (has_gauss)

    path = save_checkpoint(
        tmp_path,
        step=3,
        state={"step": 3, "model": model.state_dict(), "optim": optim.state_dict(), "rng": capture_rng_state({"data": gen})},
    )
    assert path == tmp_path / "checkpoints" / "ckpt-00000003.pt" == checkpoint_path(tmp_path, 3)
    expected_draws = draw(gen)
    train_step(model, optim, 3)
    expected_params = [p.detach().clone() for p in model.parameters()]

    state = load_checkpoint(latest_checkpoint(tmp_path))
    assert state["step"] == 3
    resumed_model, resumed_optim = tiny_training_state(seed=99)
    resumed_model.load_state_dict(state["model"])
    resumed_optim.load_state_dict(state["optim"])
    resumed_gen = torch.Generator()
    torch.rand(11), np.random.rand(11), random.random()  # move every RNG away from the saved point
    restore_rng_state(state["rng"], {"data": resumed_gen})

    assert draw(resumed_gen) == expected_draws
    train_step(resumed_model, resumed_optim, 3)
    for got, want in zip(resumed_model.parameters(), expected_params):
        assert torch.equal(got, want)


def test_keeps_the_newest_k(tmp_path):
    for step in range(1, 6):
        save_checkpoint(tmp_path, step, {"step": step}, keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["ckpt-00000004.pt", "ckpt-00000005.pt"]


def test_never_deletes_the_checkpoint_just_written(tmp_path):
    save_checkpoint(tmp_path, 10, {"step": 10}, keep=1)
    save_checkpoint(tmp_path, 20, {"step": 20}, keep=1)
    with pytest.warns(RuntimeWarning, match="newer checkpoints"):
        written = save_checkpoint(tmp_path, 5, {"step": 5}, keep=1)
    assert written.is_file()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["ckpt-00000005.pt", "ckpt-00000020.pt"]


def test_truncated_newest_is_skipped(tmp_path):
    save_checkpoint(tmp_path, 100, {"w": torch.arange(1000.0)})
    newest = save_checkpoint(tmp_path, 200, {"w": torch.arange(1000.0) * 2})
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])  # a crash mid-copy, or a full disk

    with pytest.warns(RuntimeWarning, match="skipping checkpoint of step 200.*truncated"):
        found = latest_checkpoint(tmp_path)
    assert found == checkpoint_path(tmp_path, 100)
    assert torch.equal(load_checkpoint(found)["w"], torch.arange(1000.0))


def test_leftover_temp_file_is_ignored_then_cleaned(tmp_path, recwarn):
    save_checkpoint(tmp_path, 1, {"step": 1})
    leftover = tmp_path / "checkpoints" / ".ckpt-00000002.pt.x1y2z3.tmp"
    leftover.write_bytes(b"half a checkpoint")  # a run killed inside torch.save

    assert latest_checkpoint(tmp_path) == checkpoint_path(tmp_path, 1)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
    save_checkpoint(tmp_path, 2, {"step": 2})
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["ckpt-00000001.pt", "ckpt-00000002.pt"]


def test_no_checkpoint_gives_none(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    assert latest_checkpoint(tmp_path / "missing") is None


ran = []


def _payload() -> str:
    ran.append("pickled code ran")
    return "owned"


class Payload:
    """An object whose unpickling calls a function: what weights_only exists to stop."""

    def __reduce__(self):
        return (_payload, ())


def test_pickled_code_is_never_run(tmp_path):
    with pytest.raises(InvalidInputError, match=r"state\['extra'\]\[0\]: a .*Payload is not allowed"):
        save_checkpoint(tmp_path, 1, {"extra": [Payload()]})
    with pytest.raises(InvalidInputError, match=r"state\['loss'\]: a numpy.float64 is not allowed"):
        save_checkpoint(tmp_path, 1, {"loss": np.float64(0.5)})  # a float subclass that weights_only refuses
    assert latest_checkpoint(tmp_path) is None  # nothing was written

    save_checkpoint(tmp_path, 1, {"step": 1})
    crafted = checkpoint_path(tmp_path, 2)
    torch.save({"step": 2, "extra": Payload()}, crafted)  # written behind save_checkpoint's back
    with pytest.raises(InvalidInputError, match=r"needs pickle code execution to load, which is refused \(it references test_checkpoint._payload\)"):
        load_checkpoint(crafted)
    with pytest.warns(RuntimeWarning, match="skipping checkpoint of step 2"):
        assert latest_checkpoint(tmp_path) == checkpoint_path(tmp_path, 1)
    assert ran == []
    torch.load(crafted, weights_only=False)  # what a plain pickle load would have done
    assert ran == ["pickled code ran"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"step": -1}, "step: -1 is not allowed"),
        ({"step": 1.0}, "step: 1.0 is not allowed"),
        ({"keep": 0}, "keep: 0 is not allowed"),
        ({"state": [1, 2]}, "state: a list was given"),
        ({"state": {("a", 1): 1}}, r"state: key \('a', 1\) of type tuple"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    args = {"step": 1, "state": {"step": 1}, "keep": 3} | kwargs
    with pytest.raises(InvalidInputError, match=message):
        save_checkpoint(tmp_path, **args)


def test_missing_or_unknown_generator(tmp_path):
    with pytest.raises(InvalidInputError, match="checkpoint: no such file"):
        load_checkpoint(tmp_path / "nope.pt")
    state = capture_rng_state({"data": torch.Generator()})
    with pytest.raises(InvalidInputError, match=r"generators: 'noise' has no saved state; saved: \['data'\]"):
        restore_rng_state(state, {"noise": torch.Generator()})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks resuming a GPU run on a machine without CUDA")
def test_cuda_states_without_cuda_warn():
    state = capture_rng_state()
    state["cuda"] = [torch.get_rng_state()]  # as if saved on a one-GPU machine
    with pytest.warns(RuntimeWarning, match="CUDA RNG states of 1 devices, this run has 0; restoring the first 0"):
        restore_rng_state(state)
