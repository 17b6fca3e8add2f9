"""keep_freed_memory: a step's big tensors come from the heap and stay there when freed (glibc only)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# mallinfo2 (glibc ≥ 2.33): hblkhd = bytes in mmapped blocks, fordblks = free bytes kept in the heap.
PROBE = """
import ctypes, json, sys, torch
from consistency_models.cli.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "on" else False
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL("libc.so.6")
if not hasattr(libc, "mallinfo2"):
    print(json.dumps(None)); sys.exit()
libc.mallinfo2.restype = MallInfo2
xs = [torch.ones(5_000_000) for _ in range(4)]    # a step's activations: 4 × 20 MB
live = libc.mallinfo2()
del xs
freed = libc.mallinfo2()
print(json.dumps({"applied": applied, "live_mmapped": live.hblkhd, "freed_kept": freed.fordblks}))
"""
MB = 2**20


def probe(mode: str) -> dict | None:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_freed_step_memory_stays_in_the_process():
    on = probe("on")
    if on is None or not on["applied"]:
        pytest.skip("not glibc ≥ 2.33: nothing to tune or to observe")
    off = probe("off")
    # glibc's default: each 20 MB block is mmapped and handed back to the OS when freed.
    assert off["live_mmapped"] >= 80 * MB and off["freed_kept"] < 20 * MB
    # Tuned: the blocks come from the heap and the 80 MB stay there for the next step.
    assert on["live_mmapped"] < 20 * MB and on["freed_kept"] >= 75 * MB
