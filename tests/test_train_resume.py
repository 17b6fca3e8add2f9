"""`cm train` as real processes: kill -9 and resume bitwise, damaged checkpoints, the run folder.

Every run here is a real `cm train` process on `toy:mog8` with the default 2-D MLP, writing real
files; nothing is mocked. Runs are tiny (at most 90 steps of ~15 ms) and use one OpenMP thread.
A fresh interpreter costs ~4 s of CPU to start (torch and torch._dynamo imports), so the runs are
forked from one that has imported them (tests/warm_cm.py); the uninterrupted run each bitwise
comparison is made against (the references, the shared finished run) is a fresh `python -m
consistency_models train`, so that nothing the two processes could share hides an unseeded draw. Tests that damage a run work on a copy of the shared
finished run, made with a relative `--out run`.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from consistency_models import ConsistencyModelPipeline
from consistency_models.training.checkpoint import (
    checkpoint_path,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
)
import warm_cm
from conftest import child_env

ENV = child_env()
TIMEOUT = 180


def cm_command(*argv: str) -> list[str]:
    return [sys.executable, "-m", "consistency_models", *argv]


def cm(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return warm_cm.run(argv, ENV, cwd, timeout=TIMEOUT)


def train_argv(method: str, out: Path, steps: int, save_every: int, *extra: str, batch: int = 256,
               log_every: int = 10, sample_every: int | None = None) -> list[str]:
    return ["train", "--method", method, "--data", "toy:mog8", "--out", str(out), "--steps", str(steps),
            "--save-every", str(save_every), "--batch-size", str(batch), "--log-every", str(log_every),
            "--sample-every", str(sample_every or steps), "--seed", "3", "--no-progress", *extra]


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got:\n{text}"
    assert "Traceback" not in text
    return lines[0]


def assert_bitwise_equal(a, b, where: str) -> None:
    """Recursively: same structure, tensors torch.equal (same dtype and shape), other leaves ==."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape, f"{where}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"
        assert torch.equal(a, b), f"{where}: tensors differ (max |Δ| {(a.double() - b.double()).abs().max().item():.3g})"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), f"{where}: keys {list(a)} vs {list(b)}"
        for key in a:
            assert_bitwise_equal(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{where}: length {len(a)} vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_bitwise_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def folder_snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


# -- kill -9 and resume -----------------------------------------------------------------------
@pytest.mark.parametrize("method", ["ict", "ct", "sct"])
def test_kill_and_resume_is_bitwise_identical(method, tmp_path):
    """SIGKILL after the first checkpoint (step s of S = 3s), `--resume` to the end: the final
    network, EMA, optimizer (and CT's target network θ⁻) equal those of an uninterrupted run bit for bit."""
    total, every = 90, 30
    run, ref = tmp_path / "run", tmp_path / "ref"

    # The uninterrupted reference runs beside the one that gets killed.
    reference = subprocess.Popen(cm_command(*train_argv(method, ref, total, every)), stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, env=ENV)
    try:
        proc = warm_cm.start(train_argv(method, run, total, every), ENV)
        first = checkpoint_path(run, every)
        deadline = time.monotonic() + TIMEOUT
        try:
            while not first.exists():  # os.replace makes a ckpt-*.pt appear complete
                assert proc.poll() is None, f"the run ended early: {proc.output()[1]}"
                assert time.monotonic() < deadline, "no checkpoint appeared in time"
                time.sleep(0.002)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(TIMEOUT)
        assert proc.returncode == -signal.SIGKILL
        steps = [step for step, _ in list_checkpoints(run)]
        assert steps and steps[0] == every and steps[-1] < total, f"not killed mid-run: checkpoints {steps}"

        resumed = cm(*train_argv(method, run, total, every, "--resume"))
        assert_ok(resumed)
    finally:
        ref_output = reference.communicate(timeout=TIMEOUT)[0]
    assert reference.returncode == 0, ref_output

    got = load_checkpoint(checkpoint_path(run, total))
    want = load_checkpoint(checkpoint_path(ref, total))
    assert got["step"] == want["step"] == total
    keys = ["network", "ema", "optimizer"] + (["target"] if method == "ct" else []) + \
        (["loss"] if method == "sct" else [])  # sCT's adaptive weight w_φ
    assert ("target" in got) == (method == "ct") and ("loss" in got) == (method == "sct")
    for key in keys:
        assert_bitwise_equal(got[key], want[key], key)
    assert got["ema"]["num_updates"] == total
    # Every logged loss (steps before the kill are logged twice) is the reference's, exactly.
    want_loss = {r["step"]: r["loss"] for r in metrics(ref)}
    assert {r["step"] for r in metrics(run)} == set(want_loss)
    for r in metrics(run):
        assert r["loss"] == want_loss[r["step"]], r
    # The exported pipeline (EMA weights) is the same too.
    a = ConsistencyModelPipeline.from_pretrained(run).unet.state_dict()
    b = ConsistencyModelPipeline.from_pretrained(ref).unet.state_dict()
    assert_bitwise_equal(a, b, "pipeline unet")


# -- a finished run folder ----------------------------------------------------------------------
FINISHED_STEPS = 7


def finished_argv(*extra: str, **kw) -> list[str]:
    """The finished run's command, with `--out run` (relative: run it in the folder's parent)."""
    options = dict(batch=64, log_every=2, sample_every=3) | kw
    return train_argv("ict", Path("run"), FINISHED_STEPS, 2, *extra, **options)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One uninterrupted iCT run: 7 steps, checkpoints every 2, logs every 2, samples every 3.

    Made with `--out run`, so that a copy in another folder resumes with the same `--out run`.
    Tests must not change it: those that damage a run work on a copy.
    """
    parent = tmp_path_factory.mktemp("finished")
    proc = subprocess.run(cm_command(*finished_argv()), capture_output=True, text=True, env=ENV, cwd=parent,
                          timeout=TIMEOUT)  # a fresh interpreter: the damaged copy's resume is compared with it
    assert_ok(proc)
    assert "model in run" in proc.stdout
    return parent / "run"


def copy_run(run: Path, parent: Path) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copytree(run, parent / "run"))


def test_run_folder_files(finished_run):
    run = finished_run
    records = metrics(run)
    assert [r["step"] for r in records] == [2, 4, 6, 7], "one line per logging step, and the last step"
    for r in records:
        assert {"step", "loss", "lr"} <= set(r)
        assert np.isfinite(r["loss"]) and r["lr"] == pytest.approx(2e-4)
    assert sorted(p.name for p in (run / "samples").glob("step-*.png")) == [
        "step-00000003.png", "step-00000006.png", "step-00000007.png"]
    for png in (run / "samples").iterdir():
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = json.loads((run / "train_config.json").read_text())
    assert config["method"] == "ict" and config["steps"] == FINISHED_STEPS and config["data"] == "toy:mog8"
    assert config["batch_size"] == 64 and config["seed"] == 3
    assert [s for s, _ in list_checkpoints(run)] == [4, 6, 7]  # keep = 3
    assert not list((run / "checkpoints").glob("*.tmp"))


@pytest.fixture(scope="module")
def damaged_and_resumed(finished_run, tmp_path_factory):
    """A copy of the finished run with its newest checkpoint (step 7) truncated and two leftover
    temp files of a killed save, then resumed with `--resume`."""
    parent = tmp_path_factory.mktemp("damaged")
    run = copy_run(finished_run, parent)
    folder = run / "checkpoints"
    newest = checkpoint_path(run, FINISHED_STEPS)
    original = load_checkpoint(newest)
    good_bytes = newest.read_bytes()
    newest.write_bytes(good_bytes[: len(good_bytes) // 2])
    leftovers = [folder / ".ckpt-00000008.pt.k3x9q1.tmp", folder / ".ckpt-00000010.pt.a1b2c3.tmp"]
    leftovers[0].write_bytes(b"\x80\x02garbage from a killed save")
    leftovers[1].write_bytes(good_bytes)  # fully written, never renamed: still not a checkpoint
    with pytest.warns(RuntimeWarning, match="skipping checkpoint of step 7"):
        assert latest_checkpoint(run) == checkpoint_path(run, 6)
    proc = cm(*finished_argv("--resume"), cwd=parent)
    return run, proc, original, leftovers


def test_tmp_file_and_truncated_newest_checkpoint_are_skipped(damaged_and_resumed, finished_run):
    """The leftover `.tmp` files (one even holds a complete state) and the truncated newest
    checkpoint are passed over: the run resumes from the previous good one (step 6), trains
    step 7 again and ends exactly as the uninterrupted run did."""
    run, proc, original, leftovers = damaged_and_resumed
    assert_ok(proc)
    assert "skipping checkpoint of step 7" in proc.stderr
    assert not any(p.exists() for p in leftovers), "the next save removes leftover temp files"
    folder = run / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == [f"ckpt-0000000{s}.pt" for s in (4, 6, 7)]
    # Resumed from step 6: step 7 was trained (and logged) again, with the same loss.
    assert metrics(run)[-1] == {**metrics(finished_run)[-1], "images_per_s": metrics(run)[-1]["images_per_s"]}
    again = load_checkpoint(checkpoint_path(run, FINISHED_STEPS))
    for key in ("step", "network", "ema", "optimizer", "rng"):
        assert_bitwise_equal(again[key], original[key], key)


def test_resumed_run_logs_each_step_once(damaged_and_resumed):
    run, proc, _, _ = damaged_and_resumed
    assert_ok(proc)
    assert [m["step"] for m in metrics(run)] == [2, 4, 6, 7]


def test_run_folder_is_a_pipeline(finished_run):
    """from_pretrained(RUN) loads the EMA weights of the last checkpoint and samples 2-D points."""
    pipe = ConsistencyModelPipeline.from_pretrained(finished_run)
    assert pipe.parametrization == "consistency" and not pipe.is_image_model
    state = load_checkpoint(checkpoint_path(finished_run, FINISHED_STEPS))
    ema = state["ema"]["averages"][0]
    for name, tensor in pipe.unet.state_dict().items():
        assert torch.equal(tensor, ema[name]), name
    out = pipe(batch_size=16, generator=torch.Generator().manual_seed(0), output_type="np")
    points = out.images
    assert isinstance(points, np.ndarray) and points.dtype == np.float32 and points.shape == (16, 2)
    assert np.isfinite(points).all()
    with pytest.raises(ValueError, match="output_type"):
        pipe(batch_size=2, output_type="pil")


def test_cm_sample_writes_float32_points(finished_run, tmp_path):
    out = tmp_path / "x.npz"
    proc = cm("sample", "--model", str(finished_run), "--out", str(out), "--batch-size", "8", "--device", "cpu")
    assert_ok(proc)
    with np.load(out) as data:
        assert data.files == ["arr_0"], data.files  # unlabelled data: no arr_1
        points = data["arr_0"]
    assert points.dtype == np.float32 and points.shape == (8, 2), f"{points.dtype} {points.shape}"
    pipe = ConsistencyModelPipeline.from_pretrained(finished_run)
    want = pipe(batch_size=8, generator=torch.Generator().manual_seed(0), output_type="np").images
    np.testing.assert_allclose(points, want, rtol=0, atol=1e-6)


def test_new_run_into_a_run_folder_is_refused(finished_run):
    before = folder_snapshot(finished_run)
    proc = cm(*finished_argv(), cwd=finished_run.parent)
    assert proc.returncode == 2
    line = one_line(proc.stderr)
    assert line.startswith("cm: error: out: ") and "already holds a run" in line and "--resume" in line
    assert folder_snapshot(finished_run) == before


def test_resume_with_changed_settings_is_refused(finished_run):
    before = folder_snapshot(finished_run)
    proc = cm(*finished_argv("--resume", "--lr", "1e-3"), cwd=finished_run.parent)
    assert proc.returncode == 2
    line = one_line(proc.stderr)
    assert line.startswith("cm: error: resume: ") and "lr=0.0002 (now 0.001)" in line, line
    assert line.endswith("train on with new ones in a new run that starts from its weights: --method ict --data "
                         "toy:mog8 --init-from run --out NEW_FOLDER"), line
    assert folder_snapshot(finished_run) == before, "a refused resume must not touch the run"


def test_resume_with_only_the_run_folder_continues_with_its_own_settings(finished_run, tmp_path):
    """`cm train --out run --resume` alone: the settings come from the run's train_config.json, and
    the run ends as the uninterrupted one did (its newest checkpoint removed, step 7 is trained again)."""
    run = copy_run(finished_run, tmp_path)
    checkpoint_path(run, FINISHED_STEPS).unlink()
    proc = cm("train", "--out", "run", "--resume", "--no-progress", cwd=tmp_path)
    assert_ok(proc)
    assert "resume: continuing from step 6 of 7" in proc.stderr, proc.stderr
    again = load_checkpoint(checkpoint_path(run, FINISHED_STEPS))
    original = load_checkpoint(checkpoint_path(finished_run, FINISHED_STEPS))
    for key in ("step", "network", "ema", "optimizer", "rng"):
        assert_bitwise_equal(again[key], original[key], key)
    refused = cm("train", "--out", "run", "--resume", "--lr", "1e-3", cwd=tmp_path)   # a setting of the run itself
    assert refused.returncode == 2 and "lr=0.0002 (now 0.001)" in one_line(refused.stderr)
    nothing = cm("train", "--out", "nothing", "--resume", cwd=tmp_path)   # no run to take settings from
    assert nothing.returncode == 2 and one_line(nothing.stderr).startswith("cm: error: method: give --method")
    assert one_line(nothing.stderr).endswith("or --recipe (nothing holds no run to resume)")
    typed = cm("train", "--method", "ict", "--out", "run", "--resume", "--no-progress", cwd=tmp_path)
    assert_ok(typed)   # --method given: the recorded settings still fill what is not typed
    no_data = cm("train", "--method", "ict", "--out", "new", cwd=tmp_path)
    assert no_data.returncode == 2 and one_line(no_data.stderr).startswith("cm: error: data: give --data (digits,")


def test_resume_same_folder_by_another_path(finished_run, tmp_path):
    """The run was made with `--out run`; resuming it as `--out /abs/path/run` is the same run."""
    run = copy_run(finished_run, tmp_path / "moved")
    argv = finished_argv("--resume")
    argv[argv.index("--out") + 1] = str(run)
    proc = cm(*argv, cwd=tmp_path)
    assert_ok(proc)


# -- divergence -------------------------------------------------------------------------------
def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(tmp_path):
    """lr = 1e30 blows the weights up after one step; the next loss is not finite."""
    run = tmp_path / "run"
    proc = cm(*train_argv("ict", run, 10, 1, "--lr", "1e30", batch=64, log_every=1))
    assert proc.returncode == 1, proc.stderr
    line = one_line(proc.stderr)
    assert line.startswith("cm: training stopped: the loss became ") and "at step 1" in line, line
    assert str(run / "checkpoints") in line and "--lr" in line
    assert [s for s, _ in list_checkpoints(run)] == [1]
    good = latest_checkpoint(run)
    assert good == checkpoint_path(run, 1)
    state = load_checkpoint(good)
    assert state["step"] == 1
    assert all(torch.isfinite(t).all() for t in state["network"].values())
    assert [r["step"] for r in metrics(run)] == [1]
    assert np.isfinite(metrics(run)[0]["loss"])
    assert ConsistencyModelPipeline.from_pretrained(run).unet is not None


def test_no_checkpoint_with_non_finite_weights_is_kept(tmp_path):
    """lr = 1e300: the first update turns the weights into inf/NaN while its loss was finite."""
    run = tmp_path / "run"
    proc = cm(*train_argv("ict", run, 10, 1, "--lr", "1e300", batch=64, log_every=1))
    assert proc.returncode == 1 and "cm: training stopped" in one_line(proc.stderr)
    for step, path in list_checkpoints(run):
        state = load_checkpoint(path)
        weights = [*state["network"].values(), *state["ema"]["averages"][0].values()]
        assert all(torch.isfinite(t).all() for t in weights), f"checkpoint of step {step} holds inf/NaN weights"


def test_kill_between_the_last_checkpoint_and_the_export(tmp_path):
    """SIGKILL as soon as the final checkpoint appears (the export of unet/ and the preview come
    after it): `--resume` finishes the export, and the model equals an uninterrupted run's bit for bit."""
    total = 30
    run, ref = tmp_path / "run", tmp_path / "ref"
    reference = subprocess.Popen(cm_command(*train_argv("ict", ref, total, total)), stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, env=ENV)
    try:
        proc = warm_cm.start(train_argv("ict", run, total, total), ENV)
        last = checkpoint_path(run, total)
        deadline = time.monotonic() + TIMEOUT
        try:
            while not last.exists():
                assert proc.poll() is None and time.monotonic() < deadline, "no final checkpoint in time"
                time.sleep(0.001)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(TIMEOUT)
        resumed = cm(*train_argv("ict", run, total, total, "--resume"))
        assert_ok(resumed)
    finally:
        ref_output = reference.communicate(timeout=TIMEOUT)[0]
    assert reference.returncode == 0, ref_output
    a = ConsistencyModelPipeline.from_pretrained(run).unet.state_dict()
    b = ConsistencyModelPipeline.from_pretrained(ref).unet.state_dict()
    assert_bitwise_equal(a, b, "pipeline unet")
    assert (run / "samples" / f"step-{total:08d}.png").is_file()
    assert [r["step"] for r in metrics(run)] == [r["step"] for r in metrics(ref)]
