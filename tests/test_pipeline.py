"""`ConsistencyModelPipeline`: input validation, folder loading errors, and sampling behaviour.

References: Algorithm 1 of the CM paper written out by hand below (closed-form scalings, numpy
Karras grid), the raw network, and eager PyTorch for the compiled network.
"""

import json
import math
import time

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from PIL import Image

from consistency_models import (
    CMStochasticIterativeScheduler,
    ConsistencyFunction,
    ConsistencyModelPipeline,
    InvalidInputError,
    preset,
)
from conftest import build_unet

SIGMA_MIN, SIGMA_MAX, SIGMA_DATA = 0.002, 80.0, 0.5
LABELS = [7, 123]


def numpy_grid(n=40, rho=7.0):
    lo, hi = SIGMA_MIN ** (1 / rho), SIGMA_MAX ** (1 / rho)
    return [(hi + i / (n - 1) * (lo - hi)) ** rho for i in range(n)]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def sample(pipe, seed=0, **kwargs):
    kwargs.setdefault("output_type", "pt")
    return pipe(generator=gen(seed), **kwargs).images


@torch.no_grad()
def algorithm1(unet, shape, sigmas, labels, seed, s_noise=1.0, clip=True):
    """CM paper Algorithm 1 written out: x = σ_0·z; x₀ = f(x, σ_i); x = x₀ + s_noise·z·√(σ_{i+1}² − ε²)."""
    g = gen(seed)
    e, d = SIGMA_MIN, SIGMA_DATA
    x = torch.randn(shape, generator=g) * sigmas[0]
    for i, s in enumerate(sigmas[:-1]):
        c_skip = d**2 / ((s - e) ** 2 + d**2)
        c_out = (s - e) * d / math.sqrt(s**2 + d**2)
        c_in = 1 / math.sqrt(s**2 + d**2)
        x0 = c_skip * x + c_out * unet(x * c_in, torch.full((shape[0],), 250 * math.log(s)), labels)
        if clip:
            x0 = x0.clamp(-1, 1)
        z = torch.randn(shape, generator=g)
        x = x0 + s_noise * z * math.sqrt(sigmas[i + 1] ** 2 - e**2)
    return (x / 2 + 0.5).clamp(0, 1)


@pytest.fixture(scope="module")
def uncond_pipe():
    p = ConsistencyModelPipeline(build_unet(preset("test", num_classes=None), seed=2))
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def gray_pipe():
    """1-channel, 16 px, 10 classes (preset 'tiny16')."""
    p = ConsistencyModelPipeline(build_unet(preset("tiny16"), seed=3))
    p.set_progress_bar_config(disable=True)
    return p


# -- call arguments ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    (dict(timesteps=[0, 22]), r"^timesteps: \[0, 22\] must be strictly descending"),
    (dict(timesteps=[22, 22, 0]), r"^timesteps: .*descending"),
    (dict(timesteps=[40, 0]), r"^timesteps: \[40, 0\] must be grid indices in \[0, 39\]"),
    (dict(timesteps=[22, -1]), r"^timesteps: .*grid indices"),
    (dict(timesteps=[]), r"^timesteps: give at least one"),
    (dict(timesteps=[22, 0], sigmas=[80.0, 1.38]), r"^timesteps/sigmas: give one of them, not both"),
    (dict(sigmas=[1.38, 80.0]), r"^sigmas: .*descending"),
    (dict(sigmas=[81.0, 1.0]), r"^sigmas: .*sigma_max=80"),
    (dict(sigmas=[80.0, 0.002]), r"^sigmas: .*sigma_min=0.002"),
    (dict(num_inference_steps=0), r"^num_inference_steps: 0"),
    (dict(num_inference_steps=41), r"^num_inference_steps: 41"),
    (dict(class_labels=[1000, 0]), r"^class_labels: 1000 must be integers in \[0, 999\]"),
    (dict(class_labels=[-1, 0]), r"^class_labels: -1 must be integers"),
    (dict(class_labels=2.5), r"^class_labels: .*2\.5.*integers"),
    (dict(class_labels=[1.0, 2.0]), r"^class_labels: .*integers"),
    (dict(class_labels=[1, 2, 3]), r"^class_labels: got 3 labels for a batch of 2"),
    (dict(latents=torch.zeros(2, 3, 16, 16)), r"^latents: shape \(2, 3, 16, 16\) does not match .*\(2, 3, 32, 32\)"),
    (dict(latents=torch.zeros(3, 3, 32, 32)), r"^latents: shape"),
    (dict(output_type="jpg"), r"^output_type: 'jpg' is not one of pil, np, pt"),
    (dict(generator=[torch.Generator()] * 3), r"^generator: got a list of 3 generators for batch_size=2"),
    (dict(batch_size=0), r"^batch_size: 0"),
])
def test_invalid_arguments(pipe, kwargs, message):
    """Each bad argument: InvalidInputError, one line, starting with the argument's name."""
    kwargs = {"batch_size": 2, **kwargs}
    with pytest.raises(InvalidInputError, match=message) as info:
        pipe(**kwargs)
    assert "\n" not in str(info.value)


def test_nan_sigma_is_refused(pipe):
    """a NaN noise level must be refused like any other out-of-range σ."""
    with pytest.raises(InvalidInputError, match=r"^sigmas: "):
        pipe(batch_size=1, class_labels=0, sigmas=[float("nan")], output_type="pt")


def test_string_class_label_is_refused(pipe):
    """class_labels='3' must give InvalidInputError naming class_labels."""
    with pytest.raises(InvalidInputError, match=r"^class_labels: "):
        pipe(batch_size=1, class_labels="3")


def test_class_labels_for_unconditional_model(uncond_pipe):
    with pytest.raises(InvalidInputError, match=r"^class_labels: this model is unconditional"):
        uncond_pipe(batch_size=2, class_labels=[1, 2])


def test_save_pretrained_needs_parent(tmp_path, pipe):
    with pytest.raises(InvalidInputError, match=r"^path: the folder .* does not exist"):
        pipe.save_pretrained(tmp_path / "no" / "pipe")


# -- loading a folder ----------------------------------------------------------------------------------
def test_round_trip(pipeline_dir, pipe):
    loaded = ConsistencyModelPipeline.from_pretrained(pipeline_dir)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.unet.config == pipe.unet.config and loaded.parametrization == "consistency"
    assert isinstance(loaded.denoiser, ConsistencyFunction)
    assert loaded.model is loaded.denoiser  # the old name, kept as an alias for this release
    torch.testing.assert_close(sample(loaded, class_labels=LABELS, batch_size=2),
                               sample(pipe, class_labels=LABELS, batch_size=2), rtol=0, atol=0)


def _delete(path):
    path.unlink()


def _garble(path):
    path.write_text('{"sample_size": 32, ')


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("file, damage, message", [
    ("model_index.json", _delete, r"^model: missing file .*model_index\.json"),
    ("model_index.json", _garble, r"^model: corrupt JSON in .*model_index\.json"),
    ("unet/config.json", _delete, r"^unet config: missing file .*config\.json"),
    ("unet/config.json", _garble, r"^unet config: corrupt JSON in .*config\.json"),
    ("scheduler/scheduler_config.json", _delete, r"^scheduler: missing file .*scheduler_config\.json"),
    ("scheduler/scheduler_config.json", _garble, r"^scheduler: corrupt JSON in .*scheduler_config\.json"),
    ("unet/diffusion_pytorch_model.safetensors", _delete, r"^weights: missing file .*safetensors"),
    ("unet/diffusion_pytorch_model.safetensors", _truncate, r"^weights: corrupt or unreadable weights file"),
])
def test_damaged_folder(pipeline_copy, file, damage, message):
    damage(pipeline_copy / file)
    with pytest.raises(InvalidInputError, match=message) as info:
        ConsistencyModelPipeline.from_pretrained(pipeline_copy)
    assert "\n" not in str(info.value)


def test_model_index_without_unet(pipeline_copy):
    (pipeline_copy / "model_index.json").write_text(json.dumps({"scheduler": ["diffusers", "X"]}))
    with pytest.raises(InvalidInputError, match=r"^model: .* names no 'unet' component"):
        ConsistencyModelPipeline.from_pretrained(pipeline_copy)


@pytest.mark.parametrize("content", [b"", b"this is not a checkpoint", b"junk junk"], ids=["empty", "text", "text2"])
def test_junk_bin_weights(pipeline_copy, content):
    """an older-format folder whose .bin is junk must give a one-line error."""
    (pipeline_copy / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    (pipeline_copy / "unet" / "diffusion_pytorch_model.bin").write_bytes(content)
    with pytest.raises(InvalidInputError, match=r"^weights: .*diffusion_pytorch_model\.bin"):
        ConsistencyModelPipeline.from_pretrained(pipeline_copy)


def test_bin_weights_load(pipeline_copy, pipe):
    """The older diffusion_pytorch_model.bin (a plain torch.save state dict) loads too."""
    from safetensors.torch import load_file

    weights = pipeline_copy / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(str(weights)), pipeline_copy / "unet" / "diffusion_pytorch_model.bin")
    weights.unlink()
    loaded = ConsistencyModelPipeline.from_pretrained(pipeline_copy)
    for key, value in pipe.unet.state_dict().items():
        assert torch.equal(loaded.unet.state_dict()[key], value), key


def _edit_config(folder, **changes):
    path = folder / "unet" / "config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


@pytest.mark.parametrize("changes, message", [
    (dict(block_out_channels=[64, 128]), r"^weights: .*does not fit the model config; wrong shape keys: .*conv_in\.weight"),
    (dict(layers_per_block=1), r"^weights: .*does not fit the model config; unexpected keys: .*down_blocks\.0\.resnets\.1\."),
    (dict(layers_per_block=3), r"^weights: .*does not fit the model config; missing keys: .*down_blocks\.0\.resnets\.2\."),
    (dict(num_class_embeds=10), r"wrong shape keys: class_embedding\.weight"),
])
def test_keys_that_do_not_fit(pipeline_copy, changes, message):
    _edit_config(pipeline_copy, **changes)
    with pytest.raises(InvalidInputError, match=message):
        ConsistencyModelPipeline.from_pretrained(pipeline_copy)


@pytest.mark.parametrize("changes, message", [
    (dict(time_embedding_type="fourier"),
     r"^unet: .*config\.json: time_embedding_type='fourier' is not supported; allowed: 'positional'"),  # the component
    (dict(act_fn="gelu"), r"act_fn='gelu' is not supported"),
    (dict(class_embed_type="timestep"), r"class_embed_type='timestep' is not supported"),
    (dict(resnet_time_scale_shift="ada_group"), r"resnet_time_scale_shift='ada_group' is not supported"),
    (dict(down_block_types=["DownBlock2D", "AttnDownBlock2D"]), r"down_block_types=.* is not supported"),
    (dict(up_block_types=["ResnetUpsampleBlock2D", "AttnUpBlock2D"]), r"up_block_types=.* is not supported"),
    (dict(attention_head_dim=[8, 8]), r"attention_head_dim=\[8, 8\] is not supported"),
    (dict(sample_size=[32, 64]), r"sample_size=\[32, 64\] is not supported; allowed: square images"),
    (dict(block_out_channels=[32]), r"block_out_channels=\[32\] is not supported"),
    (dict(attn_norm_num_groups=16), r"attn_norm_num_groups=16 is not supported"),
    (dict(out_channels=6), r"out_channels=6 is not supported; allowed: in_channels=3 \(the model predicts"),
])
def test_unsupported_diffusers_config(pipeline_copy, changes, message):
    _edit_config(pipeline_copy, **changes)
    with pytest.raises(InvalidInputError, match=message) as info:
        ConsistencyModelPipeline.from_pretrained(pipeline_copy)
    assert "\n" not in str(info.value)


def test_path_is_a_file(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x")
    with pytest.raises(InvalidInputError, match=r"^model: .* is a file"):
        ConsistencyModelPipeline.from_pretrained(tmp_path / "model.safetensors")


def test_missing_local_folder(tmp_path, no_network):
    with pytest.raises(InvalidInputError, match=r"^model: no such folder"):
        ConsistencyModelPipeline.from_pretrained(tmp_path / "a" / "b")
    assert no_network == []


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE=1 with an empty Hub cache. huggingface_hub reads the variable once at import
    (conftest imports diffusers first), so its constant is set as well, as a fresh process would."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


def test_hub_id_offline(offline_hub, no_network):
    """A Hub id while offline: one line naming the id and suggesting a local folder; no network."""
    hub_id = "openai/diffusers-cd_imagenet64_l2"
    with pytest.raises(InvalidInputError, match=r"^model: could not fetch Hub id 'openai/diffusers-cd_imagenet64_l2'") as info:
        ConsistencyModelPipeline.from_pretrained(hub_id)
    message = str(info.value)
    assert "\n" not in message and "local folder" in message
    reason = message.split(f"{hub_id!r} (", 1)[1].rsplit("); when offline", 1)[0]
    assert len(reason) <= 200 and (reason.endswith((" ...", ".", ")")) or " " not in reason), reason  # cut between words
    assert no_network == []


def test_hub_id_offline_env_only(monkeypatch, tmp_path, no_network):
    """HF_HUB_OFFLINE=1 set at run time alone should already prevent network access."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # imported while online
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(InvalidInputError, match=r"^model: could not fetch Hub id"):
        ConsistencyModelPipeline.from_pretrained("openai/diffusers-cd_imagenet64_l2")
    assert no_network == []


# -- sampling -------------------------------------------------------------------------------------------
def test_sigmas_equal_timesteps(pipe):
    """sigmas=[80, grid[22]] (numpy closed form) is the same schedule as timesteps=[22, 0]."""
    grid = numpy_grid(40)
    a = sample(pipe, seed=3, batch_size=2, class_labels=LABELS, sigmas=[grid[0], grid[22]])
    b = sample(pipe, seed=3, batch_size=2, class_labels=LABELS, timesteps=[22, 0])
    assert grid[22] == pytest.approx(1.3824, abs=5e-5)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_timesteps_override_num_inference_steps(pipe):
    a = sample(pipe, seed=4, batch_size=1, class_labels=5, timesteps=[22, 0], num_inference_steps=3)
    b = sample(pipe, seed=4, batch_size=1, class_labels=5, timesteps=[22, 0])
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_reproducible_from_generator(pipe):
    a = sample(pipe, seed=5, batch_size=2, class_labels=LABELS, timesteps=[22, 0])
    b = sample(pipe, seed=5, batch_size=2, class_labels=LABELS, timesteps=[22, 0])
    c = sample(pipe, seed=6, batch_size=2, class_labels=LABELS, timesteps=[22, 0])
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 0.05


def test_random_class_labels_come_from_generator(pipe):
    out1 = pipe(batch_size=3, generator=gen(7), output_type="pt")
    out2 = pipe(batch_size=3, generator=gen(7), output_type="pt")
    out3 = pipe(batch_size=3, generator=gen(8), output_type="pt")
    assert out1.class_labels.dtype == torch.long and out1.class_labels.shape == (3,)
    assert torch.equal(out1.class_labels, out2.class_labels) and torch.equal(out1.images, out2.images)
    assert not torch.equal(out1.class_labels, out3.class_labels)
    assert 0 <= out1.class_labels.min() and out1.class_labels.max() < 1000
    # Passing the returned labels back reproduces the images: they are the labels that were used.
    again = pipe(batch_size=3, class_labels=out1.class_labels, generator=gen(7), output_type="pt")
    torch.testing.assert_close(again.images, out1.images, rtol=0, atol=0)
    assert torch.equal(again.class_labels, out1.class_labels)


def test_scalar_label_is_broadcast(pipe):
    out = pipe(batch_size=2, class_labels=42, generator=gen(0), output_type="pt")
    assert out.class_labels.tolist() == [42, 42]


def test_per_sample_generators_are_independent_of_batch(pipe):
    """Sample i of a batch with generator list [g_5, g_6, g_7] equals seed 6 alone in a batch of 1."""
    seeds = [5, 6, 7]
    batch = pipe(batch_size=3, generator=[gen(s) for s in seeds], timesteps=[22, 0], output_type="pt")
    alone = pipe(batch_size=1, generator=[gen(6)], timesteps=[22, 0], output_type="pt")
    torch.testing.assert_close(batch.images[1:2], alone.images, rtol=0, atol=1e-5)
    assert batch.class_labels[1] == alone.class_labels[0]
    assert (batch.images[0] - batch.images[1]).abs().max() > 0.05


def test_output_types_agree(pipe):
    kwargs = dict(batch_size=2, class_labels=LABELS, timesteps=[22, 0])
    pt = sample(pipe, seed=9, output_type="pt", **kwargs)
    npy = sample(pipe, seed=9, output_type="np", **kwargs)
    pil = sample(pipe, seed=9, output_type="pil", **kwargs)
    assert isinstance(pt, torch.Tensor) and pt.shape == (2, 3, 32, 32) and pt.dtype == torch.float32
    assert isinstance(npy, np.ndarray) and npy.shape == (2, 32, 32, 3)
    assert 0.0 <= npy.min() and npy.max() <= 1.0 and npy.std() > 0.05
    np.testing.assert_array_equal(npy, pt.permute(0, 2, 3, 1).numpy())
    assert isinstance(pil, list) and len(pil) == 2
    assert all(isinstance(im, Image.Image) and im.mode == "RGB" and im.size == (32, 32) for im in pil)
    np.testing.assert_array_equal(np.asarray(pil[1]), np.rint(npy[1] * 255).astype(np.uint8))


def test_return_dict_false(pipe):
    out = pipe(batch_size=1, class_labels=1, generator=gen(0), output_type="np", return_dict=False)
    assert isinstance(out, tuple) and len(out) == 1 and out[0].shape == (1, 32, 32, 3)


def test_grayscale_model(gray_pipe):
    pil = sample(gray_pipe, seed=0, batch_size=2, class_labels=[0, 9], output_type="pil")
    npy = sample(gray_pipe, seed=0, batch_size=2, class_labels=[0, 9], output_type="np")
    assert [im.mode for im in pil] == ["L", "L"] and pil[0].size == (16, 16)
    assert npy.shape == (2, 16, 16, 1)
    np.testing.assert_array_equal(np.asarray(pil[0]), np.rint(npy[0, ..., 0] * 255).astype(np.uint8))
    with pytest.raises(InvalidInputError, match=r"^class_labels: 10 must be integers in \[0, 9\]"):
        gray_pipe(batch_size=1, class_labels=10)


def test_unconditional_sampling(uncond_pipe):
    out = uncond_pipe(batch_size=2, generator=gen(1), output_type="pt")
    assert out.class_labels is None and out.images.shape == (2, 3, 32, 32)


def test_latents_replace_generator_noise(pipe):
    z = torch.randn(2, 3, 32, 32, generator=gen(11))
    a = pipe(batch_size=2, class_labels=LABELS, latents=z, output_type="pt").images
    b = sample(pipe, seed=11, batch_size=2, class_labels=LABELS)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_one_step_is_f_at_sigma_max(pipe, unet):
    """One step: image = clip(f(σ_max·z, σ_max)), f the consistency function of the same network."""
    z = torch.randn(2, 3, 32, 32, generator=gen(12))
    with torch.no_grad():
        f = ConsistencyFunction(unet)(SIGMA_MAX * z, SIGMA_MAX, torch.tensor(LABELS))
    expected = (f.clamp(-1, 1) / 2 + 0.5).clamp(0, 1)
    got = sample(pipe, seed=12, batch_size=2, class_labels=LABELS)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def strong_unet():
    """Larger weights, so that x₀ leaves [−1, 1] and clipping matters."""
    return build_unet(preset("test"), seed=4, std=0.12)


@pytest.mark.parametrize("s_noise, clip", [(1.0, True), (0.5, False), (1.007, True)])
def test_matches_hand_written_algorithm_1(strong_unet, s_noise, clip):
    timesteps = [30, 15, 0]
    grid = numpy_grid(40)
    sigmas = [grid[i] for i in reversed(timesteps)] + [SIGMA_MIN]
    p = ConsistencyModelPipeline(strong_unet, CMStochasticIterativeScheduler(s_noise=s_noise, clip_denoised=clip))
    p.set_progress_bar_config(disable=True)
    got = sample(p, seed=13, batch_size=2, class_labels=LABELS, timesteps=timesteps)
    labels = torch.tensor(LABELS)
    expected = algorithm1(strong_unet, (2, 3, 32, 32), sigmas, labels, 13, s_noise=s_noise, clip=clip)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    # The settings are not inert for this network and schedule.
    other = algorithm1(strong_unet, (2, 3, 32, 32), sigmas, labels, 13, s_noise=s_noise, clip=not clip)
    assert (other - expected).abs().max() > 1e-3
    if s_noise != 1.0:
        assert (algorithm1(strong_unet, (2, 3, 32, 32), sigmas, labels, 13, clip=clip) - expected).abs().max() > 1e-3


def test_callback_sees_every_step(pipe):
    seen = []
    pipe(batch_size=1, class_labels=3, generator=gen(0), timesteps=[22, 0], output_type="pt",
         callback=lambda i, t, x: seen.append((i, t, tuple(x.shape))))
    assert [s[0] for s in seen] == [0, 1]
    assert seen[0][1] == pytest.approx(1095.507, abs=1e-3) and seen[1][1] == pytest.approx(80.949, abs=1e-3)
    assert seen[0][2] == (1, 3, 32, 32)


# -- torch.compile ---------------------------------------------------------------------------------------
def _compile_check(unet, backend):
    torch._dynamo.reset()
    x = torch.randn(1, 3, 32, 32, generator=gen(14))
    t = torch.tensor([80.949])
    y = torch.tensor([17])
    compiled = torch.compile(unet, fullgraph=True, backend=backend)
    start = time.perf_counter()
    with torch.no_grad():
        got = compiled(x, t, y)
        expected = unet(x, t, y)
    elapsed = time.perf_counter() - start
    torch._dynamo.reset()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert expected.std() > 0.1
    return elapsed


def test_torch_compile_fullgraph(unet):
    """fullgraph=True: the whole UNet forward is captured by dynamo without a graph break
    (aot_eager backend: dynamo + AOTAutograd, ~4 s on 2 cores; inductor is the slow test below)."""
    _compile_check(unet, "aot_eager")


@pytest.mark.slow
def test_torch_compile_fullgraph_inductor(unet):
    """Inductor (C++ codegen) on preset('test'), batch 1: about 55 s on 2 CPU cores with a cold
    compile cache, about 5 s warm. Opt-in: CM_SLOW_TESTS=1."""
    _compile_check(unet, "inductor")
