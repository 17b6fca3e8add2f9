"""Loading copies each weight once from the safetensors file into its final form and keeps nothing
of the file (`io/file_mapping.py`): read from the process's own memory map, and by rewriting the
file in place under a loaded pipeline."""

from __future__ import annotations

import gc
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from consistency_models import CMStochasticIterativeScheduler, ConsistencyModelPipeline, UNetModel, preset
from consistency_models.io.file_mapping import mapped_storages, owned_tensors, release_file

MAPS = Path("/proc/self/maps")
needs_maps = pytest.mark.skipif(not MAPS.exists(), reason="reads the process's memory map (Linux /proc)")
WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


def mapped(path: Path) -> bool:
    """Whether this process maps `path` now (after dropping what is no longer referenced)."""
    gc.collect()
    return str(path.resolve()) in MAPS.read_text()


def saved(folder: Path, model_channels: int, seed: int = 0) -> ConsistencyModelPipeline:
    """A small class-conditional pipeline of random weights, saved to `folder`; width 128 is the
    narrowest that takes channels_last with the fast kernels on a CPU."""
    unet = UNetModel(preset("test", image_size=8, model_channels=model_channels, channel_mult=(1,),
                            num_res_blocks=1, attention_resolutions=(), num_classes=10))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in unet.parameters():  # ADM zeroes the residual outputs: give every weight a value
            p.normal_(0, 0.05, generator=g)
    pipe = ConsistencyModelPipeline(unet, CMStochasticIterativeScheduler())
    pipe.save_pretrained(folder)
    return pipe


def images(pipe: ConsistencyModelPipeline) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    return pipe(batch_size=2, class_labels=[1, 7], generator=torch.Generator().manual_seed(0),
                output_type="np").images


@needs_maps
@pytest.mark.parametrize("width, options", [(32, {"fast_kernels": False}), (32, {}), (32, {"dtype": torch.bfloat16}),
                                            (128, {})], ids=["float32", "narrow-default", "bfloat16", "channels_last"])
def test_a_loaded_network_holds_no_page_of_its_file(tmp_path, width, options):
    """float32 as loaded (all copied by `release_file`), bfloat16 (all converted), channels_last
    for the fast kernels (the 4-D weights converted, biases and norms copied)."""
    folder = tmp_path / "model"
    pipe = saved(folder, width)
    loaded = ConsistencyModelPipeline.from_pretrained(folder, **options)
    assert not mapped(folder / WEIGHTS)
    assert loaded.unet.channels_last == (width == 128 and options.get("fast_kernels", True))
    dtype = options.get("dtype", torch.float32)
    for (name, mine), theirs in zip(loaded.unet.state_dict().items(), pipe.unet.state_dict().values()):
        assert mine.dtype == dtype and torch.equal(mine, theirs.to(dtype)), name
    assert all(p.untyped_storage().resizable() for p in loaded.unet.parameters())  # memory of its own


def test_a_file_rewritten_in_place_leaves_a_loaded_pipeline_as_it_was(tmp_path):
    """`cp` of other weights over the file, then safetensors' `save_file` of the pipeline's own
    tensors to the same path (it truncates the file before reading them): a network that still
    mapped the file would sample the new bytes, save zeros or die of SIGBUS."""
    folder, other = tmp_path / "model", tmp_path / "other"
    pipe = saved(folder, 32, seed=0)
    saved(other, 32, seed=1)
    loaded = ConsistencyModelPipeline.from_pretrained(folder, fast_kernels=False)
    expected = images(pipe)
    shutil.copyfile(other / WEIGHTS, folder / WEIGHTS)               # in place: the same inode, new bytes
    np.testing.assert_array_equal(images(loaded), expected)
    save_file(loaded.unet.state_dict(), str(folder / WEIGHTS))
    np.testing.assert_array_equal(images(ConsistencyModelPipeline.from_pretrained(folder)), expected)


def test_release_file_copies_the_mapped_tensors_a_conversion_left():
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.GroupNorm(1, 3))
    everything = {t.untyped_storage().data_ptr() for t in net.parameters()}
    assert mapped_storages(net) == set()                       # PyTorch's own memory maps no file
    net[0].to(memory_format=torch.channels_last)               # the 4-D weight replaced, the rest kept
    weight, bias = net[0].weight, net[0].bias
    values = {name: t.clone() for name, t in net.state_dict().items()}
    release_file(net, everything)                              # as if all had come from the file
    assert not {t.untyped_storage().data_ptr() for t in net.parameters()} & everything
    assert net[0].weight is weight and net[0].bias is bias     # the same Parameter objects (an optimizer's)
    assert net[0].weight.is_contiguous(memory_format=torch.channels_last)
    for name, tensor in net.state_dict().items():
        assert torch.equal(tensor, values[name]), name


def test_owned_tensors_copies_shared_storage_views_and_strided_tensors_only():
    base = torch.arange(10.0)
    alone = torch.ones(3)
    strided = torch.ones(4, 2).t()
    state = {"a": base, "b": base, "view": base[2:5], "alone": alone, "strided": strided}
    owned = owned_tensors(state)
    assert owned["a"] is base and owned["alone"] is alone       # whole, first user: taken as they are
    for name in ("b", "view", "strided"):
        assert torch.equal(owned[name], state[name]) and owned[name] is not state[name], name
    assert owned["b"].untyped_storage().data_ptr() != base.untyped_storage().data_ptr()
    assert owned["view"].untyped_storage().nbytes() == 3 * 4
    assert owned["strided"].is_contiguous()
