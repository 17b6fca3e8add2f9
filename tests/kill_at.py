"""Run `cm ARGS...` and SIGKILL the process itself at a chosen write event: a real kill -9 at a
point a test picks, instead of a race against a timer.

    python tests/kill_at.py EVENT N -- ARGS...

EVENT is one of
  half-savez   the N-th `numpy.savez` writes half of its bytes, flushes them, then the kill
  pre-replace  the N-th `os.replace` (the rename that publishes a finished temp file) is never made
  post-replace the N-th `os.replace` is made, then the kill (the next step never starts)
  pre-rmtree   the N-th `shutil.rmtree` is never made
A run that never reaches the event exits normally with code 3 so that a test notices.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import sys

import numpy as np


def kill() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def arm(event: str, n: int) -> None:
    calls = [0]

    def due() -> bool:
        calls[0] += 1
        return calls[0] == n

    if event == "half-savez":
        savez = np.savez

        def half_savez(file, *args, **kwargs):
            if not due():
                return savez(file, *args, **kwargs)
            buffer = io.BytesIO()
            savez(buffer, *args, **kwargs)
            data = buffer.getvalue()
            with open(file, "wb") if isinstance(file, (str, os.PathLike)) else _keep(file) as f:
                f.write(data[: len(data) // 2])
                f.flush()
                os.fsync(f.fileno())
            kill()

        np.savez = half_savez
    elif event in ("pre-replace", "post-replace"):
        replace = os.replace

        def killing_replace(src, dst, *args, **kwargs):
            if not due():
                return replace(src, dst, *args, **kwargs)
            if event == "post-replace":
                replace(src, dst, *args, **kwargs)
            kill()

        os.replace = killing_replace
    elif event == "pre-rmtree":
        rmtree = shutil.rmtree

        def killing_rmtree(path, *args, **kwargs):
            if not due():
                return rmtree(path, *args, **kwargs)
            kill()

        shutil.rmtree = killing_rmtree
    else:
        raise SystemExit(f"kill_at.py: unknown event {event!r}")


class _keep:
    """An open file used as a context manager without closing it."""

    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self.f

    def __exit__(self, *exc):
        return False


if __name__ == "__main__":
    event, n, dashes, *argv = sys.argv[1:]
    assert dashes == "--", "usage: kill_at.py EVENT N -- ARGS..."
    arm(event, int(n))
    from consistency_models.cli import main

    code = main(argv)
    sys.exit(3 if code == 0 else code)
