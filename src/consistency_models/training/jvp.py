"""Jacobian-vector products through our networks, for continuous-time consistency training.

`jvp(fn, primals, tangents)` returns (fn(*primals), J·tangents) in one of two modes:

- "exact": forward-mode AD (`torch.func.jvp`). PyTorch's fused attention kernels (the CPU
  flash kernel, CUDA flash / memory-efficient) have no forward-mode formula, so inside the JVP
  the networks' attention carries its own (`networks/attention.py`, `forward_mode()`): the
  forward is the same fused SDPA call, the tangent one flash-style pass over the keys (a Triton
  kernel on CUDA, blocked matmuls elsewhere) — no N×N tangent of the scores is stored.
- "fd": a central finite difference (fn(p + h·v) − fn(p − h·v)) / 2h. `fn` should then compute
  in float64 (the sCM loss passes a float64 copy of the network); the error is O(h²). The
  reference the tests check "exact" against, and a fallback for a network forward AD cannot
  go through.

Stop-gradient: the JVP is taken of a function whose parameters are not differentiated (the
caller runs it under `torch.no_grad()`; forward-mode AD does not need the autograd graph).
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable, Sequence

import torch

from ..errors import InvalidInputError
from ..networks.forward_mode import forward_mode

JVP_MODES = ("exact", "fd")
JVP_PRECISIONS = ("run", "float32")  # the tangent pass under the run's autocast, or in float32 (see methods/scm.py)
FD_STEP = 1e-4  # h of the float64 central difference: error ~1e-8 relative on the networks here


@functools.cache
def load_forward_ad_decompositions() -> None:
    """PyTorch loads its forward-mode decompositions on the first forward-AD call by scripting them
    with `torch.jit.script`, which PyTorch has deprecated: a DeprecationWarning from torch 2.11, a
    FutureWarning — printed in the middle of `cm train`'s progress bar — from 2.14, about an API
    this package never calls. Load them once, with exactly that warning silenced."""
    load = getattr(torch.autograd.forward_ad, "_maybe_load_decompositions", None)
    if load is not None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated")
            load()


def jvp(
    fn: Callable[..., torch.Tensor],
    primals: Sequence[torch.Tensor],
    tangents: Sequence[torch.Tensor],
    mode: str = "exact",
    before_call: Callable[[], None] | None = None,   # e.g. rewinding the RNG so each call sees the same dropout
    step: float = FD_STEP,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(fn(*primals), the directional derivative of fn at primals along tangents)."""
    if mode not in JVP_MODES:
        raise InvalidInputError(f"jvp: {mode!r} is not one of {', '.join(JVP_MODES)}")
    primals, tangents = tuple(primals), tuple(tangents)
    if mode == "exact":
        load_forward_ad_decompositions()
        if before_call is not None:
            before_call()
        with forward_mode():
            return torch.func.jvp(fn, primals, tangents)
    calls = []
    for sign in (0.0, 1.0, -1.0):
        if before_call is not None:
            before_call()
        calls.append(fn(*(p + sign * step * t.to(p.dtype) for p, t in zip(primals, tangents))))
    value, plus, minus = calls
    return value, (plus - minus) / (2 * step)


__all__ = ["FD_STEP", "JVP_MODES", "JVP_PRECISIONS", "jvp"]
