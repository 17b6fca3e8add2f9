"""Real `cm` child processes without a fresh interpreter's start-up.

A fresh `python -m consistency_models ...` spends 2.5 s of CPU importing torch (4 s with the
torch._dynamo that `cm train` imports) before it does anything, and the suite starts dozens.
Here they are forked from a server process that has imported torch and the package once (the
standard library's multiprocessing forkserver, with the CLI preloaded). Each child is still a
process of its own — its own pid, working folder, environment, output files, signal handlers and
exit status, killed by real signals — and runs what `python -m consistency_models ARGS` runs:
`main(ARGS)`, its return value the exit status (an uncaught exception: status 1, its traceback
after a line naming the process).

What a fork would share and fresh interpreters would not is drawn again in the child: Python's,
NumPy's and torch's global random states (from the OS, as a fresh interpreter seeds them), the
thread count (the child's OMP_NUM_THREADS), and for a script a fresh interpreter's sys.path (its
folder first, none of pytest's entries). What stays the server's: the hash seed of str, the
modules it imported — with what they read from the environment and any warning they printed then
(the package asks nothing of the environment or of CUDA at import) — and the descriptors
multiprocessing keeps open. So a test of a command's exact output or of an entry point runs a
fresh interpreter (`cm --help`, `python -m consistency_models` in tests/test_cli.py, a refused
`cm train` in tests/test_train_cli.py, torchrun), and of two runs compared bit for bit one is a
fresh interpreter, so that nothing the two share could hide an unseeded draw.
tests/test_warm_cm.py checks what is said here.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import random
import runpy
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

HERE = Path(__file__).resolve().parent
_CONTEXT = multiprocessing.get_context("forkserver")
# Imports only: the server must start no thread, run no OpenMP region and ask nothing of CUDA
# (a process forked after CUDA is initialized cannot use it), or its children would inherit that.
_CONTEXT.set_forkserver_preload(["consistency_models.cli", "torch._dynamo"])  # cm train imports torch._dynamo
_LIVE: set[WarmProcess] = set()


def _child(argv: list[str], env: dict[str, str], cwd: str, out: str, err: str, kill_at: tuple[str, int] | None,
           script: str | None) -> None:
    """The child's body: the environment, folder and standard streams of a fresh process, then
    `main(argv)` (or the Python `script` as `python script argv` runs it)."""
    for fd, path in ((1, out), (2, err)):  # first: whatever fails next is this child's to report
        target = os.open(path, os.O_WRONLY | os.O_APPEND)
        os.dup2(target, fd)
        os.close(target)
    import numpy as np
    import torch

    if torch.cuda._is_in_bad_fork():
        raise RuntimeError("warm_cm: the server initialized CUDA before forking; its children cannot use it")
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    random.seed()
    np.random.seed()
    torch.seed()  # a fresh interpreter's torch starts from a non-deterministic seed too
    if env.get("OMP_NUM_THREADS", "").isdigit():
        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    sys.argv = [script or "cm", *argv]
    if script is not None:  # `python script` puts the script's folder first, and knows nothing of pytest's
        pytests = {"", str(HERE), str(HERE.parent)}
        sys.path[:] = [str(Path(script).parent)] + [entry for entry in sys.path if entry not in pytests]
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
                 kill_at: tuple[str, int] | None, script: str | os.PathLike | None):
        self.args = [str(script or "cm"), *argv]
        self._folder = tempfile.TemporaryDirectory(prefix="warm-cm-")
        self._out = Path(self._folder.name, "stdout")
        self._err = Path(self._folder.name, "stderr")
        self._out.touch()
        self._err.touch()
        self._process = _CONTEXT.Process(target=_child, daemon=False, args=(
            list(argv), dict(env), str(cwd or os.getcwd()), str(self._out), str(self._err), kill_at,
            None if script is None else str(script)))
        self._process.start()
        self.pid: int = self._process.pid
        self.returncode: int | None = None
        _LIVE.add(self)

    def poll(self) -> int | None:
        if self.returncode is None and not self._process.is_alive():
            self._process.join()
            self.returncode = self._process.exitcode
            _LIVE.discard(self)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self.poll() is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:  # ended and reaped by the server, its status not yet sent
                pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def output(self) -> tuple[str, str]:
        """What the child wrote to stdout and to stderr."""
        return self._out.read_text(errors="replace"), self._err.read_text(errors="replace")

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self.wait(timeout)
        return self.output()

    def __del__(self) -> None:
        folder = getattr(self, "_folder", None)
        if folder is not None:
            folder.cleanup()


def start(argv: Sequence[str], env: dict[str, str], cwd: str | os.PathLike | None = None, *,
          kill_at: tuple[str, int] | None = None, script: str | os.PathLike | None = None) -> WarmProcess:
    """`cm argv` as a running child process (`kill_at=(event, n)`: SIGKILLed at that write event,
    as tests/kill_at.py does; `script`: `python script argv` instead of cm)."""
    return WarmProcess(argv, env, cwd, kill_at, script)


def run(argv: Sequence[str], env: dict[str, str], cwd: str | os.PathLike | None = None, *,
        timeout: float | None = None, kill_at: tuple[str, int] | None = None,
        script: str | os.PathLike | None = None) -> subprocess.CompletedProcess:
    """`cm argv` (or `python script argv`) to its end, as `subprocess.run(..., capture_output=True,
    text=True)` returns it."""
    process = start(argv, env, cwd, kill_at=kill_at, script=script)
    try:
        out, err = process.communicate(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise subprocess.TimeoutExpired(process.args, timeout, *process.output()) from None
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


@atexit.register  # registered after multiprocessing's own hook, so it runs first: that one waits
def _kill_leftovers() -> None:  # for every child without a timeout, and a test that failed
    for process in list(_LIVE):  # midway may have left one running
        process.kill()
        process.wait(10)
