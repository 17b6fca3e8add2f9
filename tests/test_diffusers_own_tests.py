"""diffusers' own tests for the two components, run against our classes (diffusers 0.42).

Rewritten here from diffusers' `tests/schedulers/test_scheduler_consistency_model.py` (with the
`SchedulerCommonTest` checks of `tests/schedulers/test_schedulers.py` it inherits) and
`tests/pipelines/consistency_models/test_consistency_models.py` (with the `PipelineTesterMixin`
checks of `tests/pipelines/test_pipelines_common.py`): same inputs, same assertions, same
expected numbers, each named after the diffusers test it reproduces. Their pipeline tests load
a test UNet from the Hub (`diffusers/consistency-models-test`); here the same architecture
(`TEST_UNET_CONFIG` of diffusers' conversion script) is built with seeded weights, saved as a
diffusers folder, and our output is compared with diffusers' on that folder.

Not run, with the reason (also in docs/diffusers-compatibility.md): attention slicing, xformers,
CPU/sequential/group offloading and `device_map` (diffusers/accelerate machinery our pipeline does
not have), `test_deprecated_kwargs`/`test_getattr_is_correct` beyond their plain-Python part
(diffusers' ConfigMixin bookkeeping), `num_images_per_prompt`, CFG, step-end callbacks,
`encode_prompt`, layerwise casting (each returns at once for this pipeline in diffusers too), and
`test_trained_betas` (skipped by diffusers for this scheduler). `test_save_load_local` and
`test_save_load_optional_components` save with `safe_serialization=False`, as diffusers' do.
"""

from __future__ import annotations

import copy
import inspect

import numpy as np
import pytest
import torch
from diffusers import CMStochasticIterativeScheduler as DiffusersScheduler
from diffusers import ConsistencyModelPipeline as DiffusersPipeline
from diffusers import UNet2DModel

from consistency_models import CMStochasticIterativeScheduler, ConsistencyModelPipeline
from test_diffusers_parity import TEST_UNET_CONFIG

# -- the scheduler (CMStochasticIterativeSchedulerTest) --------------------------------------------
SCHEDULER_CONFIG = {"num_train_timesteps": 201, "sigma_min": 0.002, "sigma_max": 80.0}


def scheduler_of(**overrides) -> CMStochasticIterativeScheduler:
    return CMStochasticIterativeScheduler(**{**SCHEDULER_CONFIG, **overrides})


def dummy_sample_deter() -> torch.Tensor:
    n = 4 * 3 * 8 * 8
    return (torch.arange(n).reshape(3, 8, 8, 4) / n).permute(3, 0, 1, 2)


def dummy_noise_deter() -> torch.Tensor:
    n = 4 * 3 * 8 * 8
    return (torch.arange(n).flip(-1).reshape(3, 8, 8, 4) / n).permute(3, 0, 1, 2)


def dummy_model(sample: torch.Tensor, t, *args) -> torch.Tensor:
    if torch.is_tensor(t):
        t = t.reshape(-1, *([1] * (sample.ndim - 1))).to(sample.device, sample.dtype)
    return sample * t / (t + 1)


def full_loop(scheduler, t_start: int | None = None) -> torch.Tensor:
    generator = torch.manual_seed(0)
    sample = dummy_sample_deter() * scheduler.init_noise_sigma
    timesteps = scheduler.timesteps
    if t_start is not None:
        timesteps = timesteps[t_start * scheduler.order:]
        sample = scheduler.add_noise(sample, dummy_noise_deter(), timesteps[:1])
    for t in timesteps:
        residual = dummy_model(scheduler.scale_model_input(sample, t), t)
        sample = scheduler.step(residual, t, sample, generator=generator).prev_sample
    return sample


def test_step_shape():
    s = scheduler_of()
    s.set_timesteps(10)
    sample = dummy_sample_deter()
    out0 = s.step(0.1 * sample, s.timesteps[0], sample).prev_sample
    out1 = s.step(0.1 * sample, s.timesteps[1], sample).prev_sample
    assert out0.shape == sample.shape == out1.shape


def check_over_configs(tmp_path, **config) -> None:
    """SchedulerCommonTest.check_over_configs: save_config → from_pretrained gives the same step."""
    s = scheduler_of(**config)
    t = s.sigma_to_t(s.config.sigma_max)
    s.save_config(tmp_path)
    new = CMStochasticIterativeScheduler.from_pretrained(tmp_path)
    sample = dummy_sample_deter()
    a = s.step(0.1 * s.scale_model_input(sample, t), t, sample, generator=torch.manual_seed(0)).prev_sample
    b = new.step(0.1 * new.scale_model_input(sample, t), t, sample, generator=torch.manual_seed(0)).prev_sample
    assert torch.sum(torch.abs(a - b)) < 1e-5


@pytest.mark.parametrize("timesteps", [10, 50, 100, 1000])
def test_timesteps(tmp_path, timesteps):
    check_over_configs(tmp_path, num_train_timesteps=timesteps)


@pytest.mark.parametrize("clip_denoised", [True, False])
def test_clip_denoised(tmp_path, clip_denoised):
    check_over_configs(tmp_path, clip_denoised=clip_denoised)


def test_full_loop_no_noise_onestep():
    s = scheduler_of()
    s.set_timesteps(1)
    result = full_loop(s)
    assert abs(float(result.abs().sum()) - 192.7614) < 1e-2 and abs(float(result.abs().mean()) - 0.2510) < 1e-3


def test_full_loop_no_noise_multistep():
    s = scheduler_of()
    s.set_timesteps(timesteps=[106, 0])
    result = full_loop(s)
    assert abs(float(result.abs().sum()) - 347.6357) < 1e-2 and abs(float(result.abs().mean()) - 0.4527) < 1e-3


def test_full_loop_with_noise():
    s = scheduler_of()
    s.set_timesteps(10)
    result = full_loop(s, t_start=8)
    assert abs(float(result.abs().sum()) - 763.9186) < 1e-2 and abs(float(result.abs().mean()) - 0.9947) < 1e-3


@pytest.mark.parametrize("call", [
    dict(timesteps=[39, 30, 12, 15, 0]),                        # test_custom_timesteps_increasing_order
    dict(num_inference_steps=5, timesteps=[39, 30, 12, 1, 0]),  # ..._passing_both_num_inference_steps_and_timesteps
    dict(timesteps=[201]),                                      # test_custom_timesteps_too_large
])
def test_custom_timesteps_errors(call):
    with pytest.raises(ValueError):
        scheduler_of().set_timesteps(**call)


def test_add_noise_device():
    s = scheduler_of()
    s.set_timesteps(50)
    sample = dummy_sample_deter()
    scaled = s.scale_model_input(sample, s.sigma_to_t(s.config.sigma_max))
    assert scaled.shape == sample.shape
    noised = s.add_noise(scaled, torch.randn(scaled.shape, generator=torch.manual_seed(0)), s.timesteps[5][None])
    assert noised.shape == scaled.shape


def test_compatibles():
    s = scheduler_of()
    assert all(c is not None for c in s.compatibles)
    init_keys = set(inspect.signature(CMStochasticIterativeScheduler.__init__).parameters) - {"self"}
    for cls in s.compatibles:
        other = cls.from_config(s.config)
        new = CMStochasticIterativeScheduler.from_config(other.config)
        assert {k: v for k, v in new.config.items() if k in s.config} == dict(s.config)
        assert not (set(new.config) - set(s.config)) & init_keys


def test_deprecated_kwargs():
    """The part that is plain Python: an explicit keyword signature, no deprecated keywords."""
    params = inspect.signature(CMStochasticIterativeScheduler.__init__).parameters
    assert not any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values())
    assert CMStochasticIterativeScheduler._deprecated_kwargs == []


def test_getattr_is_correct():
    """The plain-Python part: set attributes read back; a missing one is Python's AttributeError."""
    s = scheduler_of()
    s.dummy_attribute = 5
    assert s.dummy_attribute == 5
    with pytest.raises(AttributeError, match="'CMStochasticIterativeScheduler' object has no attribute 'does_not_exist'"):
        s.does_not_exist  # noqa: B018


def test_from_pretrained(tmp_path):
    s = scheduler_of()
    s.save_pretrained(tmp_path)
    new = CMStochasticIterativeScheduler.from_pretrained(tmp_path)
    public = {k: v for k, v in s.config.items() if not k.startswith("_")}
    assert public == {k: v for k, v in new.config.items() if not k.startswith("_")}


def test_from_save_pretrained(tmp_path):
    s = scheduler_of()
    t = s.sigma_to_t(s.config.sigma_max)
    s.save_config(tmp_path)
    new = CMStochasticIterativeScheduler.from_pretrained(tmp_path)
    s.set_timesteps(50)
    new.set_timesteps(50)
    sample = dummy_sample_deter()
    a = s.step(0.1 * sample, t, sample, generator=torch.manual_seed(0)).prev_sample
    b = new.step(0.1 * sample, t, sample, generator=torch.manual_seed(0)).prev_sample
    assert torch.sum(torch.abs(a - b)) < 1e-5


def test_scheduler_outputs_equivalence():
    s = scheduler_of()
    t = s.sigma_to_t(s.config.sigma_max)
    sample = dummy_sample_deter()
    s.set_timesteps(50)
    out = s.step(0.1 * sample, t, sample, generator=torch.manual_seed(0))
    s.set_timesteps(50)
    tup = s.step(0.1 * sample, t, sample, return_dict=False, generator=torch.manual_seed(0))
    assert isinstance(tup, tuple)
    for a, b in zip(tup, out.values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_scheduler_public_api():
    s = scheduler_of()
    assert hasattr(s, "init_noise_sigma") and hasattr(s, "scale_model_input") and hasattr(s, "step")
    sample = dummy_sample_deter()
    assert s.scale_model_input(sample, s.sigma_to_t(s.config.sigma_max)).shape == sample.shape


# -- the pipeline (ConsistencyModelPipelineFastTests) ----------------------------------------------
@pytest.fixture(scope="module", params=[False, True], ids=["test_unet", "test_unet_class_cond"])
def both_pipelines(request, tmp_path_factory):
    """diffusers' pipeline on TEST_UNET_CONFIG (seed 0) and ours loaded from its folder."""
    class_cond = request.param
    torch.manual_seed(0)
    unet = UNet2DModel(**{**TEST_UNET_CONFIG, "num_class_embeds": 1000 if class_cond else None})
    scheduler = DiffusersScheduler(num_train_timesteps=40, sigma_min=0.002, sigma_max=80.0)
    theirs = DiffusersPipeline(unet=unet, scheduler=scheduler)
    folder = tmp_path_factory.mktemp("test_unet")
    theirs.save_pretrained(folder)
    ours = ConsistencyModelPipeline(ConsistencyModelPipeline.from_pretrained(folder).unet,
                                    CMStochasticIterativeScheduler(num_train_timesteps=40, sigma_min=0.002, sigma_max=80.0))
    for p in (theirs, ours):
        p.set_progress_bar_config(disable=None)
    return theirs, ours, class_cond, folder


def dummy_inputs(seed: int = 0, onestep: bool = False, class_cond: bool = False) -> dict:
    inputs = {"batch_size": 1, "num_inference_steps": None, "timesteps": [22, 0],
              "generator": torch.Generator(device="cpu").manual_seed(seed), "output_type": "np"}
    if onestep:
        inputs.update(num_inference_steps=1, timesteps=None)
    if class_cond:
        inputs["class_labels"] = 0
    return inputs


@pytest.mark.parametrize("onestep", [False, True], ids=["multistep", "onestep"])
def test_consistency_model_pipeline(both_pipelines, onestep):
    """test_consistency_model_pipeline_{multistep,onestep}[_class_cond]: shape (1, 32, 32, 3), the
    corner slice equal to diffusers' (they assert < 1e-3 against Hub weights; here < 1e-5)."""
    theirs, ours, class_cond, _ = both_pipelines
    image = ours(**dummy_inputs(onestep=onestep, class_cond=class_cond)).images
    expected = theirs(**dummy_inputs(onestep=onestep, class_cond=class_cond)).images
    assert image.shape == (1, 32, 32, 3)
    assert np.abs(image[0, -3:, -3:, -1].flatten() - expected[0, -3:, -3:, -1].flatten()).max() < 1e-5
    assert np.abs(image - expected).max() < 1e-5 and expected.std() > 0.01


def test_pipeline_call_signature():
    params = inspect.signature(ConsistencyModelPipeline.__call__).parameters
    assert "batch_size" in params
    required_optional = {"num_inference_steps", "generator", "latents", "output_type", "return_dict", "callback",
                         "callback_steps"}
    missing = {name for name in required_optional if params[name].default is inspect.Parameter.empty}
    assert not missing


def test_inference_batch_consistent(both_pipelines):
    _, ours, class_cond, _ = both_pipelines
    inputs = {**dummy_inputs(class_cond=class_cond), "batch_size": 2,
              "generator": [torch.Generator("cpu").manual_seed(i) for i in range(2)]}
    assert len(ours(**inputs)[0]) == 2


def test_inference_batch_single_identical(both_pipelines):
    _, ours, class_cond, _ = both_pipelines
    single = ours(**{**dummy_inputs(class_cond=class_cond), "generator": torch.Generator("cpu").manual_seed(0)})
    batch = ours(**{**dummy_inputs(class_cond=class_cond), "batch_size": 3,
                    "generator": [torch.Generator("cpu").manual_seed(i) for i in range(3)]})
    assert batch[0].shape[0] == 3
    assert np.abs(batch[0][0] - single[0][0]).max() < 1e-4


def test_dict_tuple_outputs_equivalent(both_pipelines):
    _, ours, class_cond, _ = both_pipelines
    as_dict = ours(**dummy_inputs(class_cond=class_cond))[0]
    as_tuple = ours(**dummy_inputs(class_cond=class_cond), return_dict=False)[0]
    assert np.abs(as_dict - as_tuple).max() < 1e-4


def test_components_function(both_pipelines):
    _, ours, _, _ = both_pipelines
    assert set(ours.components) == {"unet", "scheduler"}


def test_to_dtype(both_pipelines):
    _, ours, _, _ = both_pipelines
    copy = ConsistencyModelPipeline(ours.unet.__class__(ours.unet.config), ours.scheduler)
    assert copy.unet.dtype == torch.float32
    copy.to(dtype=torch.float16)
    assert copy.unet.dtype == torch.float16


def test_save_load_local(both_pipelines, tmp_path):
    """(diffusers also checks its loader's log names each component: diffusers' logging, not run.)"""
    _, ours, class_cond, _ = both_pipelines
    before = ours(**dummy_inputs(class_cond=class_cond))[0]
    ours.save_pretrained(tmp_path, safe_serialization=False)
    loaded = ConsistencyModelPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=None)
    assert np.abs(loaded(**dummy_inputs(class_cond=class_cond))[0] - before).max() < 5e-4


def test_save_load_optional_components(both_pipelines, tmp_path):
    """diffusers sets every optional component to None (this pipeline has none), saves with
    safe_serialization=False, and expects them None after loading and the same output."""
    _, ours, class_cond, _ = both_pipelines
    pipe = ConsistencyModelPipeline(**ours.components)
    pipe.set_progress_bar_config(disable=None)
    for optional_component in pipe._optional_components:
        setattr(pipe, optional_component, None)
    output = pipe(**dummy_inputs(class_cond=class_cond))[0]
    pipe.save_pretrained(tmp_path, safe_serialization=False)
    loaded = ConsistencyModelPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=None)
    assert all(getattr(loaded, name) is None for name in pipe._optional_components)
    assert np.abs(loaded(**dummy_inputs(class_cond=class_cond))[0] - output).max() < 1e-4


def test_dtype_alias_and_dict(both_pipelines, tmp_path):
    _, ours, _, _ = both_pipelines
    ours.save_pretrained(tmp_path)
    assert ConsistencyModelPipeline.from_pretrained(tmp_path, dtype=torch.float16).unet.dtype == torch.float16
    as_dict = ConsistencyModelPipeline.from_pretrained(tmp_path, dtype={"unet": torch.bfloat16, "default": torch.float16})
    assert as_dict.unet.dtype == torch.bfloat16


def test_serialization_and_loading_with_variants(both_pipelines, tmp_path):
    _, ours, _, _ = both_pipelines
    ours.save_pretrained(tmp_path / "v", variant="fp16")
    assert "unet" in (tmp_path / "v" / "model_index.json").read_text()
    assert any(p.name.split(".")[1] == "fp16" for p in (tmp_path / "v" / "unet").iterdir() if p.name.count(".") >= 2)
    loaded = ConsistencyModelPipeline.from_pretrained(tmp_path / "v", variant="fp16")
    assert all(torch.equal(a, b) for a, b in zip(loaded.unet.parameters(), ours.unet.parameters()))
    ours.save_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match="variant='fp16'"):  # test_loading_with_incorrect_variants_raises_error
        ConsistencyModelPipeline.from_pretrained(tmp_path / "plain", variant="fp16")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="diffusers runs it on accelerators only")
def test_float16_inference_and_to_device(both_pipelines):
    _, ours, class_cond, _ = both_pipelines
    full = ours(**dummy_inputs(class_cond=class_cond))[0]
    half = ConsistencyModelPipeline(copy.deepcopy(ours.unet), ours.scheduler).to("cpu").to("cuda", torch.float16)
    assert half.device.type == "cuda" and half.dtype == torch.float16
    out = half(**dummy_inputs(class_cond=class_cond))[0]
    a, b = full.flatten(), out.flatten()
    assert 1 - float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b))) < 5e-2 and not np.isnan(out).any()
