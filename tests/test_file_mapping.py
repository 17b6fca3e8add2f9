"""A loaded network uses its safetensors file's tensors in place (`io/file_mapping.py`): no copy at
load, the file never written through them, and the mapping released once a conversion (dtype,
channels_last) has replaced the network's tensors — read from the process's own memory map."""

from __future__ import annotations

import gc
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from consistency_models import CMStochasticIterativeScheduler, ConsistencyModelPipeline, UNetModel, preset
from consistency_models.io.file_mapping import owned_tensors, release_file, storages

MAPS = Path("/proc/self/maps")
needs_maps = pytest.mark.skipif(not MAPS.exists(), reason="reads the process's memory map (Linux /proc)")
WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


def mapped(path: Path) -> bool:
    """Whether this process maps `path` now (after dropping what is no longer referenced)."""
    gc.collect()
    return str(path.resolve()) in MAPS.read_text()


def saved(tmp_path: Path, model_channels: int) -> tuple[ConsistencyModelPipeline, Path]:
    """A small class-conditional pipeline of random weights and its folder; width 128 is the
    narrowest that takes channels_last with the fast kernels on a CPU."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        unet = UNetModel(preset("test", image_size=8, model_channels=model_channels, channel_mult=(1,),
                                num_res_blocks=1, attention_resolutions=(), num_classes=10))
    for p in unet.parameters():  # ADM zeroes the residual outputs: give every weight a value
        torch.nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(p.numel()))
    pipe = ConsistencyModelPipeline(unet, CMStochasticIterativeScheduler())
    folder = tmp_path / f"width{model_channels}"
    pipe.save_pretrained(folder)
    return pipe, folder


def images(pipe: ConsistencyModelPipeline) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    return pipe(batch_size=2, class_labels=[1, 7], generator=torch.Generator().manual_seed(0),
                output_type="np").images


@needs_maps
def test_a_float32_network_is_its_files_tensors_and_never_writes_the_file(tmp_path):
    pipe, folder = saved(tmp_path, 32)
    file = folder / WEIGHTS
    digest = hashlib.sha256(file.read_bytes()).hexdigest()
    loaded = ConsistencyModelPipeline.from_pretrained(folder, fast_kernels=False)
    assert mapped(file)                                             # no copy made at load
    np.testing.assert_array_equal(images(loaded), images(pipe))     # the same numbers as the saved network
    with torch.no_grad():
        torch._foreach_mul_(list(loaded.unet.parameters()), 2.0)   # written: the pages are copied, not the file
    assert hashlib.sha256(file.read_bytes()).hexdigest() == digest
    assert torch.equal(next(loaded.unet.parameters()), 2.0 * next(pipe.unet.parameters()))
    pipe.save_pretrained(folder)                                    # replaced by a rename: the loaded one is unchanged
    assert hashlib.sha256(file.read_bytes()).hexdigest() == digest
    assert torch.equal(next(loaded.unet.parameters()), 2.0 * next(pipe.unet.parameters()))
    del loaded
    assert not mapped(file)


@needs_maps
@pytest.mark.parametrize("width, options", [(32, {"dtype": torch.bfloat16}), (128, {})],
                         ids=["bfloat16", "channels_last"])
def test_a_converted_network_holds_no_page_of_its_file(tmp_path, width, options):
    """bfloat16 converts every tensor; the fast kernels' channels_last (a 128-wide network on CPU)
    only the 4-D ones, and `release_file` copies the biases and norms that still held the file."""
    pipe, folder = saved(tmp_path, width)
    loaded = ConsistencyModelPipeline.from_pretrained(folder, **options)
    assert not mapped(folder / WEIGHTS)
    assert loaded.unet.channels_last == (width == 128)
    dtype = options.get("dtype", torch.float32)
    for (name, mine), theirs in zip(loaded.unet.state_dict().items(), pipe.unet.state_dict().values()):
        assert mine.dtype == dtype and torch.equal(mine, theirs.to(dtype)), name


def test_release_file_copies_only_what_a_conversion_left():
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.GroupNorm(1, 3))
    before = storages(net)
    release_file(net, before)                                  # nothing converted: nothing copied
    assert storages(net) == before
    net[0].to(memory_format=torch.channels_last)               # the 4-D weight replaced, the rest kept
    weight, bias = net[0].weight, net[0].bias
    values = {name: t.clone() for name, t in net.state_dict().items()}
    release_file(net, before)
    assert not storages(net) & before                          # every tensor now its own copy
    assert net[0].weight is weight and net[0].bias is bias     # the same Parameter objects (an optimizer's)
    assert net[0].weight.is_contiguous(memory_format=torch.channels_last)
    for name, tensor in net.state_dict().items():
        assert torch.equal(tensor, values[name]), name


def test_owned_tensors_copies_shared_storage_and_views_only():
    base = torch.arange(10.0)
    alone = torch.ones(3)
    state = {"a": base, "b": base, "view": base[2:5], "alone": alone, "strided": torch.ones(4, 4).t()}
    owned = owned_tensors(state)
    assert owned["a"] is base and owned["alone"] is alone       # whole, first user: taken as they are
    for name in ("b", "view", "strided"):                       # shared, a view, not contiguous: copied
        assert torch.equal(owned[name], state[name]) and owned[name] is not state[name], name
    assert owned["b"].untyped_storage().data_ptr() != base.untyped_storage().data_ptr()
    assert owned["view"].untyped_storage().nbytes() == 3 * 4
