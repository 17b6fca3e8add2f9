"""Fast sampling paths agree with the float32 eager pipeline.

Winograd convolutions and channels_last (`enable_fast_kernels`), mixed precision
(`to(dtype=torch.bfloat16)`), torch.compile (`compile()`, one graph, no graph breaks) and the
pre-drawn noise that CUDA-graph replay relies on. The CUDA graph itself needs a GPU: its test
is skipped without one; bench/sample_speed.py --device cuda exercises it at full size.
"""

import math

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from conftest import build_unet

from consistency_models import (
    CMStochasticIterativeScheduler,
    ConsistencyModelPipeline,
    InvalidInputError,
    UNetConfig,
)
from consistency_models.networks.unet import group_norm_fp32, upsample_nearest_2x
from consistency_models.networks.winograd import (
    Conv3x3,
    amx_convolves,
    winograd_conv3x3,
    winograd_pays_off,
    winograd_weight,
)
from consistency_models.fast_paths import CUDAGraphSampler, draw_step_noise, replay_noise
from consistency_models.sampling import sample_consistency, sigma_levels
from consistency_models.schedule import resolve_sigmas

# Wide enough (128/256 channels) for Winograd and channels_last to engage, small enough for CPU tests.
WIDE = UNetConfig(image_size=16, model_channels=128, channel_mult=(1, 2), num_res_blocks=1,
                  attention_resolutions=(8,), num_head_channels=64, num_classes=10)


def make_pipe(cfg=WIDE, seed=3) -> ConsistencyModelPipeline:
    pipe = ConsistencyModelPipeline(build_unet(cfg, seed=seed), CMStochasticIterativeScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample(pipe, steps=2, batch=3, seed=0):
    return pipe(batch_size=batch, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed),
                output_type="pt").images


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.double() - b.double()).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


# -- Winograd F(2x2, 3x3) ---------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(2, 128, 8, 8), (3, 160, 6, 10), (1, 128, 2, 2)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_winograd_matches_conv2d(shape, channels_last):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    weight = torch.randn(96, shape[1], 3, 3, generator=gen) / (9 * shape[1]) ** 0.5
    bias = torch.randn(96, generator=gen)
    ref = F.conv2d(x.double(), weight.double(), bias.double(), padding=1)
    out = winograd_conv3x3(x, winograd_weight(weight), bias)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=1e-5)  # the direct float32 conv's error is ~1e-6
    no_bias = winograd_conv3x3(x, winograd_weight(weight))
    torch.testing.assert_close(no_bias.double(), ref - bias.double()[:, None, None], rtol=0, atol=1e-5)


def test_winograd_chunks_give_the_same_result():
    x = torch.randn(5, 128, 8, 8).contiguous(memory_format=torch.channels_last)
    u = winograd_weight(torch.randn(128, 128, 3, 3) * 0.03)
    whole = winograd_conv3x3(x, u, chunk_bytes=1 << 40)
    one_by_one = winograd_conv3x3(x, u, chunk_bytes=1)
    assert torch.equal(whole, one_by_one)


def test_winograd_bfloat16_is_close():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 128, 8, 8, generator=gen).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(128, 128, 3, 3, generator=gen) / (9 * 128) ** 0.5
    ref = F.conv2d(x, weight, padding=1)
    out = winograd_conv3x3(x.bfloat16(), winograd_weight(weight.bfloat16()))
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() < 0.1 and (out.float() - ref).pow(2).mean().sqrt() < 0.02


def test_winograd_weight_refuses_other_kernel_sizes():
    with pytest.raises(ValueError, match="3x3"):
        winograd_weight(torch.zeros(4, 4, 5, 5))


def test_winograd_pays_off_only_on_wide_even_cpu_inputs():
    wide, narrow = torch.zeros(128, 128, 3, 3), torch.zeros(64, 64, 3, 3)
    assert winograd_pays_off(torch.zeros(1, 128, 8, 8), wide)
    assert not winograd_pays_off(torch.zeros(1, 64, 8, 8), narrow)
    assert not winograd_pays_off(torch.zeros(1, 128, 7, 8), wide)  # odd size
    assert not winograd_pays_off(torch.zeros(1, 128, 512, 512), wide)  # tiles far beyond the cache budget


@pytest.mark.parametrize("amx", [True, False])
def test_winograd_leaves_bfloat16_to_onednn_where_the_cpu_has_amx(monkeypatch, amx):
    """With AMX tiles oneDNN's direct bfloat16 convolution is the faster one; without, Winograd
    still pays in bfloat16; float32 never uses AMX, so the rule leaves it alone."""
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_fp16_supported", lambda: False, raising=False)
    amx_convolves.cache_clear()
    try:
        wide = torch.zeros(128, 128, 3, 3)
        assert amx_convolves(torch.bfloat16) is amx
        assert winograd_pays_off(torch.zeros(1, 128, 8, 8, dtype=torch.bfloat16), wide) is not amx
        assert winograd_pays_off(torch.zeros(1, 128, 8, 8, dtype=torch.float16), wide)
        assert winograd_pays_off(torch.zeros(1, 128, 8, 8), wide)
    finally:
        amx_convolves.cache_clear()


def test_conv3x3_keeps_the_conv2d_state_dict_and_refreshes_its_cache():
    conv = Conv3x3(128, 128)
    assert set(conv.state_dict()) == set(torch.nn.Conv2d(128, 128, 3, padding=1).state_dict())
    conv.winograd = True
    x = torch.randn(1, 128, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1), rtol=0, atol=1e-5)
        conv.weight.mul_(2)  # in place: the cached transform must follow
        torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1), rtol=0, atol=1e-5)
    # With autograd on, the plain convolution runs and gradients flow.
    conv(x).sum().backward()
    assert conv.weight.grad is not None


# -- fast kernels in the network and the pipeline ---------------------------------------------------
def test_fast_kernels_switch_channels_last_by_width():
    wide = build_unet(WIDE).use_fast_kernels()
    assert wide.channels_last and wide.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(m.winograd for m in wide.modules() if isinstance(m, Conv3x3))
    narrow = build_unet(UNetConfig(image_size=16, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                                   attention_resolutions=(8,), num_head_channels=32, num_classes=None))
    assert not narrow.use_fast_kernels().channels_last  # NCHW is faster for narrow networks on CPU
    wide.use_fast_kernels(False)
    assert not wide.channels_last and not any(m.winograd for m in wide.modules() if isinstance(m, Conv3x3))


def test_fast_kernels_keep_nchw_off_the_cpu():
    """Off the CPU (here the meta device standing in for CUDA) channels_last is not used, also after pipe.to()."""
    assert not build_unet(WIDE).to("meta").use_fast_kernels().channels_last
    pipe = make_pipe().enable_fast_kernels()
    assert pipe.unet.channels_last
    pipe.to("meta")
    assert not pipe.unet.channels_last


@pytest.mark.parametrize("steps", [1, 2])
def test_fast_kernels_agree_with_float32_eager(steps):
    pipe = make_pipe()
    ref = sample(pipe, steps)
    fast = sample(pipe.enable_fast_kernels(), steps)
    assert (fast - ref).abs().max() <= 1e-4
    assert fast.is_contiguous()


def test_fast_kernels_leave_training_gradients_alone():
    """The same network with fast kernels on computes the same loss gradient (Winograd is inference-only)."""
    ref_net, fast_net = build_unet(WIDE, seed=5), build_unet(WIDE, seed=5).use_fast_kernels()
    x, t, labels = torch.randn(2, 3, 16, 16), torch.tensor([10.0, -300.0]), torch.tensor([1, 2])
    ref_net(x, t, labels).square().mean().backward()
    fast_net(x.contiguous(memory_format=torch.channels_last), t, labels).square().mean().backward()
    for (name, a), b in zip(ref_net.named_parameters(), fast_net.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)


# -- mixed precision --------------------------------------------------------------------------------
def test_bfloat16_pipeline_is_close_to_float32():
    """One image: bfloat16 without the fast kernels runs PyTorch's fallback loops on a CPU without
    bfloat16 arithmetic (4.3 s an image here, 13 s for three)."""
    pipe = make_pipe()
    ref = sample(pipe, batch=1)
    pipe.to(dtype=torch.bfloat16)
    assert pipe.dtype == torch.bfloat16
    plain = sample(pipe, batch=1)
    fast = sample(pipe.enable_fast_kernels(), batch=1)
    assert plain.dtype == fast.dtype == torch.float32
    assert psnr(plain, ref) >= 35 and psnr(fast, ref) >= 35


def test_bfloat16_skip_path_and_combination_are_float32():
    """At σ = σ_min, f(x) = 1·x + 0·F exactly: a bfloat16 skip path would round x."""
    pipe = make_pipe().to(dtype=torch.bfloat16)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64).float() * 0.7
    out = pipe.denoiser(x, 0.002, torch.tensor([0, 1]))
    assert out.dtype == torch.float32 and torch.equal(out, x)


@pytest.mark.parametrize("channels_last", [False, True])
def test_group_norm_of_bfloat16_is_computed_in_float32(channels_last):
    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(32, 128).bfloat16()
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    x = (torch.randn(2, 128, 8, 8) * 3 + 1).bfloat16()
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    ref = F.group_norm(x.float(), 32, norm.weight.float(), norm.bias.float(), norm.eps)
    out = group_norm_fp32(norm, x)
    assert out.dtype == torch.bfloat16
    # The float32 result within one bfloat16 ulp (a bfloat16 reduction would be far off).
    assert ((out.float() - ref).abs() <= ref.abs() * 2**-7 + 1e-6).all()


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_upsample_is_interpolate_nearest(layout, dtype):
    """The broadcast-copy 2× upsampling equals F.interpolate(mode="nearest"), values and gradients."""
    x = torch.randn(2, 5, 4, 6, dtype=dtype)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    elif layout == "strided":
        x = torch.randn(2, 5, 4, 12, dtype=dtype)[..., ::2]
    x.requires_grad_(True)
    ours = upsample_nearest_2x(x)
    reference = F.interpolate(x, scale_factor=2.0, mode="nearest")
    assert ours.shape == (2, 5, 8, 12) and torch.equal(ours, reference)
    assert ours[0, 1, 3, 5] == x[0, 1, 1, 2]  # by hand: output (i, j) reads input (i // 2, j // 2)
    grad = torch.randn_like(ours)
    (ours_grad,) = torch.autograd.grad(ours, x, grad)
    (reference_grad,) = torch.autograd.grad(reference, x, grad)
    torch.testing.assert_close(ours_grad, reference_grad)


# -- torch.compile ------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg,fast", [("test", False), ("wide", True)])
def test_consistency_function_traces_into_one_graph(cfg, fast):
    from consistency_models import preset

    pipe = make_pipe(preset("test") if cfg == "test" else WIDE).enable_fast_kernels(fast)
    size = pipe.sample_shape
    x = torch.randn(2, *size)
    explanation = torch._dynamo.explain(pipe.denoiser)(x, torch.tensor(80.0, dtype=torch.float64), torch.tensor([1, 2]))
    assert explanation.graph_break_count == 0
    assert explanation.graph_count == 1


def test_compiled_sampling_is_one_graph_for_every_step():
    """σ reaches the model as a tensor, so two steps (and later calls) reuse one graph; fullgraph=True."""
    from consistency_models import preset

    pipe = make_pipe(preset("tiny16"))
    ref = sample(pipe, steps=3)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    pipe.compile(backend="aot_eager")  # the real graph capture, without inductor's code generation
    out = sample(pipe, steps=3)
    out_again = sample(pipe, steps=2, seed=4)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert not torch._dynamo.utils.counters["graph_break"]
    assert (out - ref).abs().max() <= 1e-5
    assert out_again.shape == out.shape


def test_to_and_compile_off_drop_the_compiled_function():
    pipe = make_pipe().compile(backend="eager")
    sample(pipe, steps=1)
    assert pipe.fast_paths._compiled is not None
    pipe.to(dtype=torch.float32)
    assert pipe.fast_paths._compiled is None
    pipe.compile(False)
    assert pipe.fast_paths.compiled(pipe.denoiser, pipe.device) is pipe.denoiser


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inductor_compiled_pipeline_agrees(dtype):
    """The real inductor compilation (about a minute on 2 CPU cores)."""
    pipe = make_pipe()
    ref = sample(pipe)
    pipe.to(dtype=dtype).enable_fast_kernels().compile()
    out = sample(pipe)
    if dtype == torch.float32:
        assert (out - ref).abs().max() <= 1e-4
    else:
        assert psnr(out, ref) >= 35


# -- pre-drawn noise and CUDA graphs ----------------------------------------------------------------
def test_predrawn_step_noise_reproduces_the_generator_draws():
    """CUDA-graph replay draws the step noise before the loop: the same numbers as drawing inside it."""
    pipe = make_pipe()
    sigmas = resolve_sigmas(3)
    x = torch.randn(2, 3, 16, 16) * sigmas[0]
    labels = torch.tensor([1, 2])
    ref = sample_consistency(pipe.denoiser, x, sigmas, class_labels=labels, generator=torch.Generator().manual_seed(7))
    noise = draw_step_noise(x.shape, len(sigmas) - 1, torch.Generator().manual_seed(7), x.device)
    assert noise.shape == (3, *x.shape)
    out = sample_consistency(pipe.denoiser, x, sigmas, class_labels=labels, noise_sampler=replay_noise(noise))
    assert torch.equal(out, ref)
    assert draw_step_noise(x.shape, 1, None, x.device) is None  # one step draws nothing


def test_cuda_graph_is_refused_on_cpu_and_ignored_by_the_pipeline():
    pipe = make_pipe()
    with pytest.raises(InvalidInputError, match="CUDA"):
        CUDAGraphSampler(pipe.denoiser, torch.zeros(1, 3, 16, 16), [80.0, 0.002], None, None)
    ref = sample(pipe)
    assert torch.equal(sample(pipe.enable_cuda_graph()), ref)  # CPU: the eager loop


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_replay_matches_eager_on_cuda():
    pipe = make_pipe().to("cuda")

    def run(seed):
        return pipe(batch_size=3, num_inference_steps=2, output_type="pt",
                    generator=torch.Generator("cuda").manual_seed(seed)).images

    ref = [run(s) for s in (0, 1)]
    pipe.enable_cuda_graph()
    graphed = [run(s) for s in (0, 1)]  # capture, then replay with new noise
    for a, b in zip(graphed, ref):
        assert (a - b).abs().max() <= 1e-4  # the same kernels; a stale input would be off by ~1



# -- fast by default ----------------------------------------------------------------------------------
def test_from_pretrained_turns_the_fast_kernels_on(tmp_path):
    """A Python user gets the fast CPU path without asking (it agrees with float32 eager to ≤ 1e-5);
    `fast_kernels=False` gives the plain path."""
    eager = make_pipe()
    eager.save_pretrained(tmp_path / "wide")
    loaded = ConsistencyModelPipeline.from_pretrained(tmp_path / "wide")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.fast_paths.fast_kernels and loaded.unet.channels_last
    assert (sample(loaded) - sample(eager)).abs().max() <= 1e-5
    plain = ConsistencyModelPipeline.from_pretrained(tmp_path / "wide", fast_kernels=False)
    assert not plain.fast_paths.fast_kernels and not plain.unet.channels_last
    assert ConsistencyModelPipeline.from_pretrained(tmp_path / "wide", dtype=torch.bfloat16).unet.channels_last


class HostReads(TorchDispatchMode):
    """Counts the ops that read a tensor's value back to the host (`.item()`, `float(t)`, `if t:`)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default):
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("steps", [1, 2])
def test_the_loop_a_cuda_graph_captures_reads_nothing_back_from_the_device(steps):
    """Inside `torch.cuda.graph` a host read raises ("operation not permitted when stream is
    capturing"): the sampling loop CUDAGraphSampler captures — model, clamp, re-noising, the step
    report without a callback — must not read a value back. Counted here on the CPU, where the same
    ops dispatch; a σ reported as float(σ) at every step broke capture once."""
    pipe = make_pipe(UNetConfig(image_size=16, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                                attention_resolutions=(8,), num_head_channels=16, num_classes=10))
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 80
    sigmas = [80.0, 0.002] if steps == 1 else [80.0, 0.8, 0.002]
    noise = draw_step_noise(x.shape, steps, torch.Generator().manual_seed(1), x.device)
    labels = torch.tensor([1, 2])
    levels = sigma_levels(sigmas, x.device)
    replay = None if noise is None else replay_noise(noise)  # as CUDAGraphSampler builds it (one step: no noise)
    with HostReads() as reads:
        out = sample_consistency(pipe.denoiser, x, levels, class_labels=labels, noise_sampler=replay)
    assert reads.count == 0
    ticks = []
    with HostReads() as reads:  # a callback is outside the graph: there σ may be read
        sample_consistency(pipe.denoiser, x, levels, class_labels=labels,
                           noise_sampler=None if noise is None else replay_noise(noise),
                           callback=lambda i, sigma, x_i: ticks.append(sigma))
    assert reads.count == steps and ticks == pytest.approx(sigmas[:steps])
    assert torch.isfinite(out).all()
