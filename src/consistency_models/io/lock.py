"""A folder that one process at a time may write: an advisory lock on `FOLDER/.lock`.

`hold_folder(folder, what)` takes an exclusive `flock` on the lock file (created if needed) and
writes this process's id into it; a second process gets a one-line error naming the holder.
The operating system drops the lock when its process ends, however it ends (SIGKILL included),
so a killed run never leaves a stale lock. Where `fcntl` does not exist (Windows) nothing is
locked.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import InvalidInputError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOCK_NAME = ".lock"


@contextmanager
def hold_folder(folder: str | os.PathLike, what: str, argument: str = "out", name: str = LOCK_NAME) -> Iterator[Path]:
    """Hold the lock `folder/name` (the folder must exist) for the duration of the block."""
    path = Path(folder) / name
    if fcntl is None:  # pragma: no cover
        yield path
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise InvalidInputError(
                f"{argument}: {folder} is in use by another {what} (process {holder}); wait for it to end "
                "or choose another folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the lock
