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
