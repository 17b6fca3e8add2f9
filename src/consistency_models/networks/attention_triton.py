"""The attention JVP as one fused Triton kernel: flash attention's forward pass plus the tangent.

For each block of queries the kernel walks the keys in blocks, keeping flash attention's running
row maximum m and rescaling its sums when m grows, and accumulates in float32

    l = Σ_j p_j,   A = Σ_j p_j·v_j,   T = Σ_j p_j·(v̇_j + ṡ_j·v_j),   c = Σ_j p_j·ṡ_j

with p_j = exp(s_j − m), s = scale·q·k_jᵀ and ṡ = scale·(q̇·k_jᵀ + q·k̇_jᵀ); then O = A/l and
Ȯ = T/l − (c/l)·O (the formula in `attention.py`). Neither the N×N scores nor their tangents
are stored. The matmuls take the inputs' dtype (bfloat16/float16 on tensor cores, float32 in
IEEE precision) and accumulate in float32; p and p·ṡ are rounded to that dtype before their
matmuls, as flash attention rounds p.

Triton is optional: it comes with PyTorch's CUDA builds. With TRITON_INTERPRET=1 set before this
module is imported, the kernel runs on CPU tensors (how the tests check it on a machine without a
GPU); the interpreter multiplies bfloat16 blocks wrongly, so there the tests use float32 and
float16.
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
    from triton.runtime.errors import OutOfResources
except ImportError:  # pragma: no cover - depends on the installation
    triton = None

# Tile configurations (queries per program BLOCK_M, keys per step of the inner loop BLOCK_N,
# software-pipelining stages), fastest first; each needs less shared memory than the one before.
# The first needs more than some GPUs have for some inputs (float32 heads of width 64: 192 KiB,
# an A100 has 163 KiB; width 128: 352 KiB, an H100 has 227 KiB): the kernel takes the first
# configuration that fits the device (`bench/triton_shared_memory.py` prints each one's need).
TILES: tuple[tuple[int, int, int], ...] = ((64, 64, 3), (64, 64, 2), (64, 32, 2), (64, 32, 1))


class TilesDoNotFit(RuntimeError):
    """No configuration in TILES fits the device's shared memory for these inputs."""


def triton_available() -> bool:
    """True when Triton is installed (and, outside the interpreter, a CUDA device exists)."""
    if triton is None:
        return False
    return os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available()


if triton is not None:

    @triton.jit
    def _attention_jvp_kernel(
        Q, K, V, DQ, DK, DV, Out, DOut,
        stride_b, stride_h, stride_n, stride_d,          # the six inputs' (B, H, N, d) strides
        heads, n, d, scale,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        base = (pid_bh // heads) * stride_b + (pid_bh % heads) * stride_h
        out_base = pid_bh * n * d                         # the outputs are contiguous (B, H, N, d)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        mask_q = (offs_m[:, None] < n) & (offs_d[None, :] < d)
        q_offsets = base + offs_m[:, None] * stride_n + offs_d[None, :] * stride_d
        q = tl.load(Q + q_offsets, mask=mask_q, other=0.0)
        dq = tl.load(DQ + q_offsets, mask=mask_q, other=0.0)

        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        c_i = tl.zeros([BLOCK_M], tl.float32)
        acc_o = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        acc_t = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for start in range(0, n, BLOCK_N):
            offs_n = start + tl.arange(0, BLOCK_N)
            mask_kv = (offs_n[:, None] < n) & (offs_d[None, :] < d)
            kv_offsets = base + offs_n[:, None] * stride_n + offs_d[None, :] * stride_d
            k = tl.load(K + kv_offsets, mask=mask_kv, other=0.0)
            dk = tl.load(DK + kv_offsets, mask=mask_kv, other=0.0)
            v = tl.load(V + kv_offsets, mask=mask_kv, other=0.0)
            dv = tl.load(DV + kv_offsets, mask=mask_kv, other=0.0)

            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
            ds = (tl.dot(dq, tl.trans(k), input_precision=PRECISION)
                  + tl.dot(q, tl.trans(dk), input_precision=PRECISION)) * scale
            s = tl.where(offs_n[None, :] < n, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(s - m_new[:, None])
            p_ds = p * ds
            l_i = l_i * alpha + tl.sum(p, 1)
            c_i = c_i * alpha + tl.sum(p_ds, 1)
            p_low = p.to(v.dtype)
            acc_o = acc_o * alpha[:, None] + tl.dot(p_low, v, input_precision=PRECISION)
            acc_t = (acc_t * alpha[:, None] + tl.dot(p_low, dv, input_precision=PRECISION)
                     + tl.dot(p_ds.to(v.dtype), v, input_precision=PRECISION))
            m_i = m_new

        o = acc_o / l_i[:, None]
        do = acc_t / l_i[:, None] - (c_i / l_i)[:, None] * o
        out_offsets = out_base + offs_m[:, None] * d + offs_d[None, :]
        tl.store(Out + out_offsets, o.to(Out.dtype.element_ty), mask=mask_q)
        tl.store(DOut + out_offsets, do.to(DOut.dtype.element_ty), mask=mask_q)


# (device, dtype, BLOCK_D) → the index in TILES of the first configuration that fitted there.
# Triton also specialises the kernel on the inputs' alignment (a last stride of 1, multiples of
# 16), which changes its shared memory; a call laid out otherwise starts from the cached index and
# may step further down (len(TILES): none fitted; "auto" then takes the PyTorch pass).
_fitting_tiles: dict[tuple[torch.device, torch.dtype, int], int] = {}


def attention_jvp_triton(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor,
    tiles: tuple[int, int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(O, Ȯ) of (B, H, N, d) tensors of one dtype (float32, float16 or bfloat16), by the kernel.

    `tiles`: one (BLOCK_M, BLOCK_N, stages) to use; by default the first of TILES that fits the
    device's shared memory (found once per device, dtype and head width: a configuration that
    does not fit is refused by Triton before it launches). TilesDoNotFit when none does."""
    if triton is None:
        raise RuntimeError("attention_jvp_triton: Triton is not installed (it comes with PyTorch's CUDA builds)")
    inputs = [q, k, v, dq, dk, dv]
    if len({x.dtype for x in inputs}) != 1 or q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"attention_jvp_triton: inputs must share one dtype of float32, float16 or bfloat16, got "
                         f"{sorted({str(x.dtype) for x in inputs})}")
    if len({tuple(x.shape) for x in inputs}) != 1 or q.dim() != 4:
        raise ValueError("attention_jvp_triton: q, k, v and their tangents must all have one (B, H, N, d) shape")
    if len({x.stride() for x in inputs}) != 1:  # one set of strides for all six
        inputs = [x.contiguous() for x in inputs]
    batch, heads, n, d = q.shape
    out = torch.empty((batch, heads, n, d), dtype=q.dtype, device=q.device)
    dout = torch.empty_like(out)
    block_d = max(16, triton.next_power_of_2(d))
    precision = "ieee" if q.dtype == torch.float32 else "tf32"  # "tf32" is the default, unused below float32
    key = (q.device, q.dtype, block_d)
    start = _fitting_tiles.get(key, 0)
    candidates = [tiles] if tiles is not None else TILES[start:]
    for offset, (block_m, block_n, stages) in enumerate(candidates):
        grid = (triton.cdiv(n, block_m), batch * heads)
        try:
            _attention_jvp_kernel[grid](
                *inputs, out, dout, *inputs[0].stride(), heads, n, d, d ** -0.5,
                BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, PRECISION=precision, num_stages=stages,
            )
        except OutOfResources:
            continue
        if tiles is None:
            _fitting_tiles[key] = start + offset
        return out, dout
    if tiles is None:
        _fitting_tiles[key] = len(TILES)
    tried = [tiles] if tiles is not None else list(TILES)
    raise TilesDoNotFit(f"attention_jvp_triton: no tile configuration of {tried} fits the shared memory of "
                        f"{q.device} for {str(q.dtype).removeprefix('torch.')} heads of width {d}")


__all__ = ["TILES", "TilesDoNotFit", "attention_jvp_triton", "triton_available"]
