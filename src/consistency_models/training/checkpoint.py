"""Training checkpoints that lose nothing: atomic writes, keep-last-K, resume from the newest good one.

Layout: `run_dir/checkpoints/ckpt-{step:08d}.pt`, one `torch.save` file per step. A file is
written to a temp file in the same folder, flushed and fsynced, renamed into place and the
folder fsynced, so a crash leaves either the old set of checkpoints or the new one, never a
half-written `ckpt-*.pt`. Temp files (`*.tmp`) left by a killed run are removed by the next save.

Checkpoints are read with `torch.load(weights_only=True)` only, so loading never runs pickled
code. The `state` saved must therefore hold only tensors (and `nn.Parameter`), dicts
(`OrderedDict` too), lists, tuples, and `int`, `float`, `str`, `bool`, `None` — exactly those
types, not subclasses such as numpy scalars. Model and optimizer `state_dict()`s, the output
of `capture_rng_state` and plain step counters qualify; `save_checkpoint` refuses anything else
before it writes, so a run never produces a checkpoint it cannot resume from.
"""

from __future__ import annotations

import errno
import os
import pickle
import random
import re
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..errors import InvalidInputError
from ..io.atomic import TMP_SUFFIX, atomic_path, fsync_dir

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^ckpt-(\d{8,})\.pt$")
_LEAVES = (int, float, str, bool, type(None))
_CONTAINERS = (dict, OrderedDict, list, tuple)
_TENSORS = (torch.Tensor, torch.nn.Parameter)
_ALLOWED = "tensors, dicts, lists, tuples, int, float, str, bool, None"


def checkpoint_path(run_dir: str | os.PathLike, step: int) -> Path:
    """Where the checkpoint of `step` lives: `run_dir/checkpoints/ckpt-{step:08d}.pt`."""
    return Path(run_dir) / CHECKPOINT_DIR / f"ckpt-{step:08d}.pt"


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of every `ckpt-*.pt` in the run, ascending by step; the files are not opened."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _NAME.match(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def save_checkpoint(run_dir: str | os.PathLike, step: int, state: dict, keep: int = 3) -> Path:
    """Write `state` atomically as the checkpoint of `step`, keep the newest `keep`; returns its path.

    Older checkpoints beyond the newest `keep` (by step) are deleted, never the one just
    written. See the module docstring for the types `state` may hold.
    """
    if type(step) is not int or step < 0:
        raise InvalidInputError(f"step: {step!r} is not allowed; give an int >= 0")
    if type(keep) is not int or keep < 1:
        raise InvalidInputError(f"keep: {keep!r} is not allowed; give an int >= 1")
    if type(state) not in (dict, OrderedDict):
        raise InvalidInputError(f"state: a {type(state).__name__} was given; give a dict")
    _check_loadable(state, "state")

    path = checkpoint_path(run_dir, step)
    folder = path.parent
    created = not folder.is_dir()
    folder.mkdir(parents=True, exist_ok=True)
    if created:
        fsync_dir(folder.parent)
    _remove_temp_files(folder)

    newer = [s for s, _ in list_checkpoints(run_dir) if s > step]
    if newer:
        warnings.warn(
            f"saving step {step} in {folder}, which already holds newer checkpoints (steps {newer}); "
            "latest_checkpoint will return those",
            RuntimeWarning,
            stacklevel=2,
        )

    with atomic_path(path, fsync=True) as tmp:
        try:
            torch.save(state, tmp)
        except RuntimeError as exc:  # torch reports a failed write (a full disk, say) as a RuntimeError
            full = os.statvfs(folder).f_bavail == 0 if hasattr(os, "statvfs") else False
            raise OSError(errno.ENOSPC if full else errno.EIO,
                          os.strerror(errno.ENOSPC) if full else f"could not write the checkpoint ({exc})",
                          str(path)) from None

    _prune(run_dir, keep, written=path)
    return path


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of the run, or None if there is none.

    Each candidate, newest step first, is fully loaded (weights_only); a truncated or corrupt
    file is skipped with a warning and the previous one is tried. Temp files are ignored.
    """
    for step, path in reversed(list_checkpoints(run_dir)):
        try:
            load_checkpoint(path)
        except InvalidInputError as exc:
            warnings.warn(f"skipping checkpoint of step {step}: {exc}", RuntimeWarning, stacklevel=2)
            continue
        return path
    return None


def load_checkpoint(path: str | os.PathLike) -> dict:
    """The state saved in `path`, on the CPU, read with weights_only=True (no pickled code runs)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"checkpoint: no such file {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if not found:  # random bytes, not a pickle that asks for code
            raise InvalidInputError(f"checkpoint: corrupt or truncated file {path}: not a checkpoint") from None
        raise InvalidInputError(
            f"checkpoint: {path} needs pickle code execution to load, which is refused (it references "
            f"{found.group(1)}); checkpoints hold only {_ALLOWED}"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        reason = (str(exc).splitlines() or [""])[0] or type(exc).__name__
        raise InvalidInputError(f"checkpoint: corrupt or truncated file {path}: {reason}") from None
    if not isinstance(state, dict):
        raise InvalidInputError(f"checkpoint: {path} holds a {type(state).__name__}, not a dict")
    return state


def capture_rng_state(generators: Mapping[str, torch.Generator] | None = None) -> dict:
    """Every random state a run depends on, in types that weights_only loading accepts.

    torch's global CPU RNG, the CUDA RNG of every device (when CUDA is available), python's
    `random`, numpy's global RNG, and the state of each named `torch.Generator`.
    """
    version, internal, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": {
            "version": int(version),
            "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
        "numpy": {
            "bit_generator": str(name),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "generators": {key: gen.get_state() for key, gen in (generators or {}).items()},
    }


def restore_rng_state(state: Mapping[str, Any], generators: Mapping[str, torch.Generator] | None = None) -> None:
    """Put back the random states of `capture_rng_state`, so the next draws repeat the saved run.

    Every name in `generators` must have a saved state. CUDA states are restored on as many
    devices as both runs have, with a warning when the device counts differ.
    """
    missing = [k for k in ("torch", "cuda", "python", "numpy", "generators") if k not in state]
    if missing:
        raise InvalidInputError(f"state: missing RNG entries {missing}; give the dict of capture_rng_state")
    saved_gens = state["generators"]
    for key in generators or {}:
        if key not in saved_gens:
            raise InvalidInputError(f"generators: {key!r} has no saved state; saved: {sorted(saved_gens)}")

    torch.set_rng_state(state["torch"])
    cuda_states = list(state["cuda"])
    if cuda_states:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count != len(cuda_states):
            warnings.warn(
                f"the checkpoint has CUDA RNG states of {len(cuda_states)} devices, this run has {count}; "
                f"restoring the first {min(count, len(cuda_states))}",
                RuntimeWarning,
                stacklevel=2,
            )
        for device, cuda_state in enumerate(cuda_states[:count]):
            torch.cuda.set_rng_state(cuda_state, device)

    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss_next"]))
    npy = state["numpy"]
    np.random.set_state(
        (
            npy["bit_generator"],
            npy["keys"].numpy().astype(np.uint32),
            npy["pos"],
            npy["has_gauss"],
            npy["cached_gaussian"],
        )
    )
    for key, gen in (generators or {}).items():
        gen.set_state(saved_gens[key])


def _check_loadable(value: Any, where: str) -> None:
    """Refuse, naming where it sits, any value that weights_only loading would reject."""
    kind = type(value)
    if kind in _LEAVES or kind in _TENSORS:
        return
    if kind in (dict, OrderedDict):
        for key, item in value.items():
            if type(key) not in _LEAVES:
                raise InvalidInputError(
                    f"{where}: key {key!r} of type {type(key).__name__} is not allowed in a checkpoint; "
                    "keys must be int, float, str, bool or None"
                )
            _check_loadable(item, f"{where}[{key!r}]")
        return
    if kind in (list, tuple):
        for index, item in enumerate(value):
            _check_loadable(item, f"{where}[{index}]")
        return
    raise InvalidInputError(
        f"{where}: a {kind.__module__}.{kind.__qualname__} is not allowed in a checkpoint; allowed: {_ALLOWED}"
    )


def _remove_temp_files(folder: Path) -> None:
    """Delete the temp files a killed save left behind."""
    for path in folder.iterdir():
        if path.name.endswith(TMP_SUFFIX) and path.is_file():
            path.unlink(missing_ok=True)


def _prune(run_dir: str | os.PathLike, keep: int, written: Path) -> None:
    """Delete checkpoints beyond the newest `keep` by step, never `written`."""
    for _, path in list_checkpoints(run_dir)[:-keep]:
        if path != written:
            path.unlink(missing_ok=True)
