"""Half-precision networks on a CPU without half-precision arithmetic: the matrix work in float32.

oneDNN computes bfloat16 convolutions and matrix products with AVX-512-BF16 or AMX instructions
and float16 ones with AMX-FP16. A CPU without them (every AVX2-only CPU: AMD before Zen 4, Intel
client CPUs without AVX-512) gets PyTorch's fallback loops instead, measured on a 2-core AVX2
EPYC (torch 2.13): a 1024³ matmul in 2.2 s in bfloat16 against 25 ms in float32 (90×), a
192-channel 3×3 convolution at 64 px, batch 4, in 0.62 s channels_last (20 s NCHW) against 59 ms.

`Float32Matmuls`, a TorchFunctionMode, computes the convolutions, linear layers, matrix products
and attention of half-precision CPU tensors in float32 from the same values (every bfloat16 and
float16 number is a float32 number) and rounds the result to the input's dtype — what a native
kernel accumulating in float32 returns, up to the order of its sums — at float32's speed and
without a float32 copy of the weights. Element-wise work stays in the half dtype (ATen computes
it through float32 vectors anyway). `UNetModel` enters it for eager inference with fast kernels
on; `matmul_dtype` tells code inside it (the Winograd convolution) which dtype to compute in.
"""

from __future__ import annotations

import contextvars
import functools
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

HALF = (torch.bfloat16, torch.float16)
MATRIX_OPS = frozenset({
    F.linear, F.conv1d, F.conv2d, F.conv_transpose1d, F.conv_transpose2d, F.scaled_dot_product_attention,
    torch.matmul, torch.mm, torch.bmm, torch.addmm, torch.baddbmm, torch.einsum,
    torch.Tensor.matmul, torch.Tensor.__matmul__, torch.Tensor.mm, torch.Tensor.bmm,
})
_active: contextvars.ContextVar[bool] = contextvars.ContextVar("float32_matmuls", default=False)


@functools.cache
def half_arithmetic(dtype: torch.dtype) -> bool:
    """Whether this CPU computes `dtype` convolutions and matmuls natively: bfloat16 with
    AVX-512-BF16 or AMX tiles, float16 with AMX-FP16 (on the AVX-512-BF16 CPU measured in
    docs/benchmarks.md float16 training ran at 8× the float32 time). AVX-512 without BF16 counts
    as none: oneDNN emulates bfloat16 there with float32 arithmetic, which float32 cannot lose to."""
    if dtype == torch.bfloat16:
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    elif dtype == torch.float16:
        probes = ("_is_amx_fp16_supported",)
    else:
        return True
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def needs_float32_matmuls(x: torch.Tensor) -> bool:
    """Whether x is a half-precision CPU tensor this CPU has no arithmetic for."""
    return x.device.type == "cpu" and x.dtype in HALF and not half_arithmetic(x.dtype)


def matmul_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype x's matrix work runs in: float32 for a half CPU tensor inside `Float32Matmuls`."""
    return torch.float32 if _active.get() and x.device.type == "cpu" and x.dtype in HALF else x.dtype


class Float32Matmuls(TorchFunctionMode):
    """Inside it, MATRIX_OPS given a half-precision CPU tensor compute in float32 and return the
    input's half dtype (module docstring)."""

    def __enter__(self) -> Float32Matmuls:
        self._token = _active.set(True)
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        _active.reset(self._token)

    def __torch_function__(self, func: Callable, types: tuple, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func not in MATRIX_OPS:
            return func(*args, **kwargs)
        half = [t.dtype for t in _tensors((args, kwargs)) if t.device.type == "cpu" and t.dtype in HALF]
        if not half:
            return func(*args, **kwargs)
        up = tree_map(_to_float32, (args, kwargs))
        out = func(*up[0], **up[1])
        return tree_map(lambda t: t.to(half[0]) if isinstance(t, torch.Tensor) and t.is_floating_point() else t, out)


def _tensors(tree: Any) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    tree_map(lambda t: found.append(t) if isinstance(t, torch.Tensor) else None, tree)
    return found


def _to_float32(t: Any) -> Any:
    return t.float() if isinstance(t, torch.Tensor) and t.dtype in HALF else t
