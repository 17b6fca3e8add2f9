"""Whether the networks are being run under forward-mode AD (a JVP), for the two places whose
fastest kernels do not carry a tangent correctly:

- PyTorch's fused attention kernels have no forward-mode formula: inside this context the
  networks' attention uses its own (`attention.py`);
- the CPU GroupNorm kernel, given bfloat16 activations with float32 weights, returns a float32
  tangent for a bfloat16 output (PyTorch 2.13), which the next autocast op then refuses: inside
  this context `group_norm_fp32` casts explicitly.

`training/jvp.py` enters `forward_mode()` around its `torch.func.jvp`. The state is a plain module
global, so torch.compile guards on it.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

_active = False


@contextmanager
def forward_mode() -> Iterator[None]:
    """Within this context `in_forward_mode()` is True (nesting restores the outer state)."""
    global _active
    previous, _active = _active, True
    try:
        yield
    finally:
        _active = previous


def in_forward_mode() -> bool:
    return _active


__all__ = ["forward_mode", "in_forward_mode"]
