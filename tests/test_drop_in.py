"""A true drop-in for diffusers: the API shapes diffusers code relies on, and each library's
classes inside the other's code, with real diffusers objects (diffusers 0.42).

- outputs index like diffusers' `BaseOutput` (`[0]`, `["images"]`, `.to_tuple()`);
- `scheduler.config` is a read-only dict that diffusers' `from_config` takes, and both
  schedulers build from each other's configs; `save_config`;
- our scheduler inside diffusers' `ConsistencyModelPipeline`, diffusers' scheduler inside ours,
  and the diffusers-style hand-written loop with our scheduler all give the all-diffusers images;
- `callback` + `callback_steps` with a 0-d tensor timestep; `dtype=`, `variant`, `safe_serialization`.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import CMStochasticIterativeScheduler as DiffusersScheduler
from diffusers import ConsistencyModelPipeline as DiffusersPipeline

from consistency_models import CMStochasticIterativeScheduler, ConsistencyModelPipeline, InvalidInputError
from consistency_models.schedule import NoiseLevels, SchedulerConfig
from consistency_models.scheduler import CMStochasticIterativeSchedulerOutput

TOL = dict(rtol=0, atol=1e-5)
LABELS = [3, 871]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def ref_pipe(diffusers_pipeline_dir):
    p = DiffusersPipeline.from_pretrained(diffusers_pipeline_dir)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def our_pipe(diffusers_pipeline_dir):
    p = ConsistencyModelPipeline.from_pretrained(diffusers_pipeline_dir)
    p.set_progress_bar_config(disable=True)
    return p


# -- D1: outputs ---------------------------------------------------------------------------------------
def test_pipeline_output_indexes_like_diffusers(our_pipe):
    out = our_pipe(batch_size=2, class_labels=LABELS, generator=gen(), output_type="np")
    assert out[0] is out.images and out["images"] is out.images and out.to_tuple()[0] is out.images
    assert list(out.keys()) == ["images", "class_labels"] and out[1] is out.class_labels
    tup = our_pipe(batch_size=2, class_labels=LABELS, generator=gen(), output_type="np", return_dict=False)
    assert isinstance(tup, tuple) and len(tup) == 1
    np.testing.assert_array_equal(tup[0], out[0])
    unconditional = type(out)(images=out.images)  # a field left None is no key, as in diffusers
    assert list(unconditional.keys()) == ["images"] and unconditional.to_tuple() == (out.images,)


def test_scheduler_output_indexes_like_diffusers():
    s = CMStochasticIterativeScheduler()
    s.set_timesteps(2)
    x = torch.randn(1, 3, 4, 4, generator=gen()) * 80
    out = s.step(torch.zeros_like(x), s.timesteps[0], x, generator=gen(1))
    assert isinstance(out, CMStochasticIterativeSchedulerOutput)
    assert out[0] is out.prev_sample and out["prev_sample"] is out.prev_sample
    assert list(out.values())[0] is out.prev_sample and out.to_tuple() == (out.prev_sample,)


# -- D3, D4: the config ------------------------------------------------------------------------------
def test_config_is_a_read_only_dict_with_attributes():
    s = CMStochasticIterativeScheduler(num_train_timesteps=18, rho=6.0)
    c = s.config
    assert isinstance(c, dict) and dict(c) == {**c} == {
        "num_train_timesteps": 18, "sigma_min": 0.002, "sigma_max": 80.0, "sigma_data": 0.5, "s_noise": 1.0,
        "rho": 6.0, "clip_denoised": True}
    assert c.rho == c["rho"] == 6.0 and "sigma_max" in c
    for mutate in (lambda: c.__setitem__("rho", 1.0), lambda: setattr(c, "rho", 1.0), lambda: c.update(rho=1.0),
                   lambda: c.pop("rho")):
        with pytest.raises(TypeError, match="read-only"):
            mutate()
    assert c.replace(rho=5.0).rho == 5.0 and c.rho == 6.0
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        c.nope  # noqa: B018


def test_configs_cross_between_the_libraries():
    ours = CMStochasticIterativeScheduler(num_train_timesteps=151, sigma_min=0.003, s_noise=1.007, clip_denoised=False)
    theirs = DiffusersScheduler.from_config(ours.config)   # a dict: diffusers does not take it for a path
    assert {k: v for k, v in theirs.config.items() if not k.startswith("_")} == dict(ours.config)
    back = CMStochasticIterativeScheduler.from_config(theirs.config)  # diffusers' FrozenDict, with _ keys
    assert back.config == ours.config
    assert CMStochasticIterativeScheduler(ours.config).config == ours.config  # a config as the first argument
    assert CMStochasticIterativeScheduler.from_config(ours.config, rho=6.0).config.rho == 6.0
    assert DiffusersScheduler in ours.compatibles and CMStochasticIterativeScheduler in ours.compatibles
    with pytest.raises(InvalidInputError, match="^config: str is not a mapping"):
        CMStochasticIterativeScheduler.from_config("some/folder")


@pytest.mark.parametrize("source", ["DDPMScheduler()", "EulerDiscreteScheduler()",
                                    "EulerDiscreteScheduler(sigma_min=0.01, sigma_max=50.0)",
                                    "DDPMScheduler(num_train_timesteps=100)"])
def test_from_another_schedulers_config_takes_what_diffusers_takes(source):
    """The usual swap `CMStochasticIterativeScheduler.from_config(pipe.scheduler.config)` from
    another scheduler: diffusers skips the values that were only that class's defaults
    (`_use_default_values`); ours took DDPM's 1000 training steps (a 1000-point grid: other σs for
    the same timesteps) and refused Euler's sigma_min=None."""
    import diffusers

    config = eval(f"diffusers.{source}").config
    theirs = DiffusersScheduler.from_config(config)
    ours = CMStochasticIterativeScheduler.from_config(config)
    for key in ("num_train_timesteps", "sigma_min", "sigma_max", "sigma_data", "rho", "s_noise", "clip_denoised"):
        assert ours.config[key] == theirs.config[key], key
    ours.set_timesteps(num_inference_steps=3)
    theirs.set_timesteps(num_inference_steps=3)
    torch.testing.assert_close(ours.sigmas.double(), theirs.sigmas.double(), rtol=1e-6, atol=0)


def test_save_config_round_trips_in_both_libraries(tmp_path):
    ours = CMStochasticIterativeScheduler(num_train_timesteps=201, rho=6.5)
    ours.save_config(tmp_path / "a")
    data = json.loads((tmp_path / "a" / "scheduler_config.json").read_text())
    assert data["_class_name"] == "CMStochasticIterativeScheduler" and data["rho"] == 6.5
    assert CMStochasticIterativeScheduler.from_pretrained(tmp_path / "a").config == ours.config
    assert DiffusersScheduler.from_pretrained(tmp_path / "a").config.num_train_timesteps == 201
    DiffusersScheduler(num_train_timesteps=18).save_config(tmp_path / "b")
    assert CMStochasticIterativeScheduler.from_pretrained(tmp_path / "b").config == SchedulerConfig(num_train_timesteps=18)


# -- both directions inside each other's code ---------------------------------------------------------
@pytest.mark.parametrize("timesteps", [None, [22, 0], [30, 12, 0]])
def test_our_scheduler_inside_diffusers_pipeline(ref_pipe, timesteps):
    """diffusers' pipeline calls `scheduler.step(...)[0]`: with our scheduler it gives its own images."""
    steps = dict(num_inference_steps=1) if timesteps is None else dict(num_inference_steps=None, timesteps=timesteps)
    expected = ref_pipe(batch_size=2, class_labels=LABELS, generator=gen(), output_type="np", **steps).images
    mixed = DiffusersPipeline(unet=ref_pipe.unet, scheduler=CMStochasticIterativeScheduler.from_config(ref_pipe.scheduler.config))
    mixed.set_progress_bar_config(disable=True)
    got = mixed(batch_size=2, class_labels=LABELS, generator=gen(), output_type="np", **steps).images
    np.testing.assert_allclose(got, expected, **TOL)
    assert 0.02 < expected.std()


@pytest.mark.parametrize("timesteps", [None, [22, 0]])
def test_diffusers_scheduler_inside_our_pipeline(ref_pipe, our_pipe, timesteps):
    steps = dict(num_inference_steps=1) if timesteps is None else dict(num_inference_steps=None, timesteps=timesteps)
    expected = ref_pipe(batch_size=2, class_labels=LABELS, generator=gen(), output_type="np", **steps).images
    mixed = ConsistencyModelPipeline(our_pipe.unet, DiffusersScheduler.from_config(ref_pipe.scheduler.config))
    mixed.set_progress_bar_config(disable=True)
    got = mixed(batch_size=2, class_labels=LABELS, generator=gen(), output_type="np", **steps).images
    np.testing.assert_allclose(got, expected, **TOL)


def test_hand_written_loop_with_our_scheduler(ref_pipe):
    """The loop of diffusers' pipeline written out (set_timesteps, init_noise_sigma, scale_model_input,
    unet(...).sample, step(...).prev_sample) runs unchanged with our scheduler: the same images."""
    def loop(scheduler):
        scheduler.set_timesteps(timesteps=[22, 0])
        g = gen(3)
        sample = torch.randn(2, 3, 32, 32, generator=g) * scheduler.init_noise_sigma
        labels = torch.tensor(LABELS)
        for t in scheduler.timesteps:
            model_input = scheduler.scale_model_input(sample, t)
            with torch.no_grad():
                model_output = ref_pipe.unet(model_input, t, class_labels=labels).sample
            sample = scheduler.step(model_output, t, sample, generator=g).prev_sample
        return sample

    expected = loop(DiffusersScheduler.from_config(ref_pipe.scheduler.config))
    got = loop(CMStochasticIterativeScheduler.from_config(ref_pipe.scheduler.config))
    torch.testing.assert_close(got, expected, **TOL)


def test_the_hand_written_loop_runs_our_unet_with_the_0d_timesteps_it_iterates(ref_pipe, our_pipe):
    """`for t in scheduler.timesteps` yields 0-d tensors, which diffusers' UNet2DModel broadcasts
    to the batch; ours did `noise_labels[:, None]` and stopped with an IndexError. Reference: the
    all-diffusers loop (its UNet, its scheduler) on the same weights."""
    def loop(scheduler, unet):
        scheduler.set_timesteps(timesteps=[22, 0])
        g = gen(5)
        sample = torch.randn(2, 3, 32, 32, generator=g) * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            assert t.ndim == 0
            with torch.no_grad():
                out = unet(scheduler.scale_model_input(sample, t), t, class_labels=torch.tensor(LABELS))
            sample = scheduler.step(getattr(out, "sample", out), t, sample, generator=g).prev_sample
        return sample

    expected = loop(DiffusersScheduler.from_config(ref_pipe.scheduler.config), ref_pipe.unet)
    got = loop(CMStochasticIterativeScheduler.from_config(our_pipe.scheduler.config), our_pipe.unet)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)  # two networks' kernels: 3.9e-5 measured
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # a Python number too, as diffusers' UNet takes it
        torch.testing.assert_close(our_pipe.unet(x, 7.5, torch.tensor(LABELS)),
                                   our_pipe.unet(x, torch.tensor([7.5, 7.5]), torch.tensor(LABELS)), rtol=0, atol=0)


def test_add_noise_equals_diffusers_keeps_the_dtype_and_refuses_indices():
    """diffusers' training idiom `add_noise(x, noise, scheduler.timesteps[indices])`; integer indices
    themselves were read as timesteps 0..39 (σ = e^(t/250) ≈ 1.0–1.17) without a word."""
    ours, theirs = CMStochasticIterativeScheduler(), DiffusersScheduler()
    x, noise = torch.randn(2, 3, 8, 8, generator=gen(1)), torch.randn(2, 3, 8, 8, generator=gen(2))
    for indices in ([3, 10], [0, 39]):
        torch.testing.assert_close(ours.add_noise(x, noise, ours.timesteps[indices]),
                                   theirs.add_noise(x, noise, theirs.timesteps[indices]), rtol=1e-6, atol=1e-5)
    half = ours.add_noise(x.half(), noise.half(), ours.timesteps[[3, 10]])
    assert half.dtype == theirs.add_noise(x.half(), noise.half(), theirs.timesteps[[3, 10]]).dtype == torch.float16
    torch.testing.assert_close(ours.add_noise(x, noise, ours.timesteps[7]),   # one timestep for the batch
                               theirs.add_noise(x, noise, theirs.timesteps[[7, 7]]), rtol=1e-6, atol=1e-5)
    with pytest.raises(InvalidInputError, match=r"^timesteps: pass values of scheduler.timesteps .* not integer indices"):
        ours.add_noise(x, noise, torch.randint(0, 40, (2,), generator=gen()))
    with pytest.raises(InvalidInputError, match=r"^timesteps: 3 values for a batch of 2"):
        ours.add_noise(x, noise, ours.timesteps[:3])


# -- D5: callbacks -------------------------------------------------------------------------------------
def test_callback_steps_and_tensor_timesteps(our_pipe, ref_pipe):
    def record(into):
        return lambda i, t, sample: into.append((i, t, sample.shape))

    ours, theirs = [], []
    our_pipe(batch_size=1, class_labels=3, timesteps=[30, 20, 10, 0], generator=gen(), callback=record(ours),
             callback_steps=2, output_type="np")
    ref_pipe(batch_size=1, class_labels=3, num_inference_steps=None, timesteps=[30, 20, 10, 0], generator=gen(),
             callback=record(theirs), callback_steps=2, output_type="np")
    assert [i for i, _, _ in ours] == [i for i, _, _ in theirs] == [0, 2]
    for (_, a, shape_a), (_, b, shape_b) in zip(ours, theirs):
        assert torch.is_tensor(a) and a.ndim == 0 and shape_a == shape_b
        assert abs(float(a) - float(b)) < 1e-9
    with pytest.raises(InvalidInputError, match="^callback_steps: 0 must be a positive integer$"):
        our_pipe(batch_size=1, class_labels=3, callback=print, callback_steps=0)


def test_positional_arguments_mean_what_they_mean_in_diffusers(our_pipe, ref_pipe):
    """`pipe(1, 3, None, [20, 0], generator)` is diffusers' order (`sigmas`, ours, comes last)."""
    import inspect

    theirs = list(inspect.signature(DiffusersPipeline.__call__).parameters)
    ours = list(inspect.signature(ConsistencyModelPipeline.__call__).parameters)
    assert ours[:len(theirs)] == theirs and ours[len(theirs):] == ["sigmas"]
    a = our_pipe(1, 3, None, [20, 0], gen(), None, "np").images
    b = ref_pipe(1, 3, None, [20, 0], gen(), None, "np").images
    np.testing.assert_allclose(a, b, **TOL)


# -- D6: loading and saving keywords --------------------------------------------------------------------
def test_dtype_keywords(pipeline_dir):
    assert ConsistencyModelPipeline.from_pretrained(pipeline_dir, dtype=torch.float16).unet.dtype == torch.float16
    assert ConsistencyModelPipeline.from_pretrained(pipeline_dir, torch_dtype=torch.bfloat16).unet.dtype == torch.bfloat16
    per_component = ConsistencyModelPipeline.from_pretrained(pipeline_dir, dtype={"unet": torch.bfloat16,
                                                                                  "default": torch.float16})
    assert per_component.unet.dtype == torch.bfloat16
    with pytest.raises(InvalidInputError, match="^dtype: torch.float16 and torch_dtype=torch.bfloat16 disagree"):
        ConsistencyModelPipeline.from_pretrained(pipeline_dir, dtype=torch.float16, torch_dtype=torch.bfloat16)
    with pytest.raises(InvalidInputError, match="^dtype: 'fp16' is not a torch dtype"):
        ConsistencyModelPipeline.from_pretrained(pipeline_dir, dtype="fp16")


def test_to_takes_positional_device_and_dtype(pipe):
    p = ConsistencyModelPipeline(pipe.unet.__class__(pipe.unet.config), pipe.scheduler)
    assert p.to(torch.bfloat16).unet.dtype == torch.bfloat16
    assert p.to("cpu", torch.float32).unet.dtype == torch.float32 and p.device.type == "cpu"


def test_variants_and_safe_serialization(tmp_path, pipe):
    pipe.save_pretrained(tmp_path / "v", variant="fp16")
    assert (tmp_path / "v" / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    assert not (tmp_path / "v" / "unet" / "diffusion_pytorch_model.safetensors").exists()
    loaded = ConsistencyModelPipeline.from_pretrained(tmp_path / "v", variant="fp16")
    for key, value in pipe.unet.state_dict().items():
        assert torch.equal(loaded.unet.state_dict()[key], value), key
    theirs = DiffusersPipeline.from_pretrained(tmp_path / "v", variant="fp16")  # diffusers reads our variant folder
    assert theirs.unet.config.block_out_channels == [32, 64]
    pipe.save_pretrained(tmp_path / "plain")
    with pytest.raises(InvalidInputError, match=r"^variant: there are no weights of variant='fp16' in .*unet "
                                                r"\(found: diffusion_pytorch_model\.safetensors\)$"):
        ConsistencyModelPipeline.from_pretrained(tmp_path / "plain", variant="fp16")
    pipe.save_pretrained(tmp_path / "bin", safe_serialization=False)  # as diffusers: a torch.save state dict
    assert sorted(p.name for p in (tmp_path / "bin" / "unet").iterdir()) == ["config.json", "diffusion_pytorch_model.bin"]
    with pytest.raises(InvalidInputError, match="^safe_serialization: 'no' is not allowed; use True"):
        pipe.save_pretrained(tmp_path / "bad", safe_serialization="no")
    assert not (tmp_path / "bad").exists()


def test_components_rebuild_the_pipeline(pipe):
    assert set(pipe.components) == {"unet", "scheduler"} and pipe.components["unet"] is pipe.unet
    copy = ConsistencyModelPipeline(**pipe.components)
    copy.set_progress_bar_config(disable=True)
    a = pipe(batch_size=1, class_labels=1, generator=gen(), output_type="pt").images
    torch.testing.assert_close(copy(batch_size=1, class_labels=1, generator=gen(), output_type="pt").images, a,
                               rtol=0, atol=0)


def test_a_pipeline_with_diffusers_scheduler_saves_our_config(our_pipe, ref_pipe, tmp_path):
    mixed = ConsistencyModelPipeline(our_pipe.unet, DiffusersScheduler.from_config(ref_pipe.scheduler.config))
    assert isinstance(mixed.parts().scheduler_config, SchedulerConfig)
    mixed.save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "scheduler" / "scheduler_config.json").read_text())
    assert set(saved) == {"_class_name", *SchedulerConfig.FIELDS}


def test_assigning_the_scheduler_or_the_unet_changes_sampling_as_in_diffusers(diffusers_pipeline_dir):
    """`pipe.scheduler = Scheduler.from_config(pipe.scheduler.config, ...)` is diffusers' way to
    change sampling settings; it was silently ignored here (the settings were read once)."""
    ours = ConsistencyModelPipeline.from_pretrained(diffusers_pipeline_dir)
    theirs = DiffusersPipeline.from_pretrained(diffusers_pipeline_dir)
    for p in (ours, theirs):
        p.set_progress_bar_config(disable=True)
    before = ours(batch_size=2, class_labels=LABELS, num_inference_steps=2, generator=gen(), output_type="np").images
    ours.scheduler = CMStochasticIterativeScheduler.from_config(ours.scheduler.config, num_train_timesteps=12)
    theirs.scheduler = DiffusersScheduler.from_config(theirs.scheduler.config, num_train_timesteps=12)
    expected = theirs(batch_size=2, class_labels=LABELS, num_inference_steps=2, generator=gen(), output_type="np").images
    got = ours(batch_size=2, class_labels=LABELS, num_inference_steps=2, generator=gen(), output_type="np").images
    np.testing.assert_allclose(got, expected, **TOL)
    assert np.abs(got - before).max() > 0.05

    ours.scheduler = DiffusersScheduler.from_config(theirs.scheduler.config)   # their class, as in the constructor
    np.testing.assert_allclose(ours(batch_size=2, class_labels=LABELS, num_inference_steps=2, generator=gen(),
                                    output_type="np").images, expected, **TOL)
    other = ConsistencyModelPipeline.from_preset("test", seed=1).unet
    ours.unet = other
    fresh = ConsistencyModelPipeline(other, ours.scheduler)
    fresh.set_progress_bar_config(disable=True)
    torch.testing.assert_close(ours(batch_size=2, class_labels=LABELS, generator=gen(), output_type="pt").images,
                               fresh(batch_size=2, class_labels=LABELS, generator=gen(), output_type="pt").images,
                               rtol=0, atol=0)


def test_a_scheduler_made_for_other_models_is_refused_and_a_swap_keeps_the_kind():
    from diffusers import SCMScheduler

    digits = ConsistencyModelPipeline.from_pretrained("digits")
    with pytest.raises(InvalidInputError, match=r"^scheduler: SCMScheduler does not sample this pipeline's model "
                                                r"\(a consistency model"):
        digits.scheduler = SCMScheduler()
    with pytest.raises(InvalidInputError, match=r"^scheduler: SCMScheduler does not sample"):
        ConsistencyModelPipeline.from_pretrained("digits", scheduler=SCMScheduler())
    teacher = ConsistencyModelPipeline.from_pretrained("digits-teacher")      # an EDM model, same scheduler class
    teacher.scheduler = CMStochasticIterativeScheduler.from_config(teacher.scheduler.config)   # carries no kind
    assert teacher.parametrization == "edm" and teacher.scheduler.parametrization == "edm"
    # A TrigFlow model's pipeline holds this package's scheduler (its folder names SCMScheduler): both are taken.
    trig = ConsistencyModelPipeline.from_pretrained("digits-teacher-trigflow")
    levels = trig.noise_schedule(NoiseLevels.of(4, None, None))
    trig.scheduler = trig.scheduler
    trig.scheduler = CMStochasticIterativeScheduler.from_config(trig.scheduler.config)
    assert trig.parametrization == "trigflow_diffusion" and trig.noise_schedule(NoiseLevels.of(4, None, None)) == levels


def test_a_compiled_unet_assigned_saves_as_the_plain_network(tmp_path):
    """diffusers' compile idiom, `pipe.unet = torch.compile(pipe.unet)`: the folder must load again."""
    pipe = ConsistencyModelPipeline.from_pretrained("digits")
    plain = pipe.unet
    pipe.unet = torch.compile(plain)
    pipe.save_pretrained(tmp_path / "c")
    again = ConsistencyModelPipeline.from_pretrained(tmp_path / "c")
    assert all(a.equal(b) for a, b in zip(again.unet.state_dict().values(), plain.state_dict().values()))


def test_the_fast_kernel_setting_survives_a_network_without_them():
    from consistency_models.networks import MLP_PRESETS
    from consistency_models.networks.mlp import MLP

    pipe = ConsistencyModelPipeline.from_pretrained("digits")
    unet = pipe.unet
    pipe.enable_fast_kernels(False)
    assert not pipe.fast_paths.fast_kernels
    pipe.enable_fast_kernels(True)
    pipe.unet = MLP(MLP_PRESETS["mlp2d"])          # has none
    assert not pipe.fast_paths.fast_kernels
    pipe.unet = unet
    assert pipe.fast_paths.fast_kernels


def test_save_config_onto_a_file_is_one_line_and_leaves_the_file(tmp_path):
    """diffusers: "should be a directory, not a file"; ours stopped in os.makedirs' FileExistsError."""
    target = tmp_path / "scheduler_config.json"
    target.write_text("{}")
    for where in (target, target / "inside"):
        with pytest.raises(InvalidInputError, match=r"^save_directory: .*scheduler_config\.json is a file; give a folder"):
            CMStochasticIterativeScheduler().save_config(where)
    assert target.read_text() == "{}"


def test_a_folder_of_a_variant_only_names_the_variant_to_give(tmp_path, pipe):
    pipe.save_pretrained(tmp_path / "m", variant="fp16")
    with pytest.raises(InvalidInputError, match=r"^weights: missing file .*diffusion_pytorch_model\.safetensors "
                                                r"\(found: diffusion_pytorch_model\.fp16\.safetensors\); to load those "
                                                r"of a variant give variant='fp16' "
                                                r"\(cm sample, edit, tune-timesteps: --variant fp16\)$"):
        ConsistencyModelPipeline.from_pretrained(tmp_path / "m")
    assert ConsistencyModelPipeline.from_pretrained(tmp_path / "m", variant="fp16").unet is not None


def test_from_config_returns_the_unused_keywords_when_asked_as_diffusers_does():
    config = DiffusersScheduler().config
    theirs, their_unused = DiffusersScheduler.from_config(config, return_unused_kwargs=True, sigma_mx=40.0, rho=5.0)
    ours, our_unused = CMStochasticIterativeScheduler.from_config(config, return_unused_kwargs=True, sigma_mx=40.0,
                                                                  rho=5.0)
    assert our_unused == their_unused == {"sigma_mx": 40.0}
    assert ours.config.rho == theirs.config.rho == 5.0
    assert isinstance(CMStochasticIterativeScheduler.from_config(config, rho=5.0), CMStochasticIterativeScheduler)


def test_after_a_call_the_scheduler_holds_its_schedule_as_in_diffusers(our_pipe, ref_pipe):
    """diffusers' pipeline calls `scheduler.set_timesteps` and steps it: code reading
    `pipe.scheduler.timesteps`/`.sigmas`/`.step_index` in a callback or after a call finds the
    call's schedule (with the grid's full list before)."""
    for kwargs in (dict(timesteps=[30, 20, 0]), dict(num_inference_steps=4), dict()):
        seen = {}
        for name, pipe in (("ours", our_pipe), ("theirs", ref_pipe)):
            steps = []
            pipe(batch_size=1, class_labels=3, generator=gen(), output_type="np", **kwargs,
                 callback=lambda i, t, x, pipe=pipe, steps=steps: steps.append((i, pipe.scheduler.step_index)))
            seen[name] = (pipe.scheduler.timesteps.tolist(), pipe.scheduler.sigmas.tolist(), steps)
        (ours_t, ours_s, ours_steps), (theirs_t, theirs_s, theirs_steps) = seen["ours"], seen["theirs"]
        np.testing.assert_allclose(ours_t, theirs_t, rtol=0, atol=1e-4)
        np.testing.assert_allclose(ours_s, theirs_s, rtol=1e-6)
        assert ours_steps == theirs_steps and len(ours_t) == len(kwargs.get("timesteps", [0] * kwargs.get(
            "num_inference_steps", 1)))
        for pipe in (our_pipe, ref_pipe):   # without a callback too (the compiled and graph paths take no callback)
            pipe(batch_size=1, class_labels=3, generator=gen(), output_type="np", **kwargs)
        assert our_pipe.scheduler.step_index == ref_pipe.scheduler.step_index == len(ours_t)


def test_diffusers_members_that_drop_in_code_calls(our_pipe, ref_pipe, diffusers_pipeline_dir):
    """`pipe.config`, `name_or_path`, `numpy_to_pil`, `progress_bar(iterable=/total=)`,
    `unet.config.sample_size`/`num_class_embeds`, `unet.device`; the scheduler's `begin_index`,
    `set_begin_index` and `index_for_timestep` — each against diffusers' own."""
    assert dict(our_pipe.config) == dict(ref_pipe.config) and our_pipe.name_or_path == ref_pipe.name_or_path
    assert ConsistencyModelPipeline(our_pipe.unet, our_pipe.scheduler).name_or_path is None
    images = np.random.default_rng(0).random((2, 5, 5, 3))
    for ours, theirs in ((our_pipe.numpy_to_pil(images), ref_pipe.numpy_to_pil(images)),
                         (our_pipe.numpy_to_pil(images[0, ..., :1]), ref_pipe.numpy_to_pil(images[0, ..., :1]))):
        assert [i.mode for i in ours] == [i.mode for i in theirs]
        assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(ours, theirs))
    assert list(our_pipe.progress_bar(iterable=range(3))) == [0, 1, 2]
    assert our_pipe.progress_bar(total=3).total == 3
    for pipe in (our_pipe, ref_pipe):
        with pytest.raises(ValueError):   # neither given (ours: InvalidInputError, a ValueError)
            pipe.progress_bar()
    for key in ("sample_size", "in_channels", "out_channels", "num_class_embeds"):
        assert getattr(our_pipe.unet.config, key) == ref_pipe.unet.config[key], key
    assert our_pipe.unet.device == ref_pipe.unet.device and our_pipe.unet.dtype == ref_pipe.unet.dtype
    ours, theirs = CMStochasticIterativeScheduler.from_config(our_pipe.scheduler.config), \
        DiffusersScheduler.from_config(our_pipe.scheduler.config)
    for scheduler in (ours, theirs):
        scheduler.set_timesteps(timesteps=[30, 20, 10, 0])
        assert scheduler.begin_index is None
        scheduler.set_begin_index(2)
    assert ours.begin_index == theirs.begin_index == 2
    assert [ours.index_for_timestep(t) for t in ours.timesteps] == \
        [theirs.index_for_timestep(t) for t in theirs.timesteps] == [0, 1, 2, 3]
    x = torch.randn(1, 3, 32, 32, generator=gen())
    torch.testing.assert_close(ours.scale_model_input(x, ours.timesteps[0]), theirs.scale_model_input(x, theirs.timesteps[0]))
    assert ours.step_index == theirs.step_index == 2   # the begin index, not the timestep's position
