"""Real `cm` child processes without a fresh interpreter's start-up.

A fresh `python -m consistency_models ...` spends 2.5 s of CPU importing torch (4 s with the
torch._dynamo that `cm train` imports) before it does anything, and the suite starts dozens. Here they are forked from a server process that
has imported torch and the package once (the standard library's multiprocessing forkserver, with
the CLI preloaded). Each child is still a process of its own — its own pid, working folder,
environment, files, signal handlers and exit status, killed by real signals — and runs what
`python -m consistency_models ARGS` runs: `main(ARGS)`, its return value the exit status.

What a fork would share and fresh interpreters would not is drawn again in the child: Python's,
NumPy's and torch's global random states (from the OS, as a fresh interpreter seeds them), and the
thread count follows the child's OMP_NUM_THREADS. Two things stay the server's: the hash seed of str, and
what a module read from the environment when it was imported (this package reads its settings
when it uses them, and the tests set none of torch's). A test that compares two runs bit for bit
starts one of them as a fresh interpreter (`python -m`), so that nothing the two share could hide
an unseeded draw. The entry points themselves (`cm`, `python -m consistency_models`, torchrun)
are tested with fresh interpreters; tests/test_warm_cm.py checks what is said here.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import runpy
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(["consistency_models.cli", "torch._dynamo", "warm_cm", "kill_at"])  # cm train imports dynamo


def _child(argv: list[str], env: dict[str, str], cwd: str, out: str, err: str, kill_at: tuple[str, int] | None,
           script: str | None) -> None:
    """The child's body: the environment, folder and standard streams of a fresh process, then
    `main(argv)` (or the Python `script` as `python script argv` runs it)."""
    import numpy as np
    import torch

    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    for fd, path in ((1, out), (2, err)):
        target = os.open(path, os.O_WRONLY | os.O_APPEND)
        os.dup2(target, fd)
        os.close(target)
    random.seed()
    np.random.seed()
    torch.seed()  # a fresh interpreter's torch starts from a non-deterministic seed too
    if env.get("OMP_NUM_THREADS", "").isdigit():
        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    sys.argv = [script or "cm", *argv]
    if script is not None:
        sys.path.insert(0, str(Path(script).parent))
        runpy.run_path(script, run_name="__main__")
        return
    if kill_at is not None:
        import kill_at as killer

        killer.arm(*kill_at)
    from consistency_models.cli import main

    code = main(argv)
    sys.exit(3 if kill_at is not None and code == 0 else code)  # kill_at.py's "never reached the event"


class WarmProcess:
    """The part of `subprocess.Popen` the tests use, for a forked `cm` child; its output is read
    with `communicate` (or `output`) once it has ended."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], cwd: str | os.PathLike | None,
                 merge_stderr: bool, kill_at: tuple[str, int] | None, script: str | os.PathLike | None):
        self.args = [str(script or "cm"), *argv]
        self._folder = tempfile.TemporaryDirectory(prefix="warm-cm-")
        self._out = Path(self._folder.name, "stdout")
        self._err = self._out if merge_stderr else Path(self._folder.name, "stderr")
        self._out.touch()
        self._err.touch()
        self._process = _CONTEXT.Process(target=_child, daemon=False, args=(
            list(argv), dict(env), str(cwd or os.getcwd()), str(self._out), str(self._err), kill_at,
            None if script is None else str(script)))
        self._process.start()
        self.pid: int = self._process.pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and not self._process.is_alive():
            self._process.join()
            self.returncode = self._process.exitcode
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self.poll() is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(9)

    def output(self) -> tuple[str, str]:
        """What the child wrote to stdout and stderr (stdout only, twice, when they were merged)."""
        return self._out.read_text(errors="replace"), self._err.read_text(errors="replace")

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self.wait(timeout)
        return self.output()

    def __del__(self) -> None:
        folder = getattr(self, "_folder", None)
        if folder is not None:
            folder.cleanup()


def start(argv: Sequence[str], env: dict[str, str], cwd: str | os.PathLike | None = None, *,
          merge_stderr: bool = False, kill_at: tuple[str, int] | None = None,
          script: str | os.PathLike | None = None) -> WarmProcess:
    """`cm argv` as a running child process (`kill_at=(event, n)`: SIGKILLed at that write event,
    as tests/kill_at.py does; `script`: `python script argv` instead of cm)."""
    return WarmProcess(argv, env, cwd, merge_stderr, kill_at, script)


def run(argv: Sequence[str], env: dict[str, str], cwd: str | os.PathLike | None = None, *,
        timeout: float | None = None, kill_at: tuple[str, int] | None = None,
        script: str | os.PathLike | None = None) -> subprocess.CompletedProcess:
    """`cm argv` (or `python script argv`) to its end, as `subprocess.run(..., capture_output=True,
    text=True)` returns it."""
    process = start(argv, env, cwd, kill_at=kill_at, script=script)
    try:
        out, err = process.communicate(timeout)
    finally:
        process.kill()
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)
