"""Outputs never overwrite the inputs they were computed from."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InvalidInputError


def refuse_input_as_output(out: str | os.PathLike | None, argument: str,
                           inputs: dict[str, str | os.PathLike | None]) -> None:
    """A one-line error when the output path `out` is one of `inputs` (the same file or folder,
    however spelled); `inputs` maps option names to paths (None and non-paths are skipped)."""
    if out is None:
        return
    target = Path(out).resolve()
    for name, path in inputs.items():
        if path is not None and Path(path).exists() and Path(path).resolve() == target:
            raise InvalidInputError(f"{argument}: {out} is the --{name.replace('_', '-')} input; "
                                    "write the result elsewhere")


def refuse_existing(path: str | os.PathLike | None, overwrite: bool, argument: str = "out") -> None:
    """One policy for every output: an existing file (or a non-empty folder) is replaced only when
    the user says so (`--overwrite`)."""
    if path is None or overwrite:
        return
    target = Path(path)
    if target.is_dir():
        if any(target.iterdir()):
            raise InvalidInputError(f"{argument}: the folder {path} is not empty; pass --overwrite to write into it")
    elif target.exists():
        raise InvalidInputError(f"{argument}: {path} exists; pass --overwrite to replace it")
