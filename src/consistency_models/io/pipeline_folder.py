"""A diffusers pipeline folder as a whole: the on-disk format of every model of this package.

    model_index.json                          names the components (and our `_parametrization`)
    unet/config.json, unet/*.safetensors      the network (`diffusers_format.py`; *.bin for safe_serialization=False;
                                              shards and their index past max_shard_size, `shards.py`)
    scheduler/scheduler_config.json           a `CMStochasticIterativeScheduler` config, or for a TrigFlow
                                              model diffusers' `SCMScheduler` config (our σ range in
                                              `_`-keys, which diffusers' config loader skips), or for a
                                              kind diffusers cannot sample (MeanFlow) our settings under
                                              its own class name, with a `_note` saying so

`load_pipeline_folder` and `save_pipeline_folder` read and write the three parts without
building a pipeline, so training exports and converters write folders from their parts.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import InvalidInputError
from ..kinds import (
    KINDS,
    ModelKind,
    TRIGFLOW_SCHEDULER_CLASS,
    default_kind,
    get_kind,
    kind_of_scheduler,
    kinds_of_scheduler,
)
from ..schedule import SchedulerConfig
from .atomic import write_json
from .diffusers_format import DIFFUSERS_VERSION, load_network, read_json, save_network, weights_suffix
from .hub import refuse_embedded_folder, resolve_model_path
from .lock import hold_folder
from .overwrite import PARTIAL_PREFIX, filled_in_place, replaced_folder, require_parent_folder
from .shards import DEFAULT_MAX_SHARD_SIZE, max_shard_bytes

NOTHING = r"(?!)"  # a pattern no file name matches

MODEL_INDEX = "model_index.json"
TRIGFLOW_PREDICTION = "trigflow"  # the only prediction_type of diffusers' SCMScheduler
PIPELINE_CLASS = "ConsistencyModelPipeline"
SCHEDULER_CONFIG = "scheduler_config.json"


@dataclass
class PipelineParts:
    """What a pipeline folder holds: the network, its sampling settings and its parametrization."""

    network: nn.Module
    scheduler_config: SchedulerConfig
    parametrization: str = "consistency"   # the model's kind (kinds/): "consistency" (f), "edm" (D), "trigflow", …

    def __post_init__(self) -> None:
        get_kind(self.parametrization)  # a one-line error for an unknown kind


def read_scheduler_config(folder: str | os.PathLike) -> SchedulerConfig:
    """`folder/scheduler_config.json` (diffusers' keys beside ours are ignored); an `SCMScheduler`
    config gives σ_data and the σ range kept in its `_sigma_min`/`_sigma_max` keys."""
    path = Path(folder) / SCHEDULER_CONFIG
    data = read_json(path, "scheduler")
    try:
        if data.get("_class_name") == TRIGFLOW_SCHEDULER_CLASS:
            return trigflow_settings(data)
        return SchedulerConfig.from_dict(data)
    except InvalidInputError as exc:
        raise InvalidInputError(f"scheduler: {path}: {exc}") from None


def trigflow_settings(data: dict) -> SchedulerConfig:
    """Our sampling settings from an `SCMScheduler` config (no clipping unless it says so)."""
    if data.get("prediction_type", TRIGFLOW_PREDICTION) != TRIGFLOW_PREDICTION:
        raise InvalidInputError(f"prediction_type: {data['prediction_type']!r} is not allowed; use "
                                f"{TRIGFLOW_PREDICTION!r}")
    defaults = SchedulerConfig()
    return SchedulerConfig(sigma_data=data.get("sigma_data", defaults.sigma_data),
                           sigma_min=data.get("_sigma_min", defaults.sigma_min),
                           sigma_max=data.get("_sigma_max", defaults.sigma_max),
                           clip_denoised=data.get("_clip_denoised", False))


def write_scheduler_config(folder: str | os.PathLike, config: SchedulerConfig, parametrization: str = "consistency"
                           ) -> None:
    """A `CMStochasticIterativeScheduler` config, or an `SCMScheduler` one for a TrigFlow model."""
    folder = Path(folder)
    for above in (folder, *folder.parents):
        if above.exists() and not above.is_dir():
            raise InvalidInputError(f"save_directory: {above} is a file; give a folder (the config is written into it "
                                    f"as {SCHEDULER_CONFIG})")
    folder.mkdir(parents=True, exist_ok=True)
    kind = get_kind(parametrization)
    if kind.scheduler_library != "diffusers":
        data = {"_class_name": kind.scheduler_class, "_note": f"diffusers has no scheduler for {kind.summary}; "
                "sample it with consistency_models (cm sample, or its ConsistencyModelPipeline)", **config}
    elif kind.scheduler_class == TRIGFLOW_SCHEDULER_CLASS:
        data = {"_class_name": TRIGFLOW_SCHEDULER_CLASS, "_diffusers_version": DIFFUSERS_VERSION,
                "num_train_timesteps": 1000, "prediction_type": TRIGFLOW_PREDICTION, "sigma_data": config.sigma_data,
                "_sigma_min": config.sigma_min, "_sigma_max": config.sigma_max,
                "_clip_denoised": config.clip_denoised}
    else:
        data = {"_class_name": kind.scheduler_class, **config}
    write_json(folder / SCHEDULER_CONFIG, data)


def require_new_folder(path: str | os.PathLike, what: str) -> Path:
    """`path` as a folder to create: its parent must exist and it must be absent or empty."""
    if not os.fspath(path).strip():
        raise InvalidInputError(f"{what}: {os.fspath(path)!r} is empty; give the new folder to write, e.g. my-model")
    path = require_parent_folder(path, what)
    if path.exists() and not path.is_dir():
        raise InvalidInputError(f"{what}: {path} is a file; give a new folder")
    if path.exists() and any(not p.name.startswith(PARTIAL_PREFIX) for p in path.iterdir()):
        raise InvalidInputError(f"{what}: {path} already exists and is not an empty folder; choose a new one")
    return path


@contextmanager
def new_folder(path: str | os.PathLike, what: str) -> Iterator[Path]:
    """A folder to write `path`'s contents into (`require_new_folder`). An absent `path` is written
    as a temporary folder renamed at the end; an existing empty one (a folder made for it, a mount
    point, a link, the current folder), which must stay where it is, is filled through a hidden
    folder inside it, under a lock (`filled_in_place`). Either way an interrupted write leaves
    nothing that blocks the same command again."""
    target = require_new_folder(path, what)
    refuse_embedded_folder(what, target)
    if not target.exists():
        with replaced_folder(target, NOTHING, what, replace=False) as fresh:   # never over a folder made meanwhile
            yield fresh
        return
    lock = f"{PARTIAL_PREFIX}lock"
    with hold_folder(target, "writer of a model folder", argument=what, name=lock) as held:
        for stale in target.glob(f"{PARTIAL_PREFIX}*.tmp"):  # a killed write's: no writer holds the lock
            shutil.rmtree(stale, ignore_errors=True)
        try:
            require_new_folder(target, what)                 # still empty now that it is ours
            with filled_in_place(target, MODEL_INDEX) as fresh:
                yield fresh
        finally:
            held.unlink(missing_ok=True)


def read_model_index(folder: Path) -> dict:
    """model_index.json, checked to name a UNet and the scheduler of a model kind."""
    index = read_json(folder / MODEL_INDEX, "model")
    schedulers = tuple(dict.fromkeys(kind.scheduler_class for kind in KINDS.values()))
    for part, classes in (("unet", ("UNet2DModel",)), ("scheduler", schedulers)):
        if part not in index:
            raise InvalidInputError(f"model: {folder / MODEL_INDEX} names no {part!r} component")
        entry = index[part]
        if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(e, str) for e in entry)
                and entry[1] in classes):
            raise InvalidInputError(f"model: {folder / MODEL_INDEX} gives {part} = {entry!r}; this package reads "
                                    f'["diffusers", "{classes[0]}"]')
    return index


def model_index(parametrization: str) -> dict[str, Any]:
    """The model_index.json of a pipeline folder of this model kind."""
    index = {
        "_class_name": PIPELINE_CLASS,
        "_diffusers_version": DIFFUSERS_VERSION,
        "unet": ["diffusers", "UNet2DModel"],
        "scheduler": [get_kind(parametrization).scheduler_library, get_kind(parametrization).scheduler_class],
    }
    if get_kind(parametrization) is not default_kind():
        index["_parametrization"] = parametrization
    return index


def write_model_index(folder: Path, parametrization: str) -> None:
    write_json(folder / MODEL_INDEX, model_index(parametrization))


def load_pipeline_folder(path_or_id: str | os.PathLike, variant: str | None = None,
                         use_safetensors: bool | None = None, network: nn.Module | None = None,
                         draw_initial_weights: bool = False, **download: Any) -> PipelineParts:
    """The parts of a pipeline folder, an embedded model's name or a Hub id (when online; `download`:
    huggingface_hub's options, `hub.DOWNLOAD_OPTIONS`); `variant` picks
    `unet/diffusion_pytorch_model.<variant>.safetensors`, `use_safetensors` the format
    (`load_network`, as `draw_initial_weights`); a given `network` is taken instead of the
    folder's (no weights read)."""
    folder = resolve_model_path(path_or_id, use_safetensors, **download)
    kind = folder_kind(folder)
    if network is None:
        network = load_network(folder / "unet", variant, use_safetensors, draw_initial_weights)
    return PipelineParts(network, read_scheduler_config(folder / "scheduler"), kind.name)


def folder_kind(path_or_id: str | os.PathLike) -> ModelKind:
    """The kind of model a pipeline folder holds, from its model_index.json alone (no weights read)."""
    folder = resolve_model_path(path_or_id)
    index = read_model_index(folder)
    scheduler_class = index["scheduler"][1]
    parametrization = index.get("_parametrization", kind_of_scheduler(scheduler_class).name)
    try:
        kind = get_kind(parametrization)
    except InvalidInputError as exc:
        raise InvalidInputError(f"{exc} (in {folder / MODEL_INDEX})") from None
    if kind.scheduler_class != scheduler_class:
        allowed = " or ".join(repr(name) for name in kinds_of_scheduler(scheduler_class))
        raise InvalidInputError(f"model: {folder / MODEL_INDEX} pairs the {scheduler_class} scheduler with the "
                                f"{parametrization!r} parametrization; {scheduler_class} goes with {allowed} only")
    return kind


def save_pipeline_folder(path: str | os.PathLike, parts: PipelineParts, variant: str | None = None,
                         safe_serialization: bool = True, max_shard_size: int | str | None = DEFAULT_MAX_SHARD_SIZE) -> Path:
    """Write a folder that diffusers' `ConsistencyModelPipeline.from_pretrained` loads (each file
    atomically); `variant` names the weights file as diffusers does (…/diffusion_pytorch_model.fp16.safetensors),
    `safe_serialization=False` writes them as diffusers does then: a torch.save state dict (….bin);
    weights over `max_shard_size` are sharded with an index, as diffusers shards them (`shards.py`)."""
    weights_suffix(safe_serialization)  # one-line errors before anything is written
    max_shard_bytes(max_shard_size)
    if not str(path).strip():
        raise InvalidInputError("path: '' is empty; give the folder to write")
    folder = require_parent_folder(path, "path")
    if folder.exists() and not folder.is_dir():
        raise InvalidInputError(f"path: {folder} is a file; give a folder to write the pipeline into")
    if variant is not None and (not isinstance(variant, str) or not variant or "/" in variant or "\\" in variant
                                or variant.startswith(".")):
        raise InvalidInputError(f"variant: {variant!r} is not allowed; use a name such as fp16")
    refuse_embedded_folder("path", folder)
    folder.mkdir(exist_ok=True)
    save_network(parts.network, folder / "unet", variant, safe_serialization, max_shard_size)
    write_scheduler_config(folder / "scheduler", parts.scheduler_config, parts.parametrization)
    write_model_index(folder, parts.parametrization)
    return folder
