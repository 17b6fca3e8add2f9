"""Stopping `cm train` as people do: Ctrl-C (a real SIGINT) or SIGTERM to a real `cm train` process
saves the steps done, says so in one line, and `--resume` says where it continues; a device this
machine does not have is refused in one line before anything runs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from consistency_models.cli import main
from consistency_models.training import TrainConfig, Trainer
from consistency_models.training.checkpoint import latest_checkpoint, load_checkpoint
import warm_cm
from conftest import child_env

ENV = child_env()
STEPS = 100


def train_argv(out: Path, *extra: str) -> list[str]:
    return ["train", "--method", "ict", "--data", "toy:mog8", "--out", str(out), "--steps", str(STEPS),
            "--batch-size", "32", "--save-every", "100000", "--sample-every", "100000", "--log-every", "1",
            "--no-progress", *extra]


def logged_steps(out: Path) -> int:
    log = out / "metrics.jsonl"
    return len(log.read_text().splitlines()) if log.is_file() else 0


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_saves_the_steps_done_and_resume_continues_from_them(tmp_path, signum, code):
    """Ctrl-C to `python -m consistency_models train` as typed; SIGTERM to a forked `cm` child."""
    out = tmp_path / "run"
    if signum == signal.SIGINT:
        proc = subprocess.Popen([sys.executable, "-m", "consistency_models", *train_argv(out)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    else:
        proc = warm_cm.start(train_argv(out), ENV)
    deadline = time.monotonic() + 120
    while logged_steps(out) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    last = err.strip().splitlines()[-1]
    name = signal.Signals(signum).name
    assert last.startswith(f"cm: interrupted: {name} at step ") and "--resume continues from it" in last, err
    assert "Traceback" not in err
    stopped = int(last.split(" at step ")[1].split()[0])
    assert 3 <= stopped < STEPS
    state = load_checkpoint(latest_checkpoint(out))
    assert state["step"] == stopped  # the default --save-every (1000, here 100000) would have saved nothing
    assert logged_steps(out) == stopped
    if signum != signal.SIGINT:
        return  # resuming is the same after either signal

    resumed = warm_cm.run(train_argv(out, "--resume"), ENV, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resume: continuing from step {stopped} of {STEPS} (" in resumed.stderr
    assert load_checkpoint(latest_checkpoint(out))["step"] == STEPS and logged_steps(out) == STEPS


def test_resume_without_a_checkpoint_says_it_starts_from_step_0(tmp_path, capsys):
    out = tmp_path / "run"
    settings = dict(method="ict", data="toy:mog8", out=str(out), steps=2, batch_size=16, progress=False)
    out.mkdir()
    (out / "train_config.json").write_text(json.dumps(TrainConfig(**settings).to_dict()))  # a run that never saved
    trainer = Trainer(TrainConfig(**settings, resume=True))
    assert trainer.step == 0
    trainer.run()
    assert "resume: no complete checkpoint in" in capsys.readouterr().err


@pytest.mark.parametrize("device, message", [
    ("gpu", r"device: 'gpu' is not a device name \(cpu, cuda, cuda:1, ...\)"),
    ("meta", r"device: 'meta' is not supported; use cpu, cuda or cuda:N"),
    pytest.param("cuda", r"device: 'cuda' was asked for, but CUDA is not available here; use --device cpu",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
])
def test_a_device_this_machine_lacks_is_one_line_before_anything_runs(tmp_path, capsys, device, message):
    import re

    out = tmp_path / "run"
    code = main(["train", "--method", "ict", "--data", "toy:mog8", "--out", str(out), "--device", device,
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and re.search(message, err), err
    assert not out.exists()
