"""The run folder of `cm train`: what may be trained into, and by whom.

- A new run needs a folder that is absent or empty — or a folder of a run that never reached
  its first checkpoint (its own files, nothing else, are replaced).
- `--resume` needs a run folder: one holding `train_config.json` (written by `cm train`);
  another non-empty folder — a model folder, say — is refused instead of trained into.
- The folder may not be one of the run's inputs (`--data`, `--teacher`, `--init-from`).
- One process at a time: the folder is locked while a run writes it (`io/lock.py`).
- Inputs given as local paths are recorded absolute (`absolute_inputs`): a resume started from
  another folder (a requeued job's) reads the same files, not whatever the relative name finds there.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TypeVar

from ..data import is_named_set
from ..errors import InvalidInputError
from ..io.diffusers_format import read_json
from ..io.hub import is_embedded, refuse_embedded_folder
from ..io.lock import LOCK_NAME
from ..io.overwrite import refuse_input_as_output, require_parent_folder
from .checkpoint import list_checkpoints
from .settings import RunSettings

Settings = TypeVar("Settings", bound=RunSettings)

CONFIG_NAME = "train_config.json"
INPUT_PATHS = ("data", "teacher", "init_from", "lpips_vgg", "lpips_lin")  # settings naming files or folders read


def absolute_paths(settings: dict) -> dict:
    """Flat settings with each input that names an existing local file or folder made absolute;
    other values — digits, toy:mog8, a Hub id — as they are, and so is a name that the loaders take
    for a built-in even where a local entry of that name exists: a data set's name (always), an
    embedded model's (unless the folder holds a model, `io.hub.is_embedded`). For comparing a
    run's settings with a resume's too, where older runs recorded paths as typed."""
    def local(key: str, value: object) -> bool:
        if key not in INPUT_PATHS or not isinstance(value, str) or not value or not Path(value).exists():
            return False
        return not (is_named_set(value) if key == "data" else is_embedded(value))

    return {k: str(Path(v).resolve()) if local(k, v) else v for k, v in settings.items()}


def absolute_inputs(cfg: Settings) -> Settings:
    """A copy of `cfg` whose local input paths are absolute, as the run then records them."""
    cfg = copy.deepcopy(cfg)
    for holder in (cfg, cfg.options):
        for name, value in absolute_paths({k: getattr(holder, k) for k in INPUT_PATHS if hasattr(holder, k)}).items():
            setattr(holder, name, value)
    return cfg


def check_run_folder(out: Path, resume: bool, inputs: dict[str, str | None]) -> None:
    """Refuse a folder a run must not write (one line naming it and what to do)."""
    if str(out) in ("", "."):
        raise InvalidInputError(f"out: {str(out)!r} is not a run folder name; give a new folder, e.g. --out my-run")
    require_parent_folder(out, "out")
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"out: {out} is a file; give a folder")
    refuse_input_as_output(out, "out", inputs)
    refuse_embedded_folder("out", out)
    is_run = (out / CONFIG_NAME).is_file()
    has_checkpoint = bool(list_checkpoints(out))
    others = out.is_dir() and any(p.name != LOCK_NAME for p in out.iterdir())
    if resume and others and not is_run:
        raise InvalidInputError(f"out: {out} is not a run folder of cm train (no {CONFIG_NAME}); --resume continues "
                                "a run in the folder it was started in")
    if not resume and has_checkpoint:
        raise InvalidInputError(f"out: {out} already holds a run; pass --resume to continue it or choose a new folder")
    if not resume and others and not is_run:
        raise InvalidInputError(f"out: {out} exists and is not empty; choose a new folder")


def saved_settings(out: str | Path) -> dict | None:
    """The flat settings a run folder's train_config.json records (None: no such file, e.g. a run not
    yet started); a damaged file is a one-line error."""
    path = Path(out) / CONFIG_NAME
    return read_json(path, "resume") if path.is_file() else None
