"""Sharded, resumable sample generation for evaluation (e.g. 50,000 images for FID).

Image i is drawn from its own generator, seeded from (seed, i): its noise, its class label and
every re-noising draw of multistep sampling come from that generator alone, so image i is the
same whatever the batch size, the number of processes or how often the run was restarted.

Under `torchrun`, rank r owns the images i with i mod world_size = r. Each finished batch is
written as a shard (`OUT.shards/r{rank}-{first index}.npz`: images, labels, indices) by temp
file and rename; a restarted run reads the shards it has and makes only the missing images.
When every image exists, rank 0 merges them in index order into one ADM-style `.npz`
(arr_0: uint8 NHWC, arr_1: labels for a class-conditional model) and deletes the shards.
"""

from __future__ import annotations

import json
import os
import re
import sys

import shutil
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..distributed import DistributedContext
from ..errors import InvalidInputError, first_line, is_integer
from ..io.atomic import TMP_SUFFIX, atomic_path, remove_leftovers, write_error, write_json, write_npz
from ..io.checksum import file_sha256
from ..io.images import to_uint8
from ..io.lock import hold_folder
from ..io.overwrite import refuse_existing, require_parent_folder
from ..pipeline import ConsistencyModelPipeline
from ..schedule import NoiseLevels

SHARD_SUFFIX = ".shards"
RUN_RECORD = "run.json"                 # the run's settings in its shard folder (and, once merged, the file's hash)
SHARD_NAME = re.compile(r"r\d+-\d+\.npz")  # r{rank}-{first index}.npz


def image_seed(seed: int, index: int) -> int:
    """A 63-bit seed for image `index` of a run seeded `seed` (NumPy's SeedSequence hashing)."""
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def image_generators(seed: int, indices: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per image, seeded from (seed, index)."""
    return [torch.Generator().manual_seed(image_seed(seed, i)) for i in indices]


DEFAULT_COMPUTE_BATCH = 16  # images per network call in sharded generation (recorded in run.json)
MAX_IMAGES = 10**8  # the most images one sharded run makes (50,000 is the usual FID set)


def shard_folder(out: str | os.PathLike) -> Path:
    return Path(str(out) + SHARD_SUFFIX)


@dataclass(frozen=True)
class ShardSpec:
    """What every shard of a run holds: `images` (n, H, W, C) uint8, `indices` (n,) int64 and, for a
    class-conditional model, `labels` (n,) int64 (in [0, num_classes) when that is known); nothing else."""

    image_shape: tuple[int, int, int]           # (H, W, C) of one image
    labels: bool                                # whether the shards hold labels (a class-conditional model)
    num_classes: int | None = None              # the model's classes, when known

    @classmethod
    def of(cls, pipe: ConsistencyModelPipeline) -> ShardSpec:
        """The layout of the shards `pipe` makes."""
        channels, height, width = pipe.sample_shape
        num_classes = getattr(pipe.unet.config, "num_classes", None)
        return cls((height, width, channels), num_classes is not None, num_classes)

    @classmethod
    def like(cls, shard: dict[str, np.ndarray]) -> ShardSpec:
        """The layout of a sound `shard` (for shards read without the model that made them)."""
        height, width, channels = shard["images"].shape[1:]
        return cls((height, width, channels), "labels" in shard)

    @property
    def members(self) -> set[str]:
        return {"images", "indices"} | ({"labels"} if self.labels else set())


def _described(array: np.ndarray) -> str:
    return f"{array.dtype} of shape {tuple(array.shape)}"


def shard_problem(arrays: dict[str, np.ndarray], spec: ShardSpec | None) -> str | None:
    """What is wrong with a shard's arrays for a run of `spec` (None: any image size, labels or
    not), or None for a sound shard."""
    needed = spec.members if spec is not None else {"images", "indices"}
    allowed = spec.members if spec is not None else {"images", "indices", "labels"}
    missing, foreign = sorted(needed - set(arrays)), sorted(set(arrays) - allowed)
    if missing:
        return f"no {missing[0]} array; a shard of this run holds {', '.join(sorted(needed))}"
    if foreign:
        return f"an array {foreign[0]!r} that this run does not write"
    indices, pixels = arrays["indices"], arrays["images"]
    if indices.dtype != np.int64 or indices.ndim != 1 or len(indices) == 0:
        return f"indices are {_described(indices)}, not int64 of shape (n,), n ≥ 1"
    if int(indices.min()) < 0 or int(indices.max()) >= MAX_IMAGES:
        return f"indices must be image numbers from 0 to {MAX_IMAGES - 1}"
    n = len(indices)
    shape = (n, *spec.image_shape) if spec is not None else None
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or len(pixels) != n or (shape and pixels.shape != shape):
        wanted = shape or (n, "H", "W", "C")
        return f"images are {_described(pixels)}, not uint8 of shape ({', '.join(map(str, wanted))})"
    if "labels" in arrays:
        labels = arrays["labels"]
        if labels.dtype != np.int64 or labels.shape != (n,):
            return f"labels are {_described(labels)}, not int64 of shape ({n},)"
        if spec is not None and spec.num_classes is not None and not (
                0 <= int(labels.min()) and int(labels.max()) < spec.num_classes):
            return f"labels must be classes from 0 to {spec.num_classes - 1}"
    return None


def _read_shard(path: Path, spec: ShardSpec | None) -> dict[str, np.ndarray] | str:
    """A shard's arrays, or what is wrong with it (a damaged or foreign file). Every array is read
    in full, which checks each member's CRC: a flipped byte anywhere makes the shard invalid, so it
    is made again rather than trusted; so do a missing or extra member, a shape or a dtype that this
    run (`spec`) does not write."""
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            return "not an .npz archive"
        with data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        return f"unreadable: {first_line(exc, 120) or type(exc).__name__}"
    return shard_problem(arrays, spec) or arrays


def _shards(folder: Path, images: bool = False, spec: ShardSpec | None = None) -> list[dict[str, np.ndarray]]:
    """The valid shards of `folder` for a run of `spec` (None: the first sound shard's layout); a
    damaged one is removed (naming it) so its images are made again. Something else in a shard's
    place (a folder) is refused, never deleted."""
    if not folder.is_dir():
        return []
    shards = []
    for path in sorted(p for p in folder.iterdir() if SHARD_NAME.fullmatch(p.name)):
        if not path.is_file():
            kind = "a folder" if path.is_dir() else "not a regular file"
            raise InvalidInputError(f"out: {path} is {kind}, not a shard file; move it away (its images are "
                                    "then made again) and run the same command again")
        shard = _read_shard(path, spec)
        if isinstance(shard, str):
            print(f"sampling: {path} is damaged or not a shard of this run ({shard}); removed, its images are made "
                  "again", file=sys.stderr)
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                raise InvalidInputError(f"out: {path} is damaged ({shard}) and cannot be removed "
                                        f"({exc.strerror or exc}); delete it and run the same command again") from exc
            continue
        if spec is None:
            spec = ShardSpec.like(shard)  # the others must match the first
        shards.append(shard if images else {"indices": shard["indices"]})
    return shards


def existing_indices(folder: Path, spec: ShardSpec | None = None) -> set[int]:
    """The image indices already written as valid shards in `folder` (each shard read in full and
    checked against `spec`, the run's shard layout, when given)."""
    return {int(i) for shard in _shards(folder, spec=spec) for i in shard["indices"]}


def _compute(pipe: ConsistencyModelPipeline, chunk: list[int], size: int, seed: int, class_labels: int | None,
             levels: NoiseLevels) -> tuple[np.ndarray, np.ndarray | None]:
    """Images `chunk` computed in one network batch of exactly `size`, the missing rows filled with
    throw-away samples: every image meets the same kernels whatever the run's batch sizes."""
    generators = image_generators(seed, chunk) + [torch.Generator().manual_seed(0) for _ in range(size - len(chunk))]
    with pipe.progress_bar_off():
        result = pipe(batch_size=size, class_labels=class_labels, **levels.as_dict(), generator=generators,
                      output_type="np")
    labels = None if result.class_labels is None else result.class_labels.cpu().numpy().astype(np.int64)[:len(chunk)]
    return to_uint8(result.images[:len(chunk)]), labels


def sample_batches(
    pipe: ConsistencyModelPipeline,
    indices: Sequence[int],                     # which images, in this order
    batch_size: int,                            # images per yielded batch (a shard)
    seed: int,
    class_labels: int | None = None,
    levels: NoiseLevels = NoiseLevels(),
    compute_batch: int | None = None,           # images per network call (default: batch_size)
) -> Iterator[tuple[list[int], np.ndarray, np.ndarray | None]]:
    """(indices, uint8 NHWC images, int64 labels or None) per batch; image i from its own generator.

    The network always runs on `compute_batch` images (the last call padded), so an image's
    pixels depend on its seed and on `compute_batch`, never on `batch_size` or on where the image
    falls: float rounding in matrix kernels can differ with the batch shape. The pipeline's own
    progress bar is off for these calls (the caller shows one for the whole run)."""
    size = compute_batch or batch_size
    ready: list[int] = []                       # indices computed, not yet yielded
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for start in range(0, len(indices), size):
        chunk = list(indices[start:start + size])
        chunk_images, chunk_labels = _compute(pipe, chunk, size, seed, class_labels, levels)
        ready += chunk
        images.append(chunk_images)
        if chunk_labels is not None:
            labels.append(chunk_labels)
        last = start + size >= len(indices)
        while len(ready) >= batch_size or (last and ready):
            n = min(batch_size, len(ready))
            all_images = np.concatenate(images)
            all_labels = np.concatenate(labels) if labels else None
            yield ready[:n], all_images[:n], None if all_labels is None else all_labels[:n]
            ready, images = ready[n:], [all_images[n:]]
            labels = [] if all_labels is None else [all_labels[n:]]


def model_fingerprint(pipe: ConsistencyModelPipeline) -> dict:
    """What identifies the model for a resume: its config, parametrization, grid and a weight checksum."""
    with torch.no_grad():
        checksum = sum(float(p.double().sum()) for p in pipe.unet.parameters())
    return {"unet": pipe.unet.config.to_dict(), "parametrization": pipe.parametrization,
            "scheduler": dict(pipe.sampling_config), "checksum": f"{checksum:.10e}", "dtype": str(pipe.dtype)}


def _read_record(folder: Path) -> tuple[dict | None, dict | None]:
    """run.json of a shard folder as (the settings, the merge record): (None, None) when it is
    missing or unreadable, the merge record None until a merge wrote it."""
    try:
        record = json.loads((folder / RUN_RECORD).read_text())
    except (OSError, ValueError):
        return None, None
    if not isinstance(record, dict):
        return None, None
    merged = record.pop("merged", None)
    return record, merged if isinstance(merged, dict) else None


def check_run_settings(folder: Path, settings: dict, start_over: bool = False, one_process: bool = True) -> None:
    """Refuse to mix shards made with other settings (`start_over`: remove them instead, as
    --overwrite asks of one process); record the settings for the first run."""
    settings = json.loads(json.dumps(settings))  # tuples → lists, as they read back
    if (folder / RUN_RECORD).is_file():
        previous, _ = _read_record(folder)  # a merged file that was since deleted: its shards merge again
        if previous == settings:
            return
        if not start_over:
            changed = sorted(k for k in settings if not isinstance(previous, dict) or previous.get(k) != settings[k])
            raise InvalidInputError(
                f"out: the shards in {folder} were made with other settings ({', '.join(changed) or 'unreadable'}); "
                "run the same command as before, or " + ("pass --overwrite to start over" if one_process else
                                                         "delete that folder to start over")
            )
        for shard in folder.iterdir():  # only what a run writes is there (`_ours`, checked before)
            if SHARD_NAME.fullmatch(shard.name):
                shard.unlink()
    write_json(folder / RUN_RECORD, settings)


def _check_arguments(num: int, batch_size: int, out: str | os.PathLike) -> Path:
    if not is_integer(num) or not 1 <= num <= MAX_IMAGES:
        raise InvalidInputError(f"num: {num!r} must be a number of images from 1 to {MAX_IMAGES}")
    if not is_integer(batch_size) or batch_size < 1:
        raise InvalidInputError(f"batch_size: {batch_size!r} must be a positive integer")
    path = Path(out)
    if path.suffix.lower() != ".npz":
        raise InvalidInputError(f"out: {str(out)!r} must end in .npz (ADM-style arrays) for sharded generation")
    require_parent_folder(path, "out")
    if path.is_dir():
        raise InvalidInputError(f"out: {out} is a folder; sharded generation writes one .npz file there")
    return path


def generate_samples(
    pipe: ConsistencyModelPipeline,
    num: int,                                   # images in the whole run
    out: str | os.PathLike,                     # the merged .npz
    *,
    batch_size: int = 64,                       # images per network call and per shard
    seed: int = 0,
    class_labels: int | None = None,            # one label for all images; None: drawn per image
    levels: NoiseLevels | None = None,          # the noise levels (default: the model's sampler's)
    compute_batch: int = DEFAULT_COMPUTE_BATCH,  # images per network call: the images depend on it, not on batch_size
    context: DistributedContext | None = None,  # this process's rank (torchrun); None: one process
    progress: bool = True,
    overwrite: bool = True,                     # replace an existing `out` (the CLI passes --overwrite)
    start_over: bool = False,                   # remove shards of other settings (one process; cm's --overwrite)
    **schedule: Any,                            # or num_inference_steps/timesteps/sigmas, as before `levels`
) -> Path | None:
    """Generate images 0 … num−1 (this rank's share), resuming from shards; rank 0 returns the merged file."""
    levels = NoiseLevels.from_keywords(levels, schedule)
    path = _check_arguments(num, batch_size, out)
    if not is_integer(compute_batch) or not 1 <= compute_batch <= 1 << 16:
        raise InvalidInputError(f"compute_batch: {compute_batch!r} must be an integer from 1 to 65536")
    num, batch_size, compute_batch = int(num), int(batch_size), int(compute_batch)  # NumPy integers too
    if not pipe.is_image_model:
        raise InvalidInputError("model: sharded generation writes images; this model makes points")
    pipe.noise_schedule(levels)  # bad noise levels or labels are refused before a file is made
    if class_labels is not None:
        pipe.prepare_class_labels(1, class_labels, None)
    context = context or DistributedContext()
    folder = shard_folder(path)
    settings = {"seed": seed, "class_labels": class_labels, **levels.as_dict(), "compute_batch": compute_batch,
                "model": model_fingerprint(pipe)}
    if path.exists() and _merged_but_not_cleaned(folder, path, settings, num):
        context.barrier()  # every rank has seen the folder before rank 0 removes it
        if context.is_main:
            shutil.rmtree(folder)
            return path
        return None
    refuse_existing(path, overwrite)
    if folder.exists() and not folder.is_dir():
        raise InvalidInputError(f"out: {folder} is a file, but the shards of {out} go into a folder of that name; "
                                "move it away")
    if folder.is_dir() and (stranger := next((p.name for p in sorted(folder.iterdir()) if not _ours(p.name)), None)):
        raise InvalidInputError(f"out: {folder} holds {stranger}, which cm did not write, but the shards of {out} go "
                                "into a folder of that name (removed when they are merged); move it away")
    try:
        folder.mkdir(exist_ok=True)
    except OSError as exc:  # the output's folder is not writable, ...: named as the output, which cannot be made
        raise write_error(exc, path) from exc
    with hold_folder(folder, "cm sample --num", name=f".lock-r{context.rank}"):
        return _generate_locked(pipe, num, path, folder, batch_size, settings, seed, class_labels, levels,
                                context, progress, ShardSpec.of(pipe), start_over, overwrite)


def _ours(name: str) -> bool:
    """Whether a shard folder's entry is one a run writes: shards, the run record, a rank's lock, or
    the temp file of a write in progress (`atomic_path`)."""
    return bool(SHARD_NAME.fullmatch(name) or name == RUN_RECORD or re.fullmatch(r"\.lock-r\d+", name)
                or re.fullmatch(rf"\.(r\d+-\d+\.npz|{re.escape(RUN_RECORD)})\..*{re.escape(TMP_SUFFIX)}", name))


def _merged_but_not_cleaned(folder: Path, out: Path, settings: dict, num: int) -> bool:
    """Whether `out` is the merged file of this very run, killed after publishing it but before
    removing its shards: the record in `folder` names `out`'s SHA-256 and the same settings."""
    record, merged = _read_record(folder)
    return (record == json.loads(json.dumps(settings)) and merged is not None and merged.get("num") == num
            and merged.get("sha256") == file_sha256(out))


def _generate_locked(pipe: ConsistencyModelPipeline, num: int, path: Path, folder: Path, batch_size: int,
                     settings: dict, seed: int,
                     class_labels: int | None, levels: NoiseLevels, context: DistributedContext,
                     progress: bool, spec: ShardSpec, start_over: bool = False,
                     overwrite: bool = True) -> Path | None:
    """generate_samples once this process holds its rank's lock of the shard folder."""
    remove_leftovers(folder, prefix=f"r{context.rank}-")  # this rank's temp files of a killed run
    check_run_settings(folder, settings, start_over=start_over and not context.enabled, one_process=not context.enabled)
    compute_batch = settings["compute_batch"]
    done = existing_indices(folder, spec)
    todo = [i for i in range(context.rank, num, context.world_size) if i not in done]
    bar = tqdm(total=len(todo), unit="img", desc=f"sampling (rank {context.rank})" if context.enabled else "sampling",
               disable=not progress, dynamic_ncols=True)
    with bar:
        for indices, images, labels in sample_batches(pipe, todo, batch_size, seed, class_labels, levels,
                                                      compute_batch):
            arrays = {"images": images, "indices": np.asarray(indices, dtype=np.int64)}
            if labels is not None:
                arrays["labels"] = labels
            write_npz(folder / f"r{context.rank}-{indices[0]:09d}.npz", arrays)
            bar.update(len(indices))
    context.barrier()
    if not context.is_main:
        return None
    remove_leftovers(path.parent, prefix=path.name)  # the temp file of a merge that was killed
    return merge_shards(folder, num, path, spec, replace=overwrite)


def merge_shards(folder: Path, num: int, out: Path, spec: ShardSpec | None = None, replace: bool = True) -> Path:
    """Write images 0 … num−1 from the shards in index order into `out`, then delete the shards
    (`replace` False: a file another process wrote at `out` meanwhile is kept, the merge refused).

    Every shard is checked against `spec` (the run's layout; None: the first shard's) and a damaged
    one is removed, so a rerun makes its images again."""
    shards = _shards(folder, images=True, spec=spec)  # every shard read once
    done = {int(i) for shard in shards for i in shard["indices"] if i < num}
    if len(done) < num:
        raise InvalidInputError(
            f"out: {num - len(done)} of {num} images are missing from {folder}; run the same command again"
        )
    images: np.ndarray | None = None
    labels: np.ndarray | None = None
    for shard in shards:
        keep = shard["indices"] < num
        idx = shard["indices"][keep]
        if images is None:
            images = np.zeros((num, *shard["images"].shape[1:]), dtype=np.uint8)
            labels = np.zeros(num, dtype=np.int64) if "labels" in shard else None
        images[idx] = shard["images"][keep]  # every shard has the spec's image shape and labels or none
        if labels is not None:
            labels[idx] = shard["labels"][keep]
    arrays = {"arr_0": images} if labels is None else {"arr_0": images, "arr_1": labels}
    with atomic_path(out, replace=replace, argument="out") as tmp:  # ADM's layout, as save_images writes it
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        record, _ = _read_record(folder)  # a kill after the rename below is then recognised
        write_json(folder / RUN_RECORD, {**record, "merged": {"num": num, "sha256": file_sha256(tmp)}})
    shutil.rmtree(folder)
    return out
