"""Sharded generation (`cm sample --num`): image i is the same for any batch size, any number of
torchrun processes and across an interrupted run; shards of other settings are refused."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import consistency_models as cm
from consistency_models.evaluation.generation import (
    DEFAULT_COMPUTE_BATCH,
    generate_samples,
    image_generators,
    image_seed,
    shard_folder,
)
from conftest import TORCHRUN, child_env

ENV = child_env(CUDA_VISIBLE_DEVICES="")
NUM = 10


@pytest.fixture(scope="module")
def pipe():
    return cm.ConsistencyModelPipeline.from_pretrained("digits")


def load(path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as data:
        return data["arr_0"], data["arr_1"]


def reference_images(pipe, compute: int) -> tuple[np.ndarray, np.ndarray]:
    """Two-step samples straight from the pipeline, by definition: image i is row i of a network
    call of exactly `compute` images with the per-image seeds (the last call padded with rows
    that are thrown away)."""
    images, labels = [], []
    for start in range(0, NUM, compute):
        chunk = list(range(start, min(start + compute, NUM)))
        padding = [torch.Generator().manual_seed(123) for _ in range(compute - len(chunk))]
        out = pipe(compute, num_inference_steps=2, generator=image_generators(7, chunk) + padding, output_type="np")
        images.append(cm.io.images.to_uint8(out.images)[:len(chunk)])
        labels.append(out.class_labels.numpy()[:len(chunk)])
    return np.concatenate(images), np.concatenate(labels)


@pytest.fixture(scope="module")
def reference(pipe):
    return reference_images(pipe, DEFAULT_COMPUTE_BATCH)


def test_image_seeds_differ_and_are_stable():
    seeds = {image_seed(0, i) for i in range(1000)} | {image_seed(1, i) for i in range(1000)}
    assert len(seeds) == 2000
    assert image_seed(3, 5) == image_seed(3, 5)


@pytest.mark.parametrize("batch_size", [1, 3, 8, 16, 64])
def test_same_images_for_every_batch_size(pipe, reference, tmp_path, batch_size):
    """Bit-identical for every --batch-size: the network always sees compute_batch images."""
    out = generate_samples(pipe, NUM, tmp_path / "s.npz", batch_size=batch_size, seed=7, num_inference_steps=2,
                           progress=False)
    images, labels = load(out)
    assert images.shape == (NUM, 16, 16, 1) and images.dtype == np.uint8
    np.testing.assert_array_equal(labels, reference[1])
    np.testing.assert_array_equal(images, reference[0])
    assert not shard_folder(out).exists()  # merged and cleaned up


def test_resume_after_an_interruption_makes_only_the_missing_images(pipe, tmp_path, monkeypatch):
    """Network calls of 2 images, shards of 3: Ctrl-C in the third call keeps one shard (3 images);
    the rerun, with shards of 4, makes the other 7 in 4 calls and the same images as one run."""
    reference = reference_images(pipe, 2)
    calls = []
    original = type(pipe).__call__

    interrupted = []

    def failing(self, batch_size, **kw):
        calls.append(batch_size)
        if len(calls) == 3 and not interrupted:
            interrupted.append(True)
            raise KeyboardInterrupt  # as a user's Ctrl-C in the third network call
        return original(self, batch_size, **kw)

    monkeypatch.setattr(type(pipe), "__call__", failing)
    with pytest.raises(KeyboardInterrupt):
        generate_samples(pipe, NUM, tmp_path / "s.npz", batch_size=3, seed=7, num_inference_steps=2, progress=False,
                         compute_batch=2)
    assert not (tmp_path / "s.npz").exists()
    shards = shard_folder(tmp_path / "s.npz")
    (shards / "r0-000000099.npz").write_bytes(b"PK\x03\x04 truncated")  # a damaged leftover is ignored
    calls.clear()
    out = generate_samples(pipe, NUM, tmp_path / "s.npz", batch_size=4, seed=7, num_inference_steps=2,
                           progress=False, compute_batch=2)
    assert calls == [2, 2, 2, 2]  # 7 images left after the kept shard of 3, the last call padded
    np.testing.assert_array_equal(load(out)[0], reference[0])


def test_shards_of_other_settings_are_refused(pipe, tmp_path, monkeypatch):
    folder = shard_folder(tmp_path / "s.npz")

    calls = []
    original = type(pipe).__call__

    def interrupt(self, *args, **kw):   # the second batch is interrupted: the first one's shard stays
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return original(self, *args, **kw)

    with monkeypatch.context() as m:
        m.setattr(type(pipe), "__call__", interrupt)
        with pytest.raises(KeyboardInterrupt):
            generate_samples(pipe, 4, tmp_path / "s.npz", seed=1, batch_size=2, compute_batch=2, progress=False)
    assert (folder / "run.json").is_file() and len(list(folder.glob("r0-*.npz"))) == 1
    with pytest.raises(cm.InvalidInputError, match=r"other settings \(seed\); run the same command as before, or "
                                                   r"pass --overwrite to start over$"):
        generate_samples(pipe, 4, tmp_path / "s.npz", seed=2, batch_size=2, compute_batch=2, progress=False)
    # start_over (cm sample --num ... --overwrite): the other run's shards go, this run's settings count
    out = generate_samples(pipe, 4, tmp_path / "s.npz", seed=2, batch_size=2, compute_batch=2, progress=False,
                           start_over=True)
    again = generate_samples(pipe, 4, tmp_path / "t.npz", seed=2, batch_size=2, compute_batch=2, progress=False)
    assert np.array_equal(np.load(out)["arr_0"], np.load(again)["arr_0"]) and not folder.exists()


@pytest.mark.parametrize("kwargs, message", [
    ({"num": 0}, "num: 0 must be a number of images from 1 to 100000000"),
    ({"batch_size": 0}, "batch_size: 0 must be"),
    ({"out": "samples.png"}, "must end in .npz"),
    ({"out": "/no/such/folder/s.npz"}, "the folder /no/such/folder does not exist"),
])
def test_bad_arguments(pipe, tmp_path, kwargs, message):
    args = {"num": 4, "out": tmp_path / "s.npz", "batch_size": 2} | kwargs
    with pytest.raises(cm.InvalidInputError, match=message):
        generate_samples(pipe, args.pop("num"), args.pop("out"), progress=False, **args)


@pytest.mark.skipif(not TORCHRUN.is_file(), reason=f"torchrun is not installed next to {sys.executable}")
def test_two_torchrun_processes_make_the_same_file(reference, tmp_path):
    """`torchrun --nproc_per_node 2 cm sample --num` = the single-process images, merged by rank 0."""
    out = tmp_path / "s.npz"
    argv = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "consistency_models", "sample",
            "--num-samples", str(NUM), "--batch-size", "2", "--steps", "2", "--seed", "7", "--device", "cpu", "--out", str(out)]
    result = subprocess.run(argv, capture_output=True, text=True, env=ENV, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("wrote") == 1  # rank 0 alone merges and reports
    images, labels = load(out)
    np.testing.assert_array_equal(labels, reference[1])
    np.testing.assert_array_equal(images, reference[0])
    assert not shard_folder(out).exists()


def test_a_merged_file_written_meanwhile_by_another_process_is_kept_without_overwrite(pipe, tmp_path, monkeypatch):
    out = tmp_path / "s.npz"
    original = type(pipe).__call__

    def and_another_writer(self, *args, **kw):   # the other process finishes while this one samples
        if not out.exists():
            out.write_bytes(b"theirs")
        return original(self, *args, **kw)

    monkeypatch.setattr(type(pipe), "__call__", and_another_writer)
    with pytest.raises(cm.InvalidInputError, match=r"^out: .*s\.npz was written by another process while this one "
                                                   r"ran; it is kept"):
        generate_samples(pipe, 2, out, batch_size=2, compute_batch=2, progress=False, overwrite=False)
    assert out.read_bytes() == b"theirs"
