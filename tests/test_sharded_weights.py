"""Sharded weights, as diffusers writes and reads them: `save_pretrained(max_shard_size=...)` splits the
network into the files diffusers' own `save_pretrained` makes of the same weights (names, index, the
tensors in each), diffusers loads our shards and we load diffusers', a save replaces any earlier
layout of its variant, and an index that does not fit its shards is one line, never a mix of weights.

The references are diffusers' `UNet2DModel.save_pretrained` / `ConsistencyModelPipeline.from_pretrained`
and huggingface_hub's `split_torch_state_dict_into_shards` and `parse_size_to_int` (what diffusers calls).
"""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch
from diffusers import ConsistencyModelPipeline as DiffusersPipeline
from diffusers import UNet2DModel
from huggingface_hub import split_torch_state_dict_into_shards
from huggingface_hub.serialization._base import parse_size_to_int
from safetensors.torch import load_file

from consistency_models import ConsistencyModelPipeline, InvalidInputError
from consistency_models.io import diffusers_format
from consistency_models.io import shards
from consistency_models.io.shards import max_shard_bytes, split_into_shards

LABELS = [3, 871]


def weight_files(unet_folder) -> list[str]:
    return sorted(name for name in os.listdir(unet_folder) if name.startswith("diffusion_pytorch_model"))


def read_shards(unet_folder) -> dict[str, dict[str, torch.Tensor]]:
    """Every weights file of a folder, by name (safetensors or torch.save)."""
    out = {}
    for name in weight_files(unet_folder):
        path = unet_folder / name
        if name.endswith(".safetensors"):
            out[name] = load_file(str(path))
        elif name.endswith(".bin"):
            out[name] = torch.load(path, map_location="cpu", weights_only=True)
    return out


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def images(pipeline) -> np.ndarray:
    pipeline.set_progress_bar_config(disable=True)
    return pipeline(batch_size=2, class_labels=LABELS, generator=torch.Generator().manual_seed(0), output_type="np",
                    timesteps=[22, 0]).images


@pytest.fixture(scope="module")
def diffusers_copy(pipeline_dir):
    """diffusers' UNet2DModel holding our test network's weights (read from our one-file save)."""
    return UNet2DModel.from_pretrained(pipeline_dir / "unet")


@pytest.mark.parametrize("size, variant, safe", [("1MB", None, True), ("300KB", "fp16", True), (700_000, None, False)],
                         ids=["1MB", "300KB-variant", "700000-bin"])
def test_the_shards_are_split_and_named_as_diffusers_does(tmp_path, pipe, diffusers_copy, size, variant, safe):
    """Our files are huggingface_hub's split of our state dict under diffusers' names (the index's
    name is the one diffusers' own save of the same weights writes; the split follows each
    library's state-dict order, which differs), every tensor in the shard the index names; at 300 KB
    the 512 KB class embedding is alone in its shard. Each library loads the other's shards."""
    ours = tmp_path / "ours"
    pipe.save_pretrained(ours, max_shard_size=size, variant=variant, safe_serialization=safe)
    theirs = tmp_path / "theirs"
    diffusers_copy.save_pretrained(theirs, max_shard_size=size, variant=variant, safe_serialization=safe)
    suffix = ".safetensors" if safe else ".bin"
    state = pipe.unet.state_dict()
    pattern = "diffusion_pytorch_model" + (f".{variant}" if variant else "") + "{suffix}" + suffix
    reference = split_torch_state_dict_into_shards(state, max_shard_size=size, filename_pattern=pattern)
    names = weight_files(ours / "unet")
    index_names = [n for n in names if n.endswith(".json")]
    assert index_names == [n for n in weight_files(theirs) if n.endswith(".json")]
    assert sorted(names) == sorted([*reference.filename_to_tensors, *index_names]) and len(names) >= 5, names
    index = json.loads((ours / "unet" / index_names[0]).read_text())
    assert index == {"metadata": reference.metadata, "weight_map": reference.tensor_to_filename}
    assert index["metadata"]["total_size"] == sum(v.numel() * 4 for v in state.values())
    for name, tensors in read_shards(ours / "unet").items():
        assert sorted(tensors) == sorted(reference.filename_to_tensors[name]), name
        assert all(torch.equal(tensors[k], state[k]) for k in tensors), name
        if len(tensors) > 1:
            assert sum(t.numel() * 4 for t in tensors.values()) <= max_shard_bytes(size)
        if size == "300KB" and "class_embedding.weight" in tensors:
            assert list(tensors) == ["class_embedding.weight"]
    assert not [p for p in ours.rglob("*") if p.name.endswith(".tmp")]
    assert same_weights(UNet2DModel.from_pretrained(ours / "unet", variant=variant, use_safetensors=safe), diffusers_copy)
    assert same_weights(ConsistencyModelPipeline.from_pretrained(
        ours, variant=variant, use_safetensors=safe).unet, pipe.unet)
    (theirs / "config.json").write_text((ours / "unet" / "config.json").read_text())
    assert same_weights(diffusers_format.load_network(theirs, variant, use_safetensors=safe), pipe.unet)


def test_diffusers_loads_our_shards_and_we_load_theirs(tmp_path, pipe, diffusers_copy):
    ours = tmp_path / "ours"
    pipe.save_pretrained(ours, max_shard_size="1MB")
    assert "diffusion_pytorch_model.safetensors.index.json" in os.listdir(ours / "unet")
    expected = images(pipe)
    assert expected.std() > 0.02
    np.testing.assert_allclose(images(DiffusersPipeline.from_pretrained(ours)), expected, rtol=0, atol=1e-5)
    reloaded = ConsistencyModelPipeline.from_pretrained(ours)
    assert same_weights(reloaded.unet, pipe.unet)

    theirs = tmp_path / "theirs"
    DiffusersPipeline.from_pretrained(ours).save_pretrained(theirs, max_shard_size="500KB", variant="fp16")
    assert "diffusion_pytorch_model.safetensors.index.fp16.json" in os.listdir(theirs / "unet")
    assert same_weights(ConsistencyModelPipeline.from_pretrained(theirs, variant="fp16").unet, pipe.unet)
    with pytest.raises(InvalidInputError, match=r"^weights: missing file .*; to load those of a variant give "
                                                r"variant='fp16' \(cm sample, edit, tune-timesteps: --variant "
                                                r"fp16\)$"):
        ConsistencyModelPipeline.from_pretrained(theirs)


def test_a_folder_of_two_variants_alone_names_both_for_the_api_and_for_cm(tmp_path, pipe):
    folder = tmp_path / "pipe"
    for variant in ("fp16", "ema"):
        pipe.save_pretrained(folder, variant=variant)
    with pytest.raises(InvalidInputError, match=r"; to load those of a variant give variant= one of 'ema', 'fp16' "
                                                r"\(cm sample, edit, tune-timesteps: --variant NAME\)$"):
        ConsistencyModelPipeline.from_pretrained(folder)


@pytest.mark.filterwarnings("ignore:This serialization format is now deprecated")  # diffusers' note on the old name
def test_an_older_diffusers_variant_index_name_loads(tmp_path, pipe, diffusers_copy):
    """diffusers still reads a variant's index under its pre-2024 name (….safetensors.fp16.index.json)."""
    folder = tmp_path / "pipe"
    pipe.save_pretrained(folder, max_shard_size="1MB", variant="fp16")
    unet = folder / "unet"
    (unet / "diffusion_pytorch_model.safetensors.index.fp16.json").rename(
        unet / "diffusion_pytorch_model.safetensors.fp16.index.json")
    assert same_weights(ConsistencyModelPipeline.from_pretrained(folder, variant="fp16").unet, pipe.unet)
    assert same_weights(DiffusersPipeline.from_pretrained(folder, variant="fp16").unet, diffusers_copy)


def test_use_safetensors_false_reads_bin_shards(tmp_path, pipe):
    folder = tmp_path / "pipe"
    pipe.save_pretrained(folder, max_shard_size="2MB", safe_serialization=False)
    assert "diffusion_pytorch_model.bin.index.json" in os.listdir(folder / "unet")
    for use_safetensors in (False, None):
        assert same_weights(ConsistencyModelPipeline.from_pretrained(folder, use_safetensors=use_safetensors).unet,
                            pipe.unet)
    with pytest.raises(InvalidInputError, match=r"^use_safetensors: True asks for diffusion_pytorch_model\.safetensors "
                                                r"\(or its shards\), which .* does not have \(found: .*bin\.index\.json"):
        ConsistencyModelPipeline.from_pretrained(folder, use_safetensors=True)


@pytest.mark.parametrize("layouts", [("1MB", "10GB"), ("10GB", "1MB"), ("700KB", "2MB"), ("2MB", "700KB")],
                         ids=["sharded-then-one", "one-then-sharded", "more-then-fewer", "fewer-then-more"])
def test_saving_again_leaves_only_the_new_layout(tmp_path, pipe, layouts):
    """As diffusers, a save removes its variant's earlier shards, index and single file; another
    variant's weights stay."""
    folder = tmp_path / "pipe"
    pipe.save_pretrained(folder, variant="ema")
    first, second = layouts
    pipe.save_pretrained(folder, max_shard_size=first)
    pipe.save_pretrained(folder, max_shard_size=second)
    fresh = tmp_path / "fresh"
    pipe.save_pretrained(fresh, max_shard_size=second)
    assert weight_files(folder / "unet") == sorted([*weight_files(fresh / "unet"),
                                                    "diffusion_pytorch_model.ema.safetensors"])
    assert same_weights(ConsistencyModelPipeline.from_pretrained(folder).unet, pipe.unet)


@pytest.mark.parametrize("old_layout", ["1MB", "700KB", "10GB"], ids=["same-shards", "other-shards", "one-file"])
def test_a_stopped_sharded_save_keeps_the_old_weights_or_refuses_never_a_mix(tmp_path, pipe, diffusers_copy, monkeypatch,
                                                                             old_layout):
    """Every shard is written under a temporary name before any takes its own: a save stopped while
    writing them (the long part: a full disk, Ctrl-C) leaves the earlier weights loadable in both
    libraries. Stopped after the shards took their names but before the new index, a folder whose
    old index named those same names refuses in one line (that index went first); any other still
    loads the old weights whole. Never old and new tensors together."""
    other = ConsistencyModelPipeline(type(pipe.unet)(pipe.unet.config), pipe.scheduler)  # new random weights
    assert not same_weights(other.unet, pipe.unet)
    real_write = diffusers_format.write_weights

    def second_shard_fails(state, path, safe):
        if "-00002-of-" in path.name:   # the temporary file of the second shard
            raise KeyboardInterrupt
        real_write(state, path, safe)

    def index_fails(path, data):
        raise KeyboardInterrupt

    for stop, patched in (("writing", ("write_weights", second_shard_fails)), ("index", ("write_json", index_fails))):
        folder = tmp_path / stop
        pipe.save_pretrained(folder, max_shard_size=old_layout)
        with monkeypatch.context() as patch:
            patch.setattr(diffusers_format, *patched)
            with pytest.raises(KeyboardInterrupt):
                other.save_pretrained(folder, max_shard_size="1MB")
        assert not [p.name for p in (folder / "unet").iterdir() if p.name.endswith(".tmp")]
        if stop == "index" and old_layout == "1MB":
            with pytest.raises(InvalidInputError, match=r"^weights: missing file .*diffusion_pytorch_model\.safetensors "
                                                        r"\(found: diffusion_pytorch_model-00001-of-0000\d\.safetensors, "
                                                        r".*; shards are there without their index \(diffusion_pytorch_"
                                                        r"model\.safetensors\.index\.json\): an interrupted save"):
                ConsistencyModelPipeline.from_pretrained(folder)
            continue
        assert same_weights(ConsistencyModelPipeline.from_pretrained(folder).unet, pipe.unet), (stop, old_layout)
        assert same_weights(UNet2DModel.from_pretrained(folder / "unet"), diffusers_copy), (stop, old_layout)


def test_an_index_that_does_not_fit_its_shards_is_one_line(tmp_path, pipe):
    folder = tmp_path / "pipe"
    pipe.save_pretrained(folder, max_shard_size="1MB")
    unet = folder / "unet"
    index_path = unet / "diffusion_pytorch_model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shards = sorted(set(index["weight_map"].values()))

    def load_with(change) -> str:
        data = json.loads(json.dumps(index))
        change(data)
        index_path.write_text(json.dumps(data))
        with pytest.raises(InvalidInputError) as info:
            ConsistencyModelPipeline.from_pretrained(folder)
        assert "\n" not in str(info.value)
        return str(info.value)

    first_key = next(iter(index["weight_map"]))
    assert load_with(lambda d: d["weight_map"].update({first_key: "../pipe/unet/" + shards[0]})).startswith(
        f"weights: the index {index_path} names the shard '../pipe/unet/{shards[0]}'; shards are plain file names")
    assert load_with(lambda d: d["weight_map"].update({first_key: "gone.safetensors"})) == (
        f"weights: the index {index_path} names the shard gone.safetensors, which {unet} does not have "
        f"(an incomplete download or save?)")
    moved = load_with(lambda d: d["weight_map"].update({first_key: shards[-1]}))
    assert moved.startswith(f"weights: the shard {unet / shards[-1]} lacks {first_key!r} (1 missing, 0 unlisted)")
    assert load_with(lambda d: d.pop("weight_map")) == (
        f"weights: the index {index_path} has no \"weight_map\" of tensor names to shard files")
    index_path.write_text("{")
    with pytest.raises(InvalidInputError, match=r"^weights: corrupt JSON in the index "):
        ConsistencyModelPipeline.from_pretrained(folder)


@pytest.mark.parametrize("value", ["10", "5GiB", "GB", "-1MB", "0KB", "nanMB", "infGB", 0, -5, 0.5, float("inf"), True,
                                   [1]], ids=repr)
def test_a_bad_max_shard_size_is_one_line_before_anything_is_written(tmp_path, pipe, value):
    with pytest.raises(InvalidInputError) as info:
        pipe.save_pretrained(tmp_path / "pipe", max_shard_size=value)
    assert str(info.value).startswith(f"max_shard_size: {value!r} is not allowed; use a number of bytes")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "pipe").exists()


@pytest.mark.parametrize("text", ["10GB", "5gb", "500MB", "1.5GB", " 2 KB ", "3TB", "0.5MB", "700KB", "1e3MB"])
def test_sizes_read_as_huggingface_hub_reads_them(text):
    assert max_shard_bytes(text) == parse_size_to_int(text)


def test_none_is_the_default_and_numbers_are_bytes(tmp_path, pipe):
    """diffusers' pipelines default max_shard_size to None (the models' default then applies)."""
    assert max_shard_bytes(None) == max_shard_bytes("10GB") == 10**10
    assert max_shard_bytes(np.int64(700_000)) == max_shard_bytes(7e5) == 700_000
    pipe.save_pretrained(tmp_path / "none", max_shard_size=None)
    assert weight_files(tmp_path / "none" / "unet") == ["diffusion_pytorch_model.safetensors"]


def test_the_split_is_huggingface_hubs_on_random_sizes():
    """Tensors of random sizes (some over the limit) in random orders: the same groups as
    huggingface_hub's `split_torch_state_dict_into_shards`, which diffusers' save_pretrained calls."""
    rng = random.Random(0)
    for trial in range(200):
        state = {f"t{i}": torch.empty(rng.choice([1, 3, 50, 100, 180, 260, 400])) for i in range(rng.randint(1, 12))}
        limit = rng.choice([400, 800, 1000, 1600, 10**6])
        reference = split_torch_state_dict_into_shards(state, max_shard_size=limit,
                                                       filename_pattern="m{suffix}.safetensors")
        groups = split_into_shards(state, limit)
        assert groups == [list(keys) for keys in reference.filename_to_tensors.values()], (trial, limit)


VARIANTS = (None, "fp16", "non_ema", "ema-v2")
ODD_VARIANTS = ("ema*", "v[1]", "a+b?", "x(y)")  # glob and regular-expression characters in a name


def names_of(variant: str | None) -> list[str]:
    """Every weight file name of `variant`: each kind of the table, each format, two shard numbers."""
    return [shards.weight_file_name(kind, variant, suffix, (i, 3) if kind == "shard" else None)
            for kind in shards.WEIGHT_FILES for suffix in shards.SUFFIXES for i in (1, 3)]


def test_weight_file_names_are_diffusers_own():
    """The names as diffusers makes them: `_add_variant` on its constants, and the shard pattern
    its save_pretrained hands to huggingface_hub."""
    from diffusers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFETENSORS_WEIGHTS_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME
    from diffusers.utils import _add_variant

    for variant in VARIANTS:
        for suffix, single, index in ((".safetensors", SAFETENSORS_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME),
                                      (".bin", WEIGHTS_NAME, WEIGHTS_INDEX_NAME)):
            assert shards.weight_file_name("file", variant, suffix) == _add_variant(single, variant)
            assert shards.index_name(variant, suffix) == _add_variant(index, variant)
            pattern = _add_variant(single, variant).replace(suffix, "{suffix}" + suffix)
            assert shards.shard_names(variant, suffix, 3) == [pattern.format(suffix=f"-{i:05d}-of-00003")
                                                              for i in (1, 2, 3)]


def test_patterns_globs_and_variant_reading_agree_on_every_name():
    """The table's three forms, each written by its own code (names, regular expressions with the
    variant escaped or captured, Hub globs), say the same of every name of every variant."""
    from fnmatch import fnmatchcase

    found = shards.weight_file_pattern(tuple(shards.WEIGHT_FILES), shards.ANY_VARIANT)
    for variant in VARIANTS + ODD_VARIANTS:
        ours = shards.weight_file_pattern(tuple(shards.WEIGHT_FILES), variant)
        globs = shards.weight_file_globs(variant)
        for other in VARIANTS + ODD_VARIANTS:
            for name in names_of(other):
                assert bool(ours.fullmatch(name)) == (other == variant), (variant, name)
                assert any(fnmatchcase(name, g) for g in globs) == (other == variant), (variant, name, globs)
                assert shards.variant_of(found.fullmatch(name)) == other, name
    assert diffusers_format.variants_in([n for v in VARIANTS for n in names_of(v)] + ["config.json"]) == \
        ["ema-v2", "fp16", "non_ema"]
    # "ema*" of a Hub push deletes no file of variant "emax" (and "v[1]" none of "v1")
    assert not any(fnmatchcase(n, g) for n in names_of("emax") + names_of("v1")
                   for g in shards.weight_file_globs("ema*") + shards.weight_file_globs("v[1]"))
    for name in ("diffusion_pytorch_model.fp16.safetensors.tmp", "model.safetensors", "diffusion_pytorch_model.pt"):
        assert not found.fullmatch(name), name
