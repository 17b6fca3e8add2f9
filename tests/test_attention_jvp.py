"""The attention's own forward-mode derivative (issue 20): the blocked PyTorch pass and the Triton
kernel (on the CPU through Triton's interpreter) against forward-mode AD through the math
attention and against float64 central differences; the autograd Function under torch.func.jvp,
torch.autograd.forward_ad and backward."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from consistency_models.networks.forward_mode import forward_mode
from consistency_models.networks.attention import (
    AttentionWithJVP,
    attention,
    attention_jvp,
    attention_jvp_torch,
    math_attention,
)

SHAPES = [(2, 3, 100, 24), (1, 2, 64, 64), (1, 1, 130, 16), (2, 1, 5, 8)]  # N and d off the 64-blocks too


def inputs(shape, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v, dq, dk, dv = (torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(6))
    return [x.to(dtype) for x in (q * 1.5, k, v, dq, dk, dv)]  # q·1.5: a peakier softmax


def reference_ad(q, k, v, dq, dk, dv):
    """Forward-mode AD through softmax(QKᵀ/√d)·V written as plain float64 ops."""
    def plain(a, b, c):
        return torch.softmax(a @ b.transpose(-1, -2) / a.shape[-1] ** 0.5, dim=-1) @ c
    return torch.func.jvp(plain, (q, k, v), (dq, dk, dv))


def central_difference(q, k, v, dq, dk, dv, h=1e-5):
    plus = math_attention(q + h * dq, k + h * dk, v + h * dv)
    minus = math_attention(q - h * dq, k - h * dk, v - h * dv)
    return (plus - minus) / (2 * h)


@pytest.mark.parametrize("shape", SHAPES)
def test_torch_pass_equals_forward_ad_and_finite_differences_in_float64(shape):
    x = inputs(shape)
    out, tangent = attention_jvp_torch(*x, query_block=48)  # several query blocks, one ragged
    ref_out, ref_tangent = reference_ad(*x)
    fd = central_difference(*x)
    assert tangent.abs().max() > 0.1, "a tangent of zero proves nothing"
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(tangent, ref_tangent, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(tangent, fd, rtol=1e-7, atol=1e-7)


def test_torch_pass_in_low_precision_stays_within_its_rounding():
    x = inputs((2, 2, 96, 32))
    ref_out, ref_tangent = reference_ad(*x)
    for dtype, tol in ((torch.float32, 2e-6), (torch.bfloat16, 3e-2)):
        out, tangent = attention_jvp_torch(*(t.to(dtype) for t in x))
        assert out.dtype == tangent.dtype == dtype
        assert (tangent.double() - ref_tangent).abs().max() < tol * ref_tangent.abs().max()
        assert (out.double() - ref_out).abs().max() < tol * ref_out.abs().max()


def test_the_function_carries_the_jvp_through_torch_func_and_forward_ad_and_backward():
    q, k, v, dq, dk, dv = inputs((2, 2, 40, 16), torch.float32)
    ref_out, ref_tangent = reference_ad(*(t.double() for t in (q, k, v, dq, dk, dv)))
    out, tangent = torch.func.jvp(AttentionWithJVP.apply, (q, k, v), (dq, dk, dv))
    torch.testing.assert_close(out.double(), ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tangent.double(), ref_tangent, rtol=1e-5, atol=1e-5)
    # a tangent on q only (the others None inside the Function) against the math attention's JVP
    _, only_q = torch.func.jvp(lambda a: AttentionWithJVP.apply(a, k, v), (q,), (dq,))
    _, only_q_ref = torch.func.jvp(lambda a: math_attention(a, k, v), (q,), (dq,))
    torch.testing.assert_close(only_q, only_q_ref, rtol=1e-5, atol=1e-5)
    import torch.autograd.forward_ad as fwAD
    with fwAD.dual_level():
        dual = AttentionWithJVP.apply(fwAD.make_dual(q, dq), fwAD.make_dual(k, dk), fwAD.make_dual(v, dv))
        torch.testing.assert_close(fwAD.unpack_dual(dual).tangent, tangent)
    # backward: float64 gradcheck, and gradients equal SDPA's own
    x64 = [t.double().requires_grad_(True) for t in (q[:1, :1, :7], k[:1, :1, :7], v[:1, :1, :7])]
    assert torch.autograd.gradcheck(AttentionWithJVP.apply, x64)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    AttentionWithJVP.apply(*leaves).square().sum().backward()
    sdpa = [t.clone().requires_grad_(True) for t in (q, k, v)]
    F.scaled_dot_product_attention(*sdpa).square().sum().backward()
    for ours, theirs in zip(leaves, sdpa):
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-4, atol=1e-5)


def test_attention_switches_to_the_function_only_inside_the_context():
    q, k, v, dq, dk, dv = inputs((1, 2, 20, 8), torch.float32)
    with pytest.raises((NotImplementedError, RuntimeError)):  # the fused kernel has no forward AD formula
        torch.func.jvp(attention, (q, k, v), (dq, dk, dv))
    with forward_mode():
        with forward_mode():
            pass  # nesting restores the outer state, not "off"
        out, tangent = torch.func.jvp(attention, (q, k, v), (dq, dk, dv))
    _, expected = torch.func.jvp(math_attention, (q, k, v), (dq, dk, dv))
    torch.testing.assert_close(tangent, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))


def test_a_bad_backend_is_refused_by_name():
    x = inputs((1, 1, 4, 4), torch.float32)
    with pytest.raises(ValueError, match="backend: 'cuda' is not one of auto, triton, torch"):
        attention_jvp(*x, backend="cuda")


@pytest.fixture(scope="module")
def interpreted_kernel():
    """attention_triton with its kernel running on CPU tensors: conftest sets TRITON_INTERPRET=1
    before triton is first imported when there is no GPU."""
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton's interpreter is off (a GPU is here: the CUDA test below checks the kernel)")
    import numpy
    import triton
    from triton.runtime.errors import InterpreterError

    from consistency_models.networks import attention_triton

    try:  # the smallest call: one block of queries, one of keys
        attention_triton.attention_jvp_triton(*inputs((1, 1, 4, 16), torch.float32))
    except InterpreterError as error:
        # Triton 3.6's interpreter turns a loop bound given at run time into an int through a
        # 1-element array, which NumPy 2.4 refuses (2.2 warns); compiled for a GPU the kernel is not affected
        if "0-dimensional arrays" not in str(error):
            raise
        pytest.skip(f"Triton {triton.__version__}'s interpreter cannot run loops to a bound given at run time "
                    f"under NumPy {numpy.__version__} (its own defect: with NumPy 2.2 the same tests pass)")
    return attention_triton


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float16, 4e-3)])
def test_triton_kernel_under_the_interpreter_equals_the_float64_references(interpreted_kernel, shape, dtype, tol):
    """float32 and float16 only: the interpreter multiplies bfloat16 blocks wrongly (on a GPU the
    same kernel runs bf16 on tensor cores; bench/gpu_check.sh runs the CUDA tests there)."""
    x = inputs(shape)
    out, tangent = interpreted_kernel.attention_jvp_triton(*(t.to(dtype) for t in x))
    ref_out, ref_tangent = reference_ad(*x)
    fd = central_difference(*x)
    assert out.dtype == tangent.dtype == dtype and out.is_contiguous()
    assert (out.double() - ref_out).abs().max() < tol * ref_out.abs().max()
    assert (tangent.double() - ref_tangent).abs().max() < tol * ref_tangent.abs().max()
    assert (tangent.double() - fd).abs().max() < tol * fd.abs().max()


def test_triton_kernel_reads_strided_inputs_as_the_unet_passes_them(interpreted_kernel):
    """The UNet hands (B, N, H, d) projections transposed to (B, H, N, d): not contiguous."""
    flat = inputs((2, 70, 3, 16), torch.float32)
    strided = [t.transpose(1, 2) for t in flat]
    assert not strided[0].is_contiguous()
    out, tangent = interpreted_kernel.attention_jvp_triton(*strided)
    ref_out, ref_tangent = attention_jvp_torch(*(t.contiguous() for t in strided))
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tangent, ref_tangent, rtol=1e-5, atol=1e-5)
    mixed = strided[:3] + [t.contiguous() for t in strided[3:]]  # strides that differ: copied first
    torch.testing.assert_close(interpreted_kernel.attention_jvp_triton(*mixed)[1], ref_tangent, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="one dtype"):
        interpreted_kernel.attention_jvp_triton(*strided[:5], strided[5].double())


@pytest.mark.parametrize("tiles", [(64, 64, 3), (64, 64, 2), (64, 32, 2), (64, 32, 1)])
def test_every_tile_configuration_equals_the_float64_references(interpreted_kernel, tiles):
    """The configurations the kernel steps down to where the first does not fit the GPU's shared
    memory (the interpreter takes BLOCK_M and BLOCK_N as a GPU does; it has no pipeline stages)."""
    assert tiles in interpreted_kernel.TILES
    x = inputs((2, 2, 100, 24))  # 100 keys: a ragged last block of 64 and of 32
    out, tangent = interpreted_kernel.attention_jvp_triton(*(t.float() for t in x), tiles=tiles)
    ref_out, ref_tangent = reference_ad(*x)
    assert (out.double() - ref_out).abs().max() < 1e-5 * ref_out.abs().max()
    assert (tangent.double() - ref_tangent).abs().max() < 1e-5 * ref_tangent.abs().max()
    assert (tangent.double() - central_difference(*x)).abs().max() < 1e-5 * ref_tangent.abs().max()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_wide_float32_heads_on_cuda_take_the_first_tiles_that_fit():
    """float32 heads of width 128 need 352 KiB of shared memory in the first configuration (more
    than an H100's 227 KiB; bench/triton_shared_memory.py): the kernel steps down, and is right."""
    from consistency_models.networks import attention_triton

    optin = getattr(torch.cuda.get_device_properties(0), "shared_memory_per_block_optin", 0)
    if optin < 128 * 1024:  # the smallest configuration needs 128 KiB: none fits (an RTX 4090 has 99)
        pytest.skip(f"this GPU has {optin / 1024:.0f} KiB of shared memory per block")
    x = inputs((2, 2, 300, 128))
    on_gpu = [t.to("cuda", torch.float32) for t in x]
    with pytest.raises(attention_triton.TilesDoNotFit, match=r"no tile configuration of \[\(64, 64, 3\)\] fits the "
                                                            r"shared memory of cuda:0 for float32 heads of width 128"):
        attention_triton.attention_jvp_triton(*on_gpu, tiles=(64, 64, 3))
    out, tangent = attention_jvp(*on_gpu, backend="triton")
    ref_out, ref_tangent = attention_jvp_torch(*(t.cuda() for t in x))
    assert attention_triton._fitting_tiles[(out.device, torch.float32, 128)] >= 1
    assert (out.double() - ref_out).abs().max() < 1e-4 * ref_out.abs().max()
    assert (tangent.double() - ref_tangent).abs().max() < 1e-4 * ref_tangent.abs().max()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_float32_heads_of_width_256_on_cuda_take_the_pytorch_pass_under_auto():
    """float32 heads wider than 128 need 256 KiB of shared memory at the least (more than an H100's
    227 KiB; compiling the first configuration takes minutes): "auto" goes to the PyTorch pass at
    once, and is right; bfloat16 heads of 256 stay on the kernel."""
    from consistency_models.networks.attention import _triton_fits

    x = [t.to("cuda", torch.float32) for t in inputs((1, 2, 70, 256))]
    assert not _triton_fits(*x) and _triton_fits(*(t.to(torch.bfloat16) for t in x))
    out, tangent = attention_jvp(*x)
    ref_out, ref_tangent = reference_ad(*(t.double() for t in x))
    assert (out.double() - ref_out).abs().max() < 1e-5 * ref_out.abs().max()
    assert (tangent.double() - ref_tangent).abs().max() < 1e-5 * ref_tangent.abs().max()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.float16, 4e-3), (torch.bfloat16, 3e-2)])
def test_triton_kernel_on_cuda_equals_the_float64_reference(dtype, tol):
    x = inputs((4, 4, 1024, 64))
    out, tangent = attention_jvp(*(t.to("cuda", dtype) for t in x), backend="triton")
    ref_out, ref_tangent = attention_jvp_torch(*(t.cuda() for t in x))
    assert (out.double() - ref_out).abs().max() < tol * ref_out.abs().max()
    assert (tangent.double() - ref_tangent).abs().max() < tol * ref_tangent.abs().max()


def test_auto_takes_the_pytorch_pass_off_cuda_and_for_mixed_inputs():
    """"auto" picks the kernel only for CUDA tensors of one shape and dtype; a float32 tangent of a
    bfloat16 primal (or any CPU tensor) goes through the PyTorch pass and still comes out right."""
    from consistency_models.networks.attention import _triton_fits

    x = inputs((1, 2, 10, 8), torch.float32)
    assert not _triton_fits(*x)  # CPU
    mixed = [t.to(torch.bfloat16) for t in x[:3]] + x[3:]
    out, tangent = attention_jvp(*mixed)
    ref_out, ref_tangent = reference_ad(*(t.double() for t in mixed))
    assert out.dtype == torch.bfloat16
    assert (tangent.double() - ref_tangent).abs().max() < 3e-2 * ref_tangent.abs().max()
