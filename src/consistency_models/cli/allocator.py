"""Keep freed memory inside the process, so that big tensors do not page-fault afresh every step.

glibc's malloc hands blocks above a moving threshold straight back to the operating system
(munmap, heap trimming); the next step's tensors of the same sizes then fault in fresh zeroed
pages, which is kernel time on every activation and optimizer temporary. On the `imagenet64`
CT step (2 CPU cores, batch 2) that was 27 s of system time in an 87 s run; fixing the mmap
threshold at glibc's maximum (32 MiB) and never trimming took the step from 12.8 to 11.2 s in
float32 and from 8.2 to 6.8 s in bfloat16 (`bench/train_step.py`). It is the same setting as
the `MALLOC_MMAP_THRESHOLD_` / `MALLOC_TRIM_THRESHOLD_` environment variables, applied with
mallopt(3) at run time; the process keeps its peak heap (the memory a step needs anyway).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's upper limit on 64-bit systems
NEVER_TRIM = -1                  # mallopt(3): "Setting M_TRIM_THRESHOLD to -1 disables trimming"


def _glibc() -> ctypes.CDLL | None:
    """The C library where it is glibc on Linux, else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):  # glibc only (not musl)
        return None
    return libc


def release_freed_memory() -> None:
    """Hand the heap's free memory back to the system now (malloc_trim(3)), e.g. after an attempt
    that ran out of memory: a kept heap would leave a smaller retry no address space under a cap."""
    libc = _glibc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim(0)


def keep_freed_memory() -> bool:
    """Apply the setting to this process; True where it took effect (glibc on Linux), False
    elsewhere (other C libraries, macOS, Windows), where nothing is changed."""
    libc = _glibc()
    if libc is None:
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) == 1 and mallopt(M_TRIM_THRESHOLD, NEVER_TRIM) == 1
