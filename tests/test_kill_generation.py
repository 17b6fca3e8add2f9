"""`cm sample --num` killed with SIGKILL at chosen write events, then run again: the same file, bit
for bit, as an uninterrupted run, and nothing half-written left anywhere.

The killed runs are real child processes, forked from one that has imported torch
(tests/warm_cm.py): `tests/kill_at.py` SIGKILLs the process at the N-th write event, so the point
is chosen, not raced, and one more is killed from outside while it works. The uninterrupted
reference and the reruns run in this test process, another interpreter than the killed runs'.
20 images in shards of 4: one settings record, 5 shards, the merged file — 7 renames, 6 `np.savez`.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from consistency_models.cli import main
import warm_cm
from conftest import child_env

ENV = child_env()


def sample_args(model: Path) -> list[str]:
    return ["sample", "--model", str(model), "--num", "20", "--batch-size", "4", "--steps", "2", "--seed", "3",
            "--out", "s.npz"]


def arrays_of(path: Path) -> dict[str, bytes]:
    with np.load(path) as f:
        return {k: hashlib.sha256(f[k].tobytes()).hexdigest() + str(f[k].shape) for k in f.files}


def leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.name.endswith(".tmp"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, pipeline_dir) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("uninterrupted")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        assert main(sample_args(pipeline_dir)) == 0
    finally:
        os.chdir(cwd)
    return arrays_of(folder / "s.npz")


def rerun(folder: Path, argv: list[str], capsys) -> tuple[int, str]:
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        code = main(argv)
    finally:
        os.chdir(cwd)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("event, n, what", [
    ("pre-replace", 1, "before the settings record is published"),
    ("half-savez", 3, "in the middle of writing the third shard"),
    ("pre-replace", 4, "with the third shard written but not yet renamed"),
    ("post-replace", 6, "after the last shard, before the merge"),
    ("half-savez", 6, "in the middle of writing the merged file"),
    ("pre-rmtree", 1, "after the merged file, before the shards are removed"),
])
def test_kill_at_a_write_event_then_rerun(event, n, what, tmp_path, pipeline_dir, reference, capsys):
    argv = sample_args(pipeline_dir)
    kill_at(event, n, argv, tmp_path)
    out = tmp_path / "s.npz"
    if out.exists():  # only ever the complete file
        assert arrays_of(out) == reference
    code, err = rerun(tmp_path, argv, capsys)
    assert code == 0, err
    assert arrays_of(out) == reference, what
    assert leftovers(tmp_path) == [] and not (tmp_path / "s.npz.shards").exists()


def test_killed_from_outside_after_the_first_shard(tmp_path, pipeline_dir, reference, capsys):
    argv = sample_args(pipeline_dir)
    shards = tmp_path / "s.npz.shards"
    proc = warm_cm.start(argv, ENV, tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not list(shards.glob("r0-*.npz")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    if proc.returncode != -signal.SIGKILL:
        pytest.skip("the run finished before the kill landed (a very fast machine)")
    code, err = rerun(tmp_path, argv, capsys)
    assert code == 0, err
    assert arrays_of(tmp_path / "s.npz") == reference
    assert leftovers(tmp_path) == [] and not shards.exists()


def kill_at(event: str, n: int, argv: list[str], folder: Path) -> None:
    killed = warm_cm.run(argv, ENV, folder, timeout=180, kill_at=(event, n))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]


def test_a_users_file_is_never_taken_for_a_finished_run(tmp_path, pipeline_dir, reference, capsys):
    """`--overwrite` over the user's own s.npz, killed before the merge: the rerun without
    --overwrite refuses (the file is still the user's); with it, the run finishes."""
    mine = tmp_path / "s.npz"
    np.savez(mine, np.zeros((2, 32, 32, 3), np.uint8))
    before = mine.read_bytes()
    argv = sample_args(pipeline_dir)
    kill_at("post-replace", 6, [*argv, "--overwrite"], tmp_path)
    code, err = rerun(tmp_path, argv, capsys)
    assert code == 2 and err.strip() == "cm: error: out: s.npz exists; pass --overwrite to replace it"
    assert mine.read_bytes() == before
    code, err = rerun(tmp_path, [*argv, "--overwrite"], capsys)
    assert code == 0 and arrays_of(mine) == reference


def test_merged_file_deleted_after_the_kill_is_merged_again(tmp_path, pipeline_dir, reference, capsys):
    argv = sample_args(pipeline_dir)
    kill_at("pre-rmtree", 1, argv, tmp_path)
    (tmp_path / "s.npz").unlink()
    code, err = rerun(tmp_path, argv, capsys)
    assert code == 0, err
    assert arrays_of(tmp_path / "s.npz") == reference and not (tmp_path / "s.npz.shards").exists()
