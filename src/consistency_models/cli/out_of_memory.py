"""Running out of memory as one line: which errors mean it, and the batch that would fit.

PyTorch reports a failed allocation several ways: MemoryError, torch.OutOfMemoryError (CUDA), a
RuntimeError of its CPU allocator ("DefaultCPUAllocator: can't allocate memory"), the one a
memory cap (ulimit, a container) gives on the CPU, and oneDNN's "could not create a primitive"
when its convolution cannot get its workspace (seen under the same cap, about one run in three).
"""

from __future__ import annotations

import gc
from typing import Callable

import torch

from .allocator import release_freed_memory

ALLOCATOR_MESSAGES = ("can't allocate memory", "not enough memory", "out of memory", "could not create a primitive")


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in ALLOCATOR_MESSAGES)


def fitting_batch(attempt: Callable[[int], object], batch: int) -> int:
    """The largest of batch/2, batch/4, …, 1 for which `attempt(size)` runs without running out of
    memory (0 if none does); each try's memory is freed before the next."""
    size = batch // 2
    while size >= 1:
        try:
            attempt(size)
            return size
        except Exception as exc:  # noqa: BLE001 — only running out of memory is caught
            if not is_out_of_memory(exc):
                raise
        finally:
            gc.collect()
            release_freed_memory()
        size //= 2
    return 0
