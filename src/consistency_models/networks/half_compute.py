"""Half-precision networks on a CPU without half-precision arithmetic: the matrix work in float32.

oneDNN computes bfloat16 convolutions and matrix products from AVX-512 on (natively with
AVX-512-BF16 or AMX) and float16 ones with AVX512-FP16, AMX-FP16 or AVX-NE-CONVERT. An x86 CPU
without them (every AVX2-only one: AMD before Zen 4, Intel client CPUs without AVX-512) gets
PyTorch's fallback loops instead, 4–280× the float32 time per convolution or matmul, measured
on a 2-core AVX2 EPYC (torch 2.13, `bench/half_kernels.py`): a 1024³ matmul in 2.3 s in
bfloat16 against 18 ms in float32, a 192-channel 3×3 convolution at 64 px, batch 4, in 0.61 s
channels_last (21 s NCHW) against 76 ms.

`Float32Matmuls`, a TorchFunctionMode, computes the convolutions, linear layers, matrix products
and attention of half-precision CPU tensors in float32 from the same values (every bfloat16 and
float16 number is a float32 number) and rounds the result to the input's dtype — what a native
kernel accumulating in float32 returns, up to the order of its sums — at float32's speed and
without a float32 copy of the weights (Winograd's transformed filters, too, stay cached in the
half dtype and are widened per call). Element-wise work stays in the half dtype (ATen computes
it through float32 vectors anyway). `UNetModel` enters it for eager inference with fast kernels
on; `matmul_dtype` tells code inside it (the Winograd convolution) which dtype to compute in.
"""

from __future__ import annotations

import contextvars
import functools
import platform
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
X86 = ("x86_64", "amd64", "i386", "i686", "x86")  # platform.machine() of the CPUs the probe speaks for
_active: contextvars.ContextVar[bool] = contextvars.ContextVar("float32_matmuls", default=False)


@functools.cache
def half_arithmetic(dtype: torch.dtype) -> bool:
    """Whether this CPU computes `dtype` convolutions and matmuls with oneDNN's own kernels, as
    PyTorch asks oneDNN (`torch.ops.mkldnn._is_mkldnn_{bf16,fp16}_supported`: bfloat16 from
    AVX-512 on, natively with AVX-512-BF16 or AMX; float16 with AVX512-FP16, AMX-FP16 or
    AVX-NE-CONVERT). Measured without: an AVX2 CPU (module docstring); float16 training on an
    AVX-512-BF16 CPU without AVX512-FP16 ran at 8× the float32 time. Other architectures than
    x86 count as having it: their half kernels (ARM's BF16 and FP16 extensions) were not
    measured here, so they are left to PyTorch."""
    if dtype not in HALF or platform.machine().lower() not in X86:
        return True
    name = "_is_mkldnn_bf16_supported" if dtype == torch.bfloat16 else "_is_mkldnn_fp16_supported"
    probe = getattr(torch.ops.mkldnn, name, None)
    return bool(probe()) if probe is not None else True


def needs_float32_matmuls(x: torch.Tensor) -> bool:
    """Whether x is a half-precision CPU tensor this CPU has no arithmetic for."""
    return x.device.type == "cpu" and x.dtype in HALF and not half_arithmetic(x.dtype)


def matmul_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype x's matrix work runs in: float32 for a half CPU tensor inside `Float32Matmuls`."""
    return torch.float32 if _active.get() and x.device.type == "cpu" and x.dtype in HALF else x.dtype


class Float32Matmuls(TorchFunctionMode):
    """Inside it, MATRIX_OPS given a half-precision CPU tensor compute in float32 and return the
    input's half dtype (module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self._tokens: list[contextvars.Token] = []

    def __enter__(self) -> Float32Matmuls:
        self._tokens.append(_active.set(True))
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        _active.reset(self._tokens.pop())

    def __torch_function__(self, func: Callable, types: tuple, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func not in MATRIX_OPS or "out" in kwargs:
            return func(*args, **kwargs)
        floating = [t for t in _tensors((args, kwargs)) if t.is_floating_point()]
        dtypes = {t.dtype for t in floating}
        # One half dtype on the CPU throughout; anything else (float32, CUDA, a float32 input to
        # a bfloat16 layer, which PyTorch refuses) goes to PyTorch as it is.
        if len(dtypes) != 1 or not dtypes <= set(HALF) or any(t.device.type != "cpu" for t in floating):
            return func(*args, **kwargs)
        (dtype,) = dtypes
        up = tree_map(_to_float32, (args, kwargs))
        out = func(*up[0], **up[1])
        return tree_map(lambda t: t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t, out)


def _tensors(tree: Any) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    tree_map(lambda t: found.append(t) if isinstance(t, torch.Tensor) else None, tree)
    return found


def _to_float32(t: Any) -> Any:
    return t.float() if isinstance(t, torch.Tensor) and t.dtype in HALF else t
