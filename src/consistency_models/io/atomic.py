"""Write files so that a reader never sees a half-written one: temp file, then rename.

When the OS refuses a write (a folder that is not writable, a folder standing where the file
should be, a full disk), the error names the file the caller asked for, never the hidden temp
file, and the temp file is removed.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import InvalidInputError

TMP_SUFFIX = ".tmp"

# The OS refusing the place itself: the user must choose another path (InvalidInputError, `cm` exit 2).
_PLACE_ERRORS = {
    errno.EACCES: "the folder {parent} must be writable",
    errno.EPERM: "the folder {parent} must be writable",
    errno.EROFS: "{parent} is on a read-only file system",
    errno.EISDIR: "a folder stands there; give a file name or remove that folder",
    errno.ENOTDIR: "a part of the path is not a folder",
    errno.ENAMETOOLONG: "the name is too long for this file system",
}
# Failed writes that report no file name (a write to an open file): theirs is the temp file's.
_WRITE_ERRORS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG, errno.EIO, errno.EROFS}


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new entry in `folder` durable (a no-op where folders cannot be opened)."""
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_temp_name(name: object, path: Path) -> bool:
    """Whether an OSError's file name is a temp file of `path` (made by `atomic_path`)."""
    if name is None:
        return False
    name = Path(os.path.abspath(os.fsdecode(name)))  # mkstemp's names are absolute from Python 3.12 on
    return (name.parent == Path(os.path.abspath(path)).parent and name.name.startswith(f".{path.name}.")
            and name.name.endswith(TMP_SUFFIX))


def _about_temp_file(exc: OSError, path: Path) -> bool:
    """Whether `exc` is the OS refusing to write the temp file of `path` (so it must name `path`)."""
    if _is_temp_name(exc.filename, path) or _is_temp_name(exc.filename2, path):
        return True
    return exc.filename is None and exc.errno in _WRITE_ERRORS


def write_error(exc: OSError, path: Path) -> Exception:
    """The error to raise for `exc`, the OS refusing to write `path` (or its temp file): one line
    naming `path`. A place that cannot hold the file (permissions, a folder in the way, a read-only
    file system) is InvalidInputError; anything else (a full disk, an I/O error) stays an OSError."""
    reason = exc.strerror or type(exc).__name__
    hint = _PLACE_ERRORS.get(exc.errno)
    if hint is not None:
        return InvalidInputError(f"{path}: cannot write it ({reason}); {hint.format(parent=path.parent)}")
    return OSError(exc.errno, f"cannot write it: {reason}", str(path))


def appeared_meanwhile(path: Path, argument: str) -> InvalidInputError:
    """The error of an output that another process wrote while this one ran (no --overwrite)."""
    return InvalidInputError(f"{argument}: {path} was written by another process while this one ran; it is kept "
                             "(give another name, or --overwrite to replace it)")


def commit_new(tmp: Path, path: Path, argument: str) -> None:
    """Move the finished `tmp` to `path` only where nothing stands there now: a hard link fails if
    `path` exists (so two writers cannot both win), then the temp name goes. Where the file system
    has no hard links, an existence check then a rename (a narrow race instead of none)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise appeared_meanwhile(path, argument) from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.EXDEV, errno.ENOSYS):
            raise
        if path.exists() or path.is_symlink():
            raise appeared_meanwhile(path, argument) from None
        os.replace(tmp, path)
        return
    tmp.unlink()


def current_umask() -> int:
    """The process's umask (read by setting and restoring it): temp files and folders, made private
    by `tempfile`, get the permissions a plain `open` or `mkdir` would have given them."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


@contextmanager
def atomic_path(path: str | os.PathLike, fsync: bool = False, replace: bool = True,
                argument: str = "path") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename.

    With `fsync`, the file's data and the folder entry reach the disk before returning, so a
    power loss or SIGKILL leaves either the old file or the complete new one. An OS error about
    the temp file is raised naming `path` (see `write_error`); the temp file never stays behind.
    With `replace` False, a file that appeared at `path` meanwhile (another process's output) is
    kept and the write refused, naming `argument` (`commit_new`).
    """
    path = Path(path)
    if path.is_dir():
        raise write_error(IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR)), path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    except OSError as exc:  # the folder is missing, not writable, read-only, full, ...
        raise write_error(exc, path) from exc
    os.close(fd)
    tmp_path = Path(tmp)
    umask = current_umask()
    try:
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~umask)  # again: a writer may have replaced the file (safetensors does)
        if fsync:
            with open(tmp_path, "rb+") as f:
                os.fsync(f.fileno())
        if replace:
            os.replace(tmp_path, path)
        else:
            commit_new(tmp_path, path, argument)
        if fsync:
            fsync_dir(path.parent)
    except OSError as exc:
        if _about_temp_file(exc, path):
            raise write_error(exc, path) from exc
        raise
    finally:
        if tmp_path.is_file() or tmp_path.is_symlink():
            with suppress(OSError):  # the error that brought us here is the one to report
                tmp_path.unlink()


def write_json(path: str | os.PathLike, data: dict, replace: bool = True, argument: str = "path") -> None:
    """Write `data` as indented, key-sorted JSON, atomically (`replace`: as `atomic_path`); a NumPy
    scalar is written as the Python number it holds. The text is made before anything is written."""
    def plain(value: object) -> object:
        if isinstance(value, np.generic):
            return value.item()
        raise InvalidInputError(f"{argument}: {path}: a {type(value).__name__} value cannot be written as JSON")

    text = json.dumps(data, indent=2, sort_keys=True, default=plain) + "\n"
    with atomic_path(path, replace=replace, argument=argument) as tmp:
        tmp.write_text(text)


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray], replace: bool = True,
              argument: str = "path") -> None:
    """Write `arrays` as an uncompressed .npz, atomically (`replace`: as `atomic_path`)."""
    with atomic_path(path, replace=replace, argument=argument) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def remove_leftovers(folder: str | os.PathLike, prefix: str = "") -> list[Path]:
    """Delete the temp files a killed writer left in `folder` (`.{prefix}*.tmp`, made by `atomic_path`);
    returns what was removed. Only call it where no other writer is at work (a held lock)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in folder.glob(f".{prefix}*{TMP_SUFFIX}"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
