"""Scaled dot-product attention with its own forward-mode derivative (the sCM JVP of attention).

    O = softmax(S)·V,  S = s·Q·Kᵀ,  s = 1/√d

Along tangents (Q̇, K̇, V̇), with P = softmax(S) and Ṡ = s·(Q̇·Kᵀ + Q·K̇ᵀ) (Lu & Song 2024,
arXiv 2410.11081, Appendix F):

    Ȯ = P·V̇ + (P∘Ṡ)·V − rowsum(P∘Ṡ)∘O

since Ṗ = P∘(Ṡ − rowsum(P∘Ṡ)). Like the forward, this is a sum over keys weighted by P, so it runs
in one pass with an online softmax (flash attention's running maximum and rescaling): per query
it accumulates Σ p·v, Σ p·(v̇ + ṡ·v), Σ p·ṡ and Σ p, and divides at the end — no N×N matrix is
stored. On CUDA that pass is a Triton kernel (`attention_triton.py`); elsewhere the same sums are
formed with PyTorch matmuls over blocks of queries, in float32 (float64 for float64 inputs).

`attention(q, k, v)` is PyTorch's fused `scaled_dot_product_attention` — whose kernels have no
forward-mode formula — except inside `forward_mode()` (forward_mode.py), where it becomes an
autograd Function whose forward is the same SDPA call and whose `jvp` is the formula above.
`training/jvp.py` enters that context around its `torch.func.jvp`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .forward_mode import in_forward_mode

BACKENDS = ("auto", "triton", "torch")
QUERY_BLOCK = 1024  # queries per block of the PyTorch path: bounds its N×N temporaries

def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(Q·Kᵀ/√d)·V over (B, heads, N, d) tensors."""
    if in_forward_mode():
        return AttentionWithJVP.apply(q, k, v)
    return F.scaled_dot_product_attention(q, k, v)


def attention_jvp(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(O, Ȯ) in q's dtype. `backend`: "triton" (the fused kernel; CUDA tensors, or CPU tensors
    under TRITON_INTERPRET=1), "torch" (blocked matmuls) or "auto" (Triton on CUDA when installed,
    and the PyTorch pass where none of the kernel's tile configurations fits the device's shared
    memory, e.g. float32 heads of width 128 on a GPU with 99 KiB per block)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: {backend!r} is not one of {', '.join(BACKENDS)}")
    auto = backend == "auto"
    if auto:
        backend = "triton" if _triton_fits(q, k, v, dq, dk, dv) else "torch"
    if backend == "triton":
        from .attention_triton import TilesDoNotFit, attention_jvp_triton

        try:
            return attention_jvp_triton(q, k, v, dq, dk, dv)
        except TilesDoNotFit:  # found once per device, dtype and head width; then not tried again
            if not auto:
                raise
    return attention_jvp_torch(q, k, v, dq, dk, dv)


def _triton_fits(*tensors: torch.Tensor) -> bool:
    """The kernel's case: CUDA tensors of one shape (self-attention) and one dtype it takes, head
    width ≤ 256 (≤ 128 in float32: wider needs 256 KiB of shared memory at the least, more than
    an H100 has; docs/benchmarks.md), Triton installed; anything else takes the PyTorch pass."""
    q = tensors[0]
    if (q.device.type != "cuda" or q.dtype not in (torch.float32, torch.float16, torch.bfloat16)
            or q.dim() != 4 or q.shape[-1] > (128 if q.dtype == torch.float32 else 256)
            or any(t.dtype != q.dtype or t.shape != q.shape or t.device != q.device for t in tensors)):
        return False
    from .attention_triton import triton_available

    return triton_available()


def attention_jvp_torch(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor,
    query_block: int = QUERY_BLOCK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(O, Ȯ) by the formula of the module docstring, softmax and sums in float32 (float64 for
    float64 inputs), `query_block` queries at a time."""
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = q.shape[-1] ** -0.5
    k_t, dk_t = k.to(dtype).transpose(-1, -2), dk.to(dtype).transpose(-1, -2)
    v32, dv32 = v.to(dtype), dv.to(dtype)
    outs, tangents = [], []
    for start in range(0, q.shape[-2], query_block):
        qb, dqb = q[..., start:start + query_block, :].to(dtype), dq[..., start:start + query_block, :].to(dtype)
        p = torch.softmax((qb @ k_t) * scale, dim=-1)
        p_ds = p * ((dqb @ k_t + qb @ dk_t) * scale)
        o = p @ v32
        outs.append(o)
        tangents.append(p @ dv32 + p_ds @ v32 - p_ds.sum(-1, keepdim=True) * o)
    return torch.cat(outs, dim=-2).to(q.dtype), torch.cat(tangents, dim=-2).to(q.dtype)


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(Q·Kᵀ/√d)·V as plain differentiable ops, softmax in float32 (float64 stays)."""
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    p = torch.softmax((q.to(dtype) @ k.to(dtype).transpose(-1, -2)) * q.shape[-1] ** -0.5, dim=-1)
    return (p @ v.to(dtype)).to(q.dtype)


class AttentionWithJVP(torch.autograd.Function):
    """SDPA whose forward-mode derivative is `attention_jvp` (works under torch.func.jvp and
    torch.autograd.forward_ad). Its backward recomputes the attention as plain ops."""

    @staticmethod
    def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_forward(*inputs)
        ctx.save_for_backward(*inputs)

    @staticmethod
    def jvp(ctx, dq: torch.Tensor | None, dk: torch.Tensor | None, dv: torch.Tensor | None) -> torch.Tensor:
        q, k, v = ctx.saved_tensors
        dq, dk, dv = (torch.zeros_like(x) if d is None else d for x, d in ((q, dq), (k, dk), (v, dv)))
        return attention_jvp(q, k, v, dq, dk, dv)[1]

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        inputs = [x.detach().requires_grad_(True) for x in ctx.saved_tensors]
        with torch.enable_grad():
            out = math_attention(*inputs)
        return torch.autograd.grad(out, inputs, grad)


__all__ = ["AttentionWithJVP", "attention", "attention_jvp", "attention_jvp_torch", "math_attention"]
