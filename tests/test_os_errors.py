"""When the OS refuses to write an output (a folder that is not writable, a folder standing where
the file should be, a full disk), `cm` says so in one line naming the user's path, never the hidden
temp file beside it, and leaves neither a partial file nor a temp file behind.

The unwritable folder is a real chmod 0o500 folder and a real `cm` child process. Root ignores
permissions: as root the child runs without CAP_DAC_OVERRIDE (`setpriv`), and the test is skipped
where that cannot be done.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from consistency_models.cli import main
from consistency_models.errors import InvalidInputError
from consistency_models.io.atomic import atomic_path, write_json
from conftest import child_env

ENV = child_env(CUDA_VISIBLE_DEVICES="")
SETPRIV = shutil.which("setpriv")


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def assert_names_the_output(code: int, err: str, out: Path) -> None:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("cm: error: ") and str(out) in lines[0] and ".tmp" not in lines[0], lines[0]


def without_root_powers(folder: Path) -> list[str]:
    """The command prefix under which writing into `folder` (mode 0o500) is refused; skips where none is."""
    if os.geteuid() != 0:
        return []
    prefix = [SETPRIV, "--bounding-set=-dac_override,-dac_read_search"] if SETPRIV else []
    works = bool(prefix) and subprocess.run([*prefix, "true"], capture_output=True).returncode == 0
    refused = works and subprocess.run([*prefix, "touch", str(folder / "probe")], capture_output=True).returncode != 0
    if not refused or (folder / "probe").exists():
        pytest.skip("running as root, which ignores file permissions (and setpriv cannot drop that)")
    return prefix


@pytest.fixture
def unwritable(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    yield folder
    folder.chmod(0o700)


@pytest.mark.parametrize("out_name, extra", [
    ("a.png", []),                                   # one grid, written by temp file and rename
    ("a.npz", ["--num", "3", "--steps", "1"]),       # sharded: the shard folder cannot be made
])
def test_an_unwritable_output_folder(unwritable, out_name, extra):
    """It used to read `…/ro/.a.png.1iye8ffr.tmp: Permission denied`."""
    prefix = without_root_powers(unwritable)
    out = unwritable / out_name
    done = subprocess.run([*prefix, sys.executable, "-m", "consistency_models", "sample", "--model", "digits",
                           "--batch-size", "2", *extra, "--out", str(out)],
                          capture_output=True, text=True, env=ENV, timeout=300)
    assert_names_the_output(done.returncode, done.stderr, out)
    assert done.stderr.startswith(f"cm: error: {out}: cannot write it (Permission denied); the folder {unwritable} "
                                  "must be writable"), done.stderr
    assert list(unwritable.iterdir()) == []


def test_a_folder_in_place_of_the_output_file(tmp_path, capsys):
    """`cm sample --num` writes one .npz; a folder of that name used to fail the final rename with an
    error naming the temp file (after all the work). It is refused first, and kept."""
    out = tmp_path / "s.npz"
    (out / "mine").mkdir(parents=True)
    code = main(["sample", "--model", "digits", "--num", "2", "--steps", "1", "--overwrite", "--out", str(out)])
    err = capsys.readouterr().err
    assert_names_the_output(code, err, out)
    assert "is a folder" in err
    assert [p.name for p in tmp_path.iterdir()] == ["s.npz"] and (out / "mine").is_dir()


def test_a_folder_in_place_of_an_image_file(tmp_path, capsys):
    """`--out DIR/` writes DIR/000000.png …, and a folder stands where the first image goes."""
    out = tmp_path / "pngs"
    in_the_way = out / "000000.png"
    in_the_way.mkdir(parents=True)
    (in_the_way / "mine.txt").write_text("the user's")
    code = main(["sample", "--model", "digits", "--batch-size", "2", "--steps", "1", "--overwrite",
                 "--out", f"{out}/"])
    err = capsys.readouterr().err
    assert_names_the_output(code, err, out)
    assert (in_the_way / "mine.txt").read_text() == "the user's"
    assert sorted(p.name for p in out.iterdir()) == ["000000.png"] and temp_files(tmp_path) == []


def test_a_folder_made_in_place_while_writing(tmp_path):
    """The rename itself is refused (the folder appeared after the check): the error names the file."""
    path = tmp_path / "data.json"
    with pytest.raises(InvalidInputError, match=f"^{path}: cannot write it .*a folder stands there") as caught:
        with atomic_path(path) as tmp:
            tmp.write_text("{}")
            path.mkdir()
    assert ".tmp" not in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.json"] and path.is_dir()


def test_a_folder_in_place_is_refused_before_writing(tmp_path):
    path = tmp_path / "data.json"
    path.mkdir()
    with pytest.raises(InvalidInputError, match=f"^{path}: cannot write it"):
        write_json(path, {"a": 1})
    assert list(tmp_path.iterdir()) == [path]


def test_a_failed_write_names_the_file_and_removes_the_temp_file(tmp_path):
    """A full disk seen by a writer that gives no file name (np.savez into an open file)."""
    path = tmp_path / "s.npz"
    with pytest.raises(OSError) as caught:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, arr_0=np.zeros(4))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(path)
    assert not isinstance(caught.value, InvalidInputError)  # not the user's input: `cm` exits 1
    assert list(tmp_path.iterdir()) == []


def test_other_errors_of_the_writer_pass_unchanged(tmp_path):
    """An error about another file, or one that is not about writing, is not put on `path`."""
    path = tmp_path / "s.npz"
    with pytest.raises(FileNotFoundError) as caught:
        with atomic_path(path):
            open(tmp_path / "missing-input")
    assert caught.value.filename == str(tmp_path / "missing-input")
    with pytest.raises(ConnectionResetError):
        with atomic_path(path):
            raise ConnectionResetError(errno.ECONNRESET, os.strerror(errno.ECONNRESET))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "darwin", reason="RLIMIT_FSIZE as on Linux")
def test_a_file_size_limit_while_writing_weights_is_one_line_naming_the_users_folder(tmp_path, capsys):
    """The OS refusing the weights file (here a real file-size limit, EFBIG; a full disk is ENOSPC):
    safetensors raised its own error type (a 20-line traceback), and the folder named was the hidden
    temp folder. Now one line naming m/unet/..., and nothing left behind."""
    def main_under_file_size_limit(limit: int, argv: list[str]) -> int:
        """`main(argv)` with files limited to `limit` bytes in this process, then restored."""
        import resource
        import signal

        limits = resource.getrlimit(resource.RLIMIT_FSIZE)
        old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # else the process is killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limits[1]))
        try:
            return main(argv)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, limits)
            signal.signal(signal.SIGXFSZ, old_handler)

    code = main_under_file_size_limit(65536, ["new", str(tmp_path / "m"), "--preset", "tiny16"])
    err = capsys.readouterr().err
    assert code == 1 and err == (f"cm: error: {tmp_path / 'm' / 'unet' / 'diffusion_pytorch_model.safetensors'}: "
                                 f"cannot write it: {os.strerror(errno.EFBIG)}\n"), err
    assert list(tmp_path.iterdir()) == []
    # A folder of samples: the image is named in the user's folder, not in the hidden one it is written to.
    code = main_under_file_size_limit(64, ["sample", "--batch-size", "2", "--out", f"{tmp_path / 'pngs'}/",
                                           "--no-progress"])   # 64 bytes: below one 16×16 PNG
    err = capsys.readouterr().err
    assert code == 1 and err == (f"cm: error: {tmp_path / 'pngs' / '000000.png'}: cannot write it: "
                                 f"{os.strerror(errno.EFBIG)}\n"), err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("message", ["Error while serializing: I/O error: No space left on device (os error 28)",
                                     'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                                     '"No space left on device" })'],
                         ids=["safetensors-0.7-and-later", "safetensors-0.4-to-0.6"])
def test_both_forms_of_safetensors_os_errors_become_os_errors(tmp_path, monkeypatch, message):
    """The installed safetensors says "(os error N)"; the versions pyproject still allows (>= 0.4)
    said "Os { code: N, ... }". Their error type stands in here (the disk cannot be filled)."""
    import torch

    from consistency_models.io import diffusers_format

    class SafetensorError(Exception):
        pass

    def full_disk(*args, **kwargs):
        raise SafetensorError(message)

    monkeypatch.setattr(diffusers_format, "save_file", full_disk)
    with pytest.raises(OSError) as raised:
        diffusers_format.write_weights({"w": torch.zeros(2)}, tmp_path / "w.safetensors", True)
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(tmp_path / "w.safetensors")
