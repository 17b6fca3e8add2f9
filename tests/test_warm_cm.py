"""What tests/warm_cm.py promises of its forked children: a process of their own, with the
environment, folder, streams, thread count and fresh random states of a new interpreter, and the
exit status of `python -m consistency_models` (a signal's too)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import torch

import warm_cm
from conftest import child_env
from warm_cm import HERE

REPORT = """\
import json, os, random, sys
import numpy as np
import torch
print(json.dumps({"pid": os.getpid(), "cwd": os.getcwd(), "env": os.environ.get("WARM_TEST"), "path": sys.path,
                  "random": random.random(), "numpy": float(np.random.rand()),
                  "torch": torch.initial_seed(), "threads": torch.get_num_threads(), "argv": sys.argv[1:]}))
sys.stderr.write("to stderr\\n")
sys.exit(int(sys.argv[1]))
"""


def test_children_are_fresh_processes_of_their_own(tmp_path):
    script = tmp_path / "report.py"
    script.write_text(REPORT)
    runs = [warm_cm.run([str(code), "x y"], child_env(WARM_TEST=f"run {code}", OMP_NUM_THREADS="1"),
                        tmp_path, script=script, timeout=120) for code in (0, 5)]
    first, second = (json.loads(run.stdout) for run in runs)
    assert [run.returncode for run in runs] == [0, 5] and [run.stderr for run in runs] == ["to stderr\n"] * 2
    assert first["pid"] != second["pid"] and os.getpid() not in (first["pid"], second["pid"])
    assert first["cwd"] == second["cwd"] == str(tmp_path) and first["argv"] == ["0", "x y"]
    assert first["path"][0] == str(tmp_path) and str(HERE) not in first["path"]  # as `python report.py` has it
    assert (first["env"], second["env"]) == ("run 0", "run 5") and first["threads"] == 1
    # Python's, NumPy's and torch's global random states are drawn anew, as in two fresh interpreters.
    assert first["random"] != second["random"] and first["numpy"] != second["numpy"]
    assert len({first["torch"], second["torch"], torch.initial_seed()}) == 3


def test_cm_exit_status_and_signals(tmp_path):
    refused = warm_cm.run(["sample", "--model", str(tmp_path / "none"), "--out", "x.png"], child_env())
    assert refused.returncode == 2 and refused.stderr.startswith("cm: error: model: no such folder")
    assert refused.stdout == "" and refused.stderr.count("\n") == 1
    run = warm_cm.start(["train", "--method", "ict", "--data", "toy:mog8", "--out", str(tmp_path / "run"),
                         "--steps", "100000", "--no-progress"], child_env())
    deadline = time.monotonic() + 60
    while not (tmp_path / "run").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    run.send_signal(signal.SIGKILL)
    assert run.wait(60) == -signal.SIGKILL and run.poll() == -signal.SIGKILL


def test_importing_the_cli_asks_nothing_of_cuda():
    """A process forked after CUDA is initialized cannot use it: the server imports the CLI, so the
    CLI must not ask CUDA anything at import (it used to, for the --device default)."""
    code = ("import torch, torch.cuda\n"
            "def asked(*args, **kwargs):\n"
            "    raise SystemExit('asked CUDA at import')\n"
            "torch.cuda.is_available = torch.cuda.device_count = torch.cuda.init = asked\n"
            "import consistency_models.cli, torch._dynamo\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
