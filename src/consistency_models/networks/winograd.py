"""Winograd F(2×2, 3×3) convolution for CPU inference (Lavin & Gray 2016, arXiv 1509.09308).

A 3×3 convolution (stride 1, padding 1) computed on 4×4 input tiles with stride 2: each tile
is transformed (V = Bᵀ·d·B), multiplied channel-wise with the transformed filters
(U = G·g·Gᵀ, 16 batched GEMMs) and transformed back (Y = Aᵀ·M·A) into a 2×2 output tile.
That is 16 multiplications per output tile and input/output channel pair instead of 36:
2.25× fewer FLOPs, paid for with transforms that read and write the activations a few times.
It wins where channels are wide and images small enough for the transforms to stay in cache
(measured against oneDNN on a 2-core AVX-512 CPU at batch 4: 1.2× at 192 channels and 64 px,
1.5–2× at 384–768 channels and 8–32 px, a loss below ~128 channels), and its float32 error is
that of the direct convolution (F(2, 3) only adds, subtracts and halves; ~1e-6 either way).
On a CPU with AMX for the input's dtype (bfloat16 from Sapphire Rapids on) oneDNN's direct
convolution runs on the tile unit (bfloat16 matmul at 1.6–1.9 TFLOP/s on 2 cores, against 0.3 in
float32), and Winograd's memory-bound transforms lose: it is left to oneDNN there (`amx_convolves`).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from .half_compute import matmul_dtype

# Filter transform G (4×3), input transform Bᵀ (4×4), output transform Aᵀ (2×4) of F(2, 3).
_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))
_AT = ((1.0, 1.0, 1.0, 0.0), (0.0, 1.0, -1.0, -1.0))
# Transformed input tiles of one chunk stay under this size (L2/L3-sized; measured best at 16 MiB).
CHUNK_BYTES = 16 << 20


def winograd_weight(weight: torch.Tensor) -> torch.Tensor:
    """U = G·g·Gᵀ for each (out, in) 3×3 filter, as (16, C_in, C_out) in weight's dtype.

    Computed in float32 at least (G only holds 0, ±½ and 1, so float32 is within an ulp).
    """
    c_out, c_in, kh, kw = weight.shape
    if (kh, kw) != (3, 3):
        raise ValueError(f"weight: Winograd F(2x2, 3x3) needs 3x3 filters, got {kh}x{kw}")
    dtype = torch.promote_types(weight.dtype, torch.float32)
    g = torch.tensor(_G, dtype=dtype, device=weight.device)
    # One GEMM with kron(G, G) (16×9): U[4i+j] = Σ_kl G[i,k]·g[k,l]·G[j,l].
    u = weight.detach().to(dtype).reshape(c_out, c_in, 9) @ torch.kron(g, g).T  # (C_out, C_in, 16)
    return u.permute(2, 1, 0).to(weight.dtype).contiguous()


_OUTPUT_MATRICES: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}


def _output_matrix(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """K (4, 16): row 2i+j holds Aᵀ[i, r]·Aᵀ[j, c] at column 4r+c, so K·M maps a tile's 16
    products M to its 2×2 outputs (Y = Aᵀ·M·A)."""
    if (dtype, device) not in _OUTPUT_MATRICES:
        at = torch.tensor(_AT, dtype=torch.float64)
        k = torch.einsum("ir,jc->ijrc", at, at).reshape(4, 16)
        _OUTPUT_MATRICES[dtype, device] = k.to(device=device, dtype=dtype)
    return _OUTPUT_MATRICES[dtype, device]


def _tile_bytes(height: int, width: int, channels: int, element_size: int) -> int:
    """Bytes of one sample's transformed tiles: 16 values per 2×2 output pixels and channel."""
    return 4 * height * width * channels * element_size


def winograd_conv3x3(
    x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None = None, chunk_bytes: int = CHUNK_BYTES
) -> torch.Tensor:
    """conv2d(x, weight, bias, padding=1) from u = winograd_weight(weight); x is (B, C, H, W), H and W even.

    Works on the (B, H, W, C) order: it is free for a channels_last x, and the result is
    channels_last. Samples are processed in chunks whose transformed input stays under
    `chunk_bytes`, so that the intermediates stay in cache.
    """
    b, c, height, width = x.shape
    out = x.new_empty((b, height // 2, 2, width // 2, 2, u.shape[-1]))
    step = max(1, min(b, chunk_bytes // _tile_bytes(height, width, max(c, u.shape[-1]), x.element_size())))
    xh = x.permute(0, 2, 3, 1)
    for start in range(0, b, step):
        _winograd_tiles(xh[start:start + step], u, bias, out[start:start + step])
    return out.view(b, height, width, -1).permute(0, 3, 1, 2)


def _input_transform(d0: torch.Tensor, d1: torch.Tensor, d2: torch.Tensor, d3: torch.Tensor, dim: int) -> torch.Tensor:
    """Bᵀ·d along one axis: (d0−d2, d1+d2, d2−d1, d1−d3) stacked at `dim`.

    Each combination is written straight into its slice of the result (no stack copy).
    """
    shape = list(d0.shape)
    shape.insert(dim if dim >= 0 else len(shape) + dim + 1, 4)
    result = d0.new_empty(shape)
    parts = result.unbind(dim)
    torch.sub(d0, d2, out=parts[0])
    torch.add(d1, d2, out=parts[1])
    torch.sub(d2, d1, out=parts[2])
    torch.sub(d1, d3, out=parts[3])
    return result


def _winograd_tiles(xh: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor) -> None:
    """The convolution of xh (B, H, W, C) written into out (B, H/2, 2, W/2, 2, C_out)."""
    b, height, width, c = xh.shape
    c_out = u.shape[-1]
    th, tw = height // 2, width // 2
    tiles = b * th * tw
    xp = F.pad(xh, (0, 0, 1, 1, 1, 1))                                 # (B, H+2, W+2, C)
    # Rows: tile row i reads padded rows 2i..2i+3 (d0..d3).
    even, odd = xp[:, 0::2], xp[:, 1::2]
    rows = _input_transform(even[:, :th], odd[:, :th], even[:, 1:th + 1], odd[:, 1:th + 1], 0)  # (4, B, th, W+2, C)
    # Columns, the same combination, stacked into the GEMM layout (4, 4, B, th, tw, C) = (16, tiles, C).
    even, odd = rows[..., 0::2, :], rows[..., 1::2, :]
    v = _input_transform(even[..., :tw, :], odd[..., :tw, :], even[..., 1:tw + 1, :], odd[..., 1:tw + 1, :], 1)
    m = torch.bmm(v.reshape(16, tiles, c), u)                          # (16, tiles, C_out)
    y = torch.mm(_output_matrix(m.dtype, m.device), m.view(16, tiles * c_out))  # (4, tiles·C_out)
    y = y.view(2, 2, b, th, tw, c_out).permute(2, 3, 0, 4, 1, 5)       # (B, th, 2, tw, 2, C_out)
    if bias is None:
        out.copy_(y)
    else:
        torch.add(y, bias, out=out)


@functools.cache
def amx_convolves(dtype: torch.dtype) -> bool:
    """Whether this CPU has Intel AMX tiles for `dtype` (bfloat16: Sapphire Rapids on, measured;
    float16: AMX-FP16, Granite Rapids on, by analogy — no such CPU was at hand), with which oneDNN's
    direct convolution is faster than Winograd."""
    if dtype == torch.bfloat16:
        probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    elif dtype == torch.float16:
        probe = getattr(torch.cpu, "_is_amx_fp16_supported", None)
    else:
        return False
    return bool(probe()) if probe is not None else False


def winograd_pays_off(
    x: torch.Tensor, weight: torch.Tensor, chunk_bytes: int = CHUNK_BYTES, dtype: torch.dtype | None = None
) -> bool:
    """Whether Winograd beats the direct (oneDNN) convolution here: CPU, even sizes, ≥ 128 channels
    in and out, one sample's transformed tiles ≤ 2·chunk_bytes (measured on a 2-core AVX-512 CPU),
    and no AMX for x's dtype. With AMX (bfloat16, Sapphire Rapids) the direct channels_last
    convolution ran 0.98–6.1× as fast as Winograd at 128–576 channels and 4–64 px (batch 1, 4,
    16); at 512–768 channels and 8 px Winograd still gained up to 1.4× at batch 1–4, about 1.6 %
    of an imagenet64 call, too little to keep a second rule for. `dtype`: the dtype the
    convolution would compute in, when not x's (float32 for half inputs in `Float32Matmuls`)."""
    dtype = dtype or x.dtype
    c_out, c_in = weight.shape[:2]
    height, width = x.shape[-2:]
    per_sample = _tile_bytes(height, width, max(c_in, c_out), dtype.itemsize)
    return (
        x.device.type == "cpu" and x.ndim == 4 and height % 2 == 0 and width % 2 == 0
        and min(c_in, c_out) >= 128 and per_sample <= 2 * chunk_bytes and not amx_convolves(dtype)
    )


class Conv3x3(nn.Conv2d):
    """A 3×3, stride-1, padding-1 nn.Conv2d (same parameters and state dict) that, once
    `winograd` is set, runs eager inference without autograd through `winograd_conv3x3` where
    that pays off. The transformed filters are cached and recomputed whenever the weight
    changes (in place or by `.to()`). Under torch.compile it is the plain convolution:
    inductor traces Winograd into slower code than its own prepacked oneDNN convolution."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, 3, padding=1)
        self.winograd = False
        self._u: torch.Tensor | None = None
        self._u_key: tuple | None = None

    def transformed_weight(self) -> torch.Tensor:
        """winograd_weight(self.weight), cached while the weight is unchanged."""
        w = self.weight
        key = (w._version, w.data_ptr(), w.dtype, w.device)
        if self._u is None or self._u_key != key:
            self._u, self._u_key = winograd_weight(w), key
        return self._u

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.winograd and not torch.is_grad_enabled() and not torch.compiler.is_compiling():
            dtype = matmul_dtype(x)  # float32 for half inputs on a CPU without half arithmetic
            if winograd_pays_off(x, self.weight, dtype=dtype):
                # The filters stay cached in the weight's dtype (float32 ones would hold 16/9 of a
                # float32 copy of the weights) and are widened per call.
                bias = None if self.bias is None else self.bias.to(dtype)
                return winograd_conv3x3(x.to(dtype), self.transformed_weight().to(dtype), bias).to(x.dtype)
        return super().forward(x)
