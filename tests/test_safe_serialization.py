"""`save_pretrained(safe_serialization=False)` writes what diffusers writes: unet/diffusion_pytorch_model.bin,
a plain tensor state dict saved with torch.save (read back with `torch.load(weights_only=True)`), and a save
never leaves the other format's (or sharded) weights of the same variant beside the new ones."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from diffusers import ConsistencyModelPipeline as DiffusersPipeline

from consistency_models import ConsistencyModelPipeline, InvalidInputError

LABELS = [3, 871]
SAFETENSORS = "diffusion_pytorch_model.safetensors"
BIN = "diffusion_pytorch_model.bin"


def images(pipeline, **steps) -> np.ndarray:
    """Two images of fixed labels from a seeded generator (diffusers would draw random labels from the global RNG)."""
    pipeline.set_progress_bar_config(disable=True)
    return pipeline(batch_size=2, class_labels=LABELS, generator=torch.Generator().manual_seed(0),
                    output_type="np", **steps).images


def weight_files(folder) -> list[str]:
    return sorted(name for name in os.listdir(folder / "unet") if name.startswith("diffusion_pytorch_model"))


def test_bin_holds_the_state_dict_and_reloads_in_both_libraries(tmp_path, pipe):
    folder = tmp_path / "pipe"
    pipe.save_pretrained(folder, safe_serialization=False)
    assert sorted(os.listdir(folder / "unet")) == ["config.json", BIN]
    assert not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]
    state = torch.load(folder / "unet" / BIN, map_location="cpu", weights_only=True)
    expected = pipe.unet.state_dict()
    assert type(state) is dict and list(state) == list(expected)
    for key, value in expected.items():
        assert torch.is_tensor(state[key]) and torch.equal(state[key], value), key

    steps = dict(timesteps=[22, 0])
    before = images(pipe, **steps)
    assert before.std() > 0.02
    ours = ConsistencyModelPipeline.from_pretrained(folder)
    np.testing.assert_allclose(images(ours, **steps), before, rtol=0, atol=1e-5)
    theirs = DiffusersPipeline.from_pretrained(folder)
    np.testing.assert_allclose(images(theirs, **steps), before, rtol=0, atol=1e-5)
    np.testing.assert_allclose(images(theirs), images(pipe), rtol=0, atol=1e-5)  # one step


@pytest.mark.parametrize("first, second", [(False, True), (True, False)], ids=["bin_then_safetensors",
                                                                              "safetensors_then_bin"])
def test_saving_again_leaves_only_the_new_format(tmp_path, pipe, first, second):
    folder = tmp_path / "pipe"
    pipe.save_pretrained(folder, safe_serialization=first)
    assert weight_files(folder) == [SAFETENSORS if first else BIN]
    pipe.save_pretrained(folder, safe_serialization=second)
    assert weight_files(folder) == [SAFETENSORS if second else BIN]
    loaded = ConsistencyModelPipeline.from_pretrained(folder)
    assert all(torch.equal(a, b) for a, b in zip(loaded.unet.state_dict().values(), pipe.unet.state_dict().values()))


def test_stale_shards_go_and_other_variants_stay(tmp_path, pipe):
    """As diffusers, a save removes shards of its variant left by a sharded save (and their index,
    which diffusers would otherwise read first); the weights of other variants are kept."""
    folder = tmp_path / "pipe"
    pipe.save_pretrained(folder)
    unet = folder / "unet"
    stale = ["diffusion_pytorch_model.fp16-00001-of-00002.safetensors", "diffusion_pytorch_model.fp16-00002-of-00002.bin",
             "diffusion_pytorch_model.safetensors.index.fp16.json", "diffusion_pytorch_model.bin.fp16.index.json",
             "diffusion_pytorch_model.fp16.safetensors"]
    kept = ["diffusion_pytorch_model.ema.bin", "diffusion_pytorch_model-00001-of-00002.bin", "notes.txt"]
    for name in stale + kept:
        (unet / name).write_bytes(b"old")
    pipe.save_pretrained(folder, safe_serialization=False, variant="fp16")
    assert sorted(os.listdir(unet)) == sorted(["config.json", SAFETENSORS, "diffusion_pytorch_model.fp16.bin", *kept])
    loaded = ConsistencyModelPipeline.from_pretrained(folder, variant="fp16")
    assert all(torch.equal(a, b) for a, b in zip(loaded.unet.state_dict().values(), pipe.unet.state_dict().values()))


@pytest.mark.parametrize("value", ["False", 0, 1, None, np.bool_(False)], ids=repr)
def test_a_non_bool_is_one_error_line(tmp_path, pipe, value):
    with pytest.raises(InvalidInputError) as info:
        pipe.save_pretrained(tmp_path / "pipe", safe_serialization=value)
    message = str(info.value)
    assert message == (f"safe_serialization: {value!r} is not allowed; use True (diffusion_pytorch_model.safetensors) "
                       f"or False (diffusion_pytorch_model.bin)")
    assert "\n" not in message
    assert not (tmp_path / "pipe").exists()


def test_loaded_parameters_are_the_files_numbers_each_in_memory_of_its_own(tmp_path, pipe, monkeypatch):
    """from_pretrained builds the network without drawing random initial weights (the file's
    overwrite them all) and copies the file's tensors in: a torch.save file may name one tensor
    twice or store a view into a larger one, and training one parameter never moves another."""
    folder = tmp_path / "pipe"
    pipe.save_pretrained(folder, safe_serialization=False)
    state = torch.load(folder / "unet" / BIN, weights_only=True)
    first, second = "down_blocks.0.resnets.0.norm1.weight", "down_blocks.0.resnets.0.norm2.weight"
    assert state[first].shape == state[second].shape
    state[second] = state[first]                                   # one tensor under two names
    bias = "conv_in.bias"
    big = torch.cat([state[bias], torch.full((5,), 7.0)])
    state[bias] = big[: state[bias].numel()]                       # a view into a larger tensor
    torch.save(state, folder / "unet" / BIN)
    drawn = []

    def normal(tensor, *args, **kwargs):   # the class embedding's initialization (2.5 s for ImageNet-64's)
        drawn.append(tensor.device.type)
        return tensor

    monkeypatch.setattr(torch.nn.init, "normal_", normal)
    loaded = ConsistencyModelPipeline.from_pretrained(folder).unet
    assert drawn == [] and torch.nn.init.normal_ is normal          # none drawn, and put back after building
    params = dict(loaded.named_parameters())
    assert torch.equal(params[first], params[second]) and torch.equal(params[bias], big[:-5])
    with torch.no_grad():
        params[first].add_(1.0)
    assert not torch.equal(params[first], params[second])
    storages = [p.untyped_storage().data_ptr() for p in params.values()]
    assert len(set(storages)) == len(storages)
    assert params[bias].untyped_storage().nbytes() == params[bias].numel() * 4
    assert all(p.requires_grad and p.dtype == torch.float32 and p.device.type == "cpu" for p in params.values())
    (folder / "unet" / "config.json").write_text('{"sample_size": 32}')   # refused while building: put back too
    with pytest.raises(InvalidInputError, match="block_out_channels=None is not supported"):
        ConsistencyModelPipeline.from_pretrained(folder)
    assert torch.nn.init.normal_ is normal


def test_a_network_another_thread_builds_meanwhile_is_initialized_as_usual():
    """Skipping the random fills holds for the loading thread alone (a server loading a model while
    another thread builds one must not get uninitialized weights there)."""
    import threading

    from consistency_models.io.diffusers_format import without_random_init

    inside, built = threading.Event(), threading.Event()
    found = {}

    def other_thread():
        inside.wait(10)
        with torch.random.fork_rng():
            torch.manual_seed(3)
            found["other"] = torch.nn.Linear(8, 8).weight.detach().clone()
        norm = torch.nn.GroupNorm(2, 4)                  # its constant fills (ones_, zeros_) as usual too
        found["norm"] = (norm.weight.detach().clone(), norm.bias.detach().clone())
        built.set()

    worker = threading.Thread(target=other_thread)
    worker.start()
    with without_random_init():
        inside.set()
        assert built.wait(10)
        skipped = torch.nn.Linear(8, 8)
        with torch.random.fork_rng():
            torch.manual_seed(3)
            before = torch.random.get_rng_state()
            torch.nn.init.kaiming_uniform_(skipped.weight)
            assert torch.equal(torch.random.get_rng_state(), before)   # nothing drawn in this thread
    worker.join()
    with torch.random.fork_rng():
        torch.manual_seed(3)
        assert torch.equal(found["other"], torch.nn.Linear(8, 8).weight)   # the other thread's: as usual
    assert torch.nn.init.kaiming_uniform_.__module__ == "torch.nn.init"     # put back
    assert torch.equal(found["norm"][0], torch.ones(4)) and torch.equal(found["norm"][1], torch.zeros(4))
