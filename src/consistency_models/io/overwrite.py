"""Outputs never overwrite the inputs they were computed from, and replace an earlier output only
when the user says so (`--overwrite`) — a folder as a whole."""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import InvalidInputError
from .atomic import appeared_meanwhile, current_umask, write_error


def refuse_input_as_output(out: str | os.PathLike | None, argument: str,
                           inputs: dict[str, str | os.PathLike | None]) -> None:
    """A one-line error when the output path `out` is one of `inputs`, lies inside an input folder,
    or is a folder holding an input (however spelled; `--overwrite` or not); `inputs` maps option
    names to paths (None and paths that do not exist, e.g. embedded model names, are skipped)."""
    if out is None:
        return
    target = Path(out).resolve()
    for name, path in inputs.items():
        if path is None or not Path(path).exists():
            continue
        source, option = Path(path).resolve(), "--" + name.replace("_", "-")
        if source == target:
            why = f"is the {option} input"
        elif source.is_dir() and source in target.parents:
            why = f"lies inside the {option} folder {path}"
        elif target in source.parents:
            why = f"holds the {option} input {path}"
        else:
            continue
        raise InvalidInputError(f"{argument}: {out} {why}; write the result elsewhere")


def names_a_folder(path: str | os.PathLike) -> bool:
    """Whether `path` as the user wrote it ends in a separator (`out/`): a folder is meant."""
    return str(path).endswith(("/", os.sep))


def require_parent_folder(path: str | os.PathLike, argument: str) -> Path:
    """`path` as a Path whose parent is an existing folder, else a one-line error naming `argument`
    (an output is never written to a folder that would have to be guessed into being)."""
    parent = Path(path).parent
    if not parent.is_dir():
        raise InvalidInputError(f"{argument}: {parent} is a file, not a folder" if parent.exists()
                                else f"{argument}: the folder {parent} does not exist")
    return Path(path)


def check_output_file(path: str | os.PathLike | None, argument: str) -> None:
    """Before any work, a one-line error for a file output spelled as a folder (`r.json/`), that is
    an existing folder, or in a folder that does not exist (the result would be lost at the end)."""
    if path is None:
        return
    if names_a_folder(path):
        raise InvalidInputError(f"{argument}: {path} names a folder; give a file name (e.g. "
                                f"{str(path).rstrip('/' + os.sep) or 'results'})")
    if Path(path).is_dir():
        raise InvalidInputError(f"{argument}: {path} is a folder; give a file name (in it, or beside it)")
    require_parent_folder(path, argument)


def refuse_existing(path: str | os.PathLike | None, overwrite: bool, argument: str = "out") -> None:
    """One policy for every output: an existing file (or a non-empty folder) is replaced only when
    the user says so (`--overwrite`); a folder asked for (`out/`) never replaces a file."""
    if path is not None and names_a_folder(path) and Path(path).exists() and not Path(path).is_dir():
        raise InvalidInputError(f"{argument}: {path} asks for a folder, but {str(path).rstrip('/' + os.sep)} is a "
                                "file; choose another name (--overwrite replaces a file by a file, a folder by a folder)")
    if path is None or overwrite:
        return
    target = Path(path)   # "out/" too: pathlib drops the trailing separator
    if target.is_symlink():   # the write would replace the link itself (and later say "written meanwhile")
        raise InvalidInputError(f"{argument}: {path} is a symbolic link; pass --overwrite to replace the link itself, "
                                "or choose another name")
    if target.is_dir():
        if any(target.iterdir()):
            raise InvalidInputError(f"{argument}: the folder {path} is not empty; pass --overwrite to write into it")
    elif target.exists():
        raise InvalidInputError(f"{argument}: {path} exists; pass --overwrite to replace it")


@contextmanager
def named_as_target(fresh: Path, target: Path) -> Iterator[None]:
    """An OS error about a file in the hidden folder `fresh` is said of the same file in `target`,
    the folder the user named (a full disk while writing `.m.x1y2.tmp/unet/...` is `m/unet/...`)."""
    try:
        yield
    except OSError as exc:
        name = Path(os.path.abspath(exc.filename)) if isinstance(exc.filename, (str, os.PathLike)) else None
        inside = name is not None and Path(os.path.abspath(fresh)) in (name, *name.parents)
        if not inside:
            raise
        shown = target / name.relative_to(os.path.abspath(fresh))
        raise OSError(exc.errno, exc.strerror, str(shown)) from exc


OUTPUT_MARK = ".cm-output"   # the empty file in a folder of samples cm wrote (what --overwrite may replace)


def check_replaceable(path: str | os.PathLike, ours: str, argument: str = "out", mark: bool = False) -> None:
    """Refuse (one line) an existing folder that `replaced_folder` may not replace: one holding a
    file whose name does not match `ours`, a model folder, or (with `mark`) one without
    `OUTPUT_MARK`. Callers may check up front, before the work."""
    target = Path(path)
    pattern = re.compile(ours)
    if target.is_dir():
        strangers = sorted(p.name for p in target.iterdir()
                           if not (p.is_file() and (pattern.fullmatch(p.name) or (mark and p.name == OUTPUT_MARK))))
        if "model_index.json" in strangers:  # a model or training run folder (its .lock would be named first)
            raise InvalidInputError(f"{argument}: {path} is a model folder (it holds model_index.json); choose "
                                    "another folder (--overwrite replaces only an earlier output)")
        if strangers:
            raise InvalidInputError(f"{argument}: {path} holds {strangers[0]}, which this command did not write; "
                                    "choose another folder (--overwrite replaces only an earlier output)")
        if mark and any(target.iterdir()) and not (target / OUTPUT_MARK).is_file():
            raise InvalidInputError(f"{argument}: {path} was not written by cm (a folder of samples it writes holds "
                                    f"{OUTPUT_MARK}); choose another folder (--overwrite replaces only an earlier "
                                    "output)")


@contextmanager
def replaced_folder(path: str | os.PathLike, ours: str, argument: str = "out", replace: bool = True,
                    mark: bool = False) -> Iterator[Path]:
    """Yields an empty folder to write an output folder into; on success it takes `path`'s place as
    a whole (no file of an earlier output stays mixed in). An existing `path` must hold only files
    whose names match `ours` (what this command writes), else it is refused naming a stranger: a
    user's folder is never emptied by mistake. On an error the earlier folder stays as it was.
    With `replace` False (no --overwrite) only an absent or empty `path` is taken: a folder that
    another process filled meanwhile is kept and the write refused. With `mark`, the folder
    written holds `OUTPUT_MARK`, and a non-empty `path` is replaced only if it holds it too: a
    user's folder whose files happen to be named like ours (000000.png, ...) is not an output."""
    target = Path(path)
    check_replaceable(target, ours, argument, mark)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fresh = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        os.chmod(fresh, 0o777 & ~current_umask())  # mkdtemp makes 0700; the output gets mkdir's usual mode
        if mark:
            (fresh / OUTPUT_MARK).touch()
    except OSError as exc:  # the place cannot hold it: named as the user wrote it, not the temp folder
        raise write_error(exc, target) from exc
    try:
        with named_as_target(fresh, target):
            yield fresh
        if not replace:
            try:
                os.rename(fresh, target)  # replaces only an empty folder (POSIX), never one with files
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                    raise
                raise appeared_meanwhile(target, argument) from None
            return
        old = target.with_name(f".{target.name}.old")
        if target.is_dir():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(fresh, target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(fresh, ignore_errors=True)


PARTIAL_PREFIX = ".cm-partial."   # hidden entries of a write in progress into an existing folder


@contextmanager
def filled_in_place(target: str | os.PathLike, last: str) -> Iterator[Path]:
    """Yields a hidden temp folder inside the existing folder `target` (which must stay where it is:
    a mount point, a link, the current folder); on success its entries move up into `target`,
    `last` (the file that marks the output complete) last of all. An interrupted write leaves no
    entry of the output in `target`, at most a hidden `PARTIAL_PREFIX` folder (after SIGKILL)."""
    target = Path(target)
    try:
        fresh = Path(tempfile.mkdtemp(prefix=PARTIAL_PREFIX, suffix=".tmp", dir=target))
    except OSError as exc:
        raise write_error(exc, target) from exc
    try:
        with named_as_target(fresh, target):
            yield fresh
        for entry in sorted(fresh.iterdir(), key=lambda p: p.name == last):
            os.replace(entry, target / entry.name)
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
