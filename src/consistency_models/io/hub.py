"""Resolve a model argument to a local pipeline folder: a path, or a Hugging Face Hub id."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError, first_line

# Models shipped inside the package (src/consistency_models/weights/NAME), by name.
EMBEDDED = {
    "digits": "digits",                  # the default model: a consistency model of 16-px digits
    "digits-teacher": "digits-teacher",  # its EDM teacher (a diffusion denoiser)
    "digits-teacher-trigflow": "digits-teacher-trigflow",  # a TrigFlow diffusion teacher (time input t): sCD's
    "digits-color": "digits-color",      # RGB digits of random hue (fine-tuned from the above): for colorization
}
DEFAULT_MODEL = "digits"
COLOR_MODEL = "digits-color"  # the default of `cm edit colorize` (colorization needs an RGB model)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_PATTERNS = ["model_index.json", "unet/*.json", "unet/*.safetensors", "scheduler/*.json"]  # unet/*.json: config, shard index


def is_embedded(name: str | os.PathLike | None) -> bool:
    """Whether `name` means an embedded model: its name, unless a pipeline folder of that name is
    here (a folder of one's own samples called `digits/` does not hide the embedded model)."""
    return name is not None and str(name) in EMBEDDED and not (Path(name) / "model_index.json").is_file()


def shadowing_note(name: str | os.PathLike | None, argument: str = "model") -> str | None:
    """A line to say when a pipeline folder here hides the embedded model of the same name."""
    if name is None or str(name) not in EMBEDDED or is_embedded(name):
        return None
    return (f"{argument}: {name} is the folder ./{name} here, not the embedded model of that name "
            "(run elsewhere for the embedded one)")


def embedded_root() -> Path:
    """The package folder that holds the embedded models."""
    return Path(__file__).resolve().parent.parent / "weights"


def embedded_folder(name: str) -> Path:
    """The folder of the embedded model `name`, whatever the working folder holds."""
    return embedded_root() / EMBEDDED[name]


def refuse_embedded_folder(argument: str, path: str | os.PathLike) -> None:
    """Writing into the package's shipped models would change them for every later run: refused."""
    root = embedded_root()
    if Path(path).resolve().is_relative_to(root):
        raise InvalidInputError(f"{argument}: {path} is inside the package's shipped models ({root}); "
                                "write to a folder of your own")


# huggingface_hub.snapshot_download's options that diffusers' from_pretrained passes on.
DOWNLOAD_OPTIONS = ("revision", "cache_dir", "token", "local_files_only", "force_download", "proxies")


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE turns the Hub off (huggingface_hub's own reading of it)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve_model_path(name: str | os.PathLike, use_safetensors: bool | None = None,
                       allow_patterns: list[str] | None = None, **download: Any) -> Path:
    """An embedded model name ("digits"), a local folder, or an `owner/name` Hub id (fetched when
    online: the weights `use_safetensors` asks for — None: .safetensors, else .bin — or only the
    files `allow_patterns` names, e.g. a scheduler's config; `download`: `DOWNLOAD_OPTIONS` for
    huggingface_hub, e.g. revision="main", local_files_only=True; a local folder or embedded model
    reads none of them)."""
    if not isinstance(name, (str, os.PathLike)) or not os.fspath(name).strip():
        raise InvalidInputError(f"model: {name!r} is not allowed; give a pipeline folder, an embedded model's name "
                                f"({', '.join(EMBEDDED)}) or a Hub id like owner/name")
    unknown = sorted(set(download) - set(DOWNLOAD_OPTIONS))
    if unknown:
        raise TypeError(f"from_pretrained() got an unexpected keyword argument {unknown[0]!r} "
                        f"(download options: {', '.join(DOWNLOAD_OPTIONS)})")
    path = Path(name)
    if is_embedded(name):
        folder = embedded_root() / EMBEDDED[str(name)]
        if not (folder / "model_index.json").is_file():
            raise InvalidInputError(f"model: the embedded model {name!r} is missing from this installation ({folder})")
        return folder
    if path.exists():
        if not path.is_dir():
            raise InvalidInputError(f"model: {path} is a file; give a pipeline folder (model_index.json, unet/, scheduler/)")
        return path
    text = str(name)
    if not _HUB_ID.match(text):
        raise InvalidInputError(f"model: no such folder {text!r}, and it is neither a Hub id like owner/name nor an "
                                f"embedded model ({', '.join(EMBEDDED)})")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise InvalidInputError(
            f"model: {text!r} looks like a Hub id, but huggingface_hub is not installed; "
            "pip install 'consistency-models[hub]', or pass a local folder"
        ) from None
    options = {**download, "local_files_only": bool(download.get("local_files_only")) or hub_offline()}
    bin_patterns = [*(p for p in _PATTERNS if not p.endswith(".safetensors")), "unet/*.bin"]
    try:
        if allow_patterns is not None:
            return Path(snapshot_download(text, allow_patterns=allow_patterns, **options))
        folder = Path(snapshot_download(text, allow_patterns=bin_patterns if use_safetensors is False else _PATTERNS,
                                        **options))
        if use_safetensors is None and not any((folder / "unet").glob("*.safetensors")):  # older repos: only .bin
            folder = Path(snapshot_download(text, allow_patterns=bin_patterns, **options))
        return folder
    except Exception as exc:  # network, auth, offline mode, missing repo: all end the same way
        reason = first_line(exc, 200) or type(exc).__name__
        raise InvalidInputError(
            f"model: could not fetch Hub id {text!r} ({reason}); when offline, pass a local folder "
            "written by save_pretrained or `cm convert` instead"
        ) from None
