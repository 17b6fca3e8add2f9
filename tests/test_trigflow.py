"""TrigFlow models (issue 15, part 1): the parametrization, sCM sampling, folders diffusers'
`SCMScheduler` reads, and `cm sample` with TrigFlow times.

References computed another way: the closed form for a network that outputs zeros, the
t-space `TrigFlow` module against the σ-space `Denoiser` the pipeline uses, a hand-written
t-space sampling loop, and a real diffusers `SCMScheduler` step loop over the same network.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from diffusers import SCMScheduler

from consistency_models import CMStochasticIterativeScheduler, ConsistencyModelPipeline, InvalidInputError
from consistency_models.cli import main
from consistency_models.parametrization import Denoiser, TrigFlowFunction
from consistency_models.trigflow import T_MAX, TrigFlow, default_times, sigma_from_t, t_from_sigma


def test_time_and_sigma():
    assert T_MAX == pytest.approx(1.5645, abs=1e-4) and math.tan(T_MAX) * 0.5 == pytest.approx(80.0)
    for sigma in (0.002, 0.5, 1.38, 80.0):
        assert sigma_from_t(t_from_sigma(sigma)) == pytest.approx(sigma, rel=1e-12)
    t = torch.tensor([0.1, 1.1], dtype=torch.float64)
    torch.testing.assert_close(t_from_sigma(sigma_from_t(t)), t)
    assert default_times(1) == [T_MAX] and default_times(2) == [T_MAX, 1.1]
    assert default_times(4) == pytest.approx([T_MAX, 0.75 * T_MAX, 0.5 * T_MAX, 0.25 * T_MAX])


class Zero(torch.nn.Module):
    """A network that outputs zeros: F = 0, so f(x_t, t) = cos t·x_t."""

    def forward(self, x, c_noise, class_labels=None):
        return torch.zeros_like(x)


@pytest.mark.parametrize("time_input", ["t", "log_sigma"])
def test_zero_network_gives_the_closed_form(time_input):
    x_t = torch.randn(3, 2)
    t = torch.tensor([0.3, 1.0, 1.5], dtype=torch.float64)
    expected = torch.cos(t).float()[:, None] * x_t
    torch.testing.assert_close(TrigFlow(Zero(), time_input=time_input)(x_t, t), expected)


class Echo(torch.nn.Module):
    """network(u, c) = c (broadcast): shows which time input the wrappers give."""

    def forward(self, x, c_noise, class_labels=None):
        return c_noise.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1))).expand_as(x)


def test_time_inputs_by_hand():
    """F = network(u, t) for "t"; F = −network(u, 250·ln(σ_d·tan t)) for "log_sigma"."""
    u, t = torch.zeros(2, 2), torch.tensor([0.4, 1.2], dtype=torch.float64)
    by_t = TrigFlow(Echo(), time_input="t").F_scaled(u, t)
    by_sigma = TrigFlow(Echo(), time_input="log_sigma").F_scaled(u, t)
    torch.testing.assert_close(by_t[:, 0], t.float())
    torch.testing.assert_close(by_sigma[:, 0], (-250 * torch.log(0.5 * torch.tan(t))).float())


@pytest.mark.parametrize("time_input, wrapper", [("log_sigma", Denoiser), ("t", TrigFlowFunction)])
def test_the_t_space_function_equals_the_sigma_space_wrapper(unet, time_input, wrapper):
    """f(x_t, t) = cos t·x_t − sin t·σ_d·F(x_t/σ_d, t) equals the pipeline's σ-space wrapper at
    x_σ = x_t / cos t, σ = σ_d·tan t (EDM's D for an EDM network; TrigFlowFunction for input t)."""
    gen = torch.Generator().manual_seed(0)
    x_t = torch.randn(2, 3, 32, 32, generator=gen)
    labels = torch.tensor([1, 7])
    for t in (0.05, 1.1, T_MAX):
        tt = torch.tensor(t, dtype=torch.float64)
        in_t = TrigFlow(unet, time_input=time_input)(x_t, tt, labels)
        in_sigma = wrapper(unet)(x_t / math.cos(t), torch.tensor(sigma_from_t(t), dtype=torch.float64), labels)
        torch.testing.assert_close(in_t, in_sigma, rtol=1e-5, atol=1e-5)


def trigflow_pipeline(unet, parametrization="trigflow"):
    pipe = ConsistencyModelPipeline(unet, CMStochasticIterativeScheduler(clip_denoised=False),
                                    parametrization=parametrization)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def trigflow_pipe(unet):
    return trigflow_pipeline(unet)


def t_space_loop(unet, times, labels, seed, time_input="t"):
    """The paper's sampler in TrigFlow time: x = σ_d·z; x₀ = f(x, t_i); x = cos t·x₀ + sin t·σ_d·z."""
    net = TrigFlow(unet, time_input=time_input)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 32, 32, generator=gen) * 0.5
    times = [*times, 0.0]
    for s, t in zip(times, times[1:]):
        x0 = net(x, torch.tensor(s, dtype=torch.float64), labels)
        z = torch.randn(x0.shape, generator=gen) * 0.5
        x = math.cos(t) * x0 + math.sin(t) * z
    return x


@pytest.mark.parametrize("parametrization, time_input", [("trigflow", "t"), ("trigflow_edm", "log_sigma")])
@pytest.mark.parametrize("steps, times", [(1, [T_MAX]), (2, [T_MAX, 1.1]), (3, [T_MAX, 2 * T_MAX / 3, T_MAX / 3])])
def test_pipeline_samples_as_the_t_space_loop(unet, parametrization, time_input, steps, times):
    pipe = trigflow_pipeline(unet, parametrization)
    labels = torch.tensor([3, 5])
    ours = pipe(batch_size=2, class_labels=labels, num_inference_steps=steps, output_type="pt",
                generator=torch.Generator().manual_seed(4)).images
    reference = (t_space_loop(unet, times, labels, 4, time_input) / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(ours, reference, rtol=0, atol=2e-5)
    explicit = pipe(batch_size=2, class_labels=labels, timesteps=times, output_type="pt",
                    generator=torch.Generator().manual_seed(4)).images
    torch.testing.assert_close(explicit, ours, rtol=0, atol=1e-6)


def diffusers_scm_loop(unet, scheduler, labels, seed, **set_timesteps):
    """diffusers' SCMScheduler as its pipelines drive it: x = σ_d·z, model_output = σ_d·F."""
    net = TrigFlow(unet, scheduler.config.sigma_data)
    scheduler.set_timesteps(**set_timesteps)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 32, 32, generator=gen) * scheduler.config.sigma_data
    for t in scheduler.timesteps[:-1]:
        velocity = net.velocity(x, t.double(), labels)
        x = scheduler.step(velocity, t, x, generator=gen).prev_sample
    return x


@pytest.mark.parametrize("steps, middle", [(1, None), (2, 1.1), (2, 1.3)])
def test_a_diffusers_scm_loop_gives_our_images(trigflow_pipe, unet, tmp_path, steps, middle):
    """Our folder's scheduler config loads in diffusers' SCMScheduler; its loop over the same network
    and generator gives our pipeline's samples."""
    trigflow_pipe.save_pretrained(tmp_path / "tf")
    scheduler = SCMScheduler.from_pretrained(tmp_path / "tf" / "scheduler")
    assert scheduler.config.prediction_type == "trigflow" and scheduler.config.sigma_data == 0.5
    labels = torch.tensor([2, 9])
    theirs = diffusers_scm_loop(unet, scheduler, labels, 11, num_inference_steps=steps, max_timesteps=T_MAX,
                                intermediate_timesteps=middle)
    times = scheduler.timesteps[:-1].tolist()  # diffusers keeps t in float32: t_max moves by 4e-8, σ by 6e-6
    assert times == pytest.approx([T_MAX] if steps == 1 else [T_MAX, middle], abs=1e-7)
    ours = trigflow_pipe(batch_size=2, class_labels=labels, timesteps=times, output_type="pt",
                         generator=torch.Generator().manual_seed(11)).images
    torch.testing.assert_close(ours, (theirs / 2 + 0.5).clamp(0, 1), rtol=0, atol=2e-5)


def test_folder_round_trip_and_diffusers_scheduler_object(trigflow_pipe, unet, tmp_path):
    trigflow_pipe.save_pretrained(tmp_path / "tf")
    config = json.loads((tmp_path / "tf" / "scheduler" / "scheduler_config.json").read_text())
    assert config["_class_name"] == "SCMScheduler" and config["prediction_type"] == "trigflow"
    assert json.loads((tmp_path / "tf" / "model_index.json").read_text())["scheduler"] == ["diffusers", "SCMScheduler"]
    loaded = ConsistencyModelPipeline.from_pretrained(tmp_path / "tf", fast_kernels=False)
    assert loaded.parametrization == "trigflow" and loaded.sampling_config == trigflow_pipe.sampling_config
    with_theirs = ConsistencyModelPipeline(unet, SCMScheduler())  # a diffusers scheduler object: TrigFlow
    assert with_theirs.parametrization == "trigflow" and with_theirs.sampling_config.clip_denoised is False
    a, b = (p(batch_size=2, class_labels=[1, 2], num_inference_steps=2, output_type="np",
              generator=torch.Generator().manual_seed(0)).images for p in (loaded, with_theirs))
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_a_scheduler_that_contradicts_the_parametrization_is_refused(trigflow_pipe, tmp_path):
    trigflow_pipe.save_pretrained(tmp_path / "tf")
    index = json.loads((tmp_path / "tf" / "model_index.json").read_text())
    index["_parametrization"] = "consistency"
    (tmp_path / "tf" / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(InvalidInputError, match="pairs the SCMScheduler scheduler with the 'consistency'"):
        ConsistencyModelPipeline.from_pretrained(tmp_path / "tf")


def test_cm_sample_with_trigflow_times(trigflow_pipe, tmp_path, capsys):
    trigflow_pipe.save_pretrained(tmp_path / "tf")
    model = str(tmp_path / "tf")
    assert main(["sample", "--model", model, "--timesteps", "1.56454,1.1", "--class-labels", "3",
                 "--batch-size", "2", "--out", str(tmp_path / "a.npz")]) == 0
    assert main(["sample", "--model", model, "--steps", "2", "--class-labels", "3", "--batch-size", "2",
                 "--out", str(tmp_path / "b.npz")]) == 0
    a, b = np.load(tmp_path / "a.npz")["arr_0"], np.load(tmp_path / "b.npz")["arr_0"]
    assert a.shape == (2, 32, 32, 3) and np.abs(a.astype(int) - b.astype(int)).max() <= 1
    capsys.readouterr()
    assert main(["sample", "--model", model, "--timesteps", "22,0", "--out", str(tmp_path / "c.png")]) == 2
    assert "must be TrigFlow times t with 0 < t < π/2" in capsys.readouterr().err
    assert main(["sample", "--model", model, "--num", "4", "--batch-size", "2", "--steps", "2",
                 "--out", str(tmp_path / "many.npz")]) == 0
    assert np.load(tmp_path / "many.npz")["arr_0"].shape == (4, 32, 32, 3)


def test_grid_indices_must_be_integers_for_consistency_models(pipeline_dir, tmp_path, capsys):
    assert main(["sample", "--model", str(pipeline_dir), "--timesteps", "22.5,0",
                 "--out", str(tmp_path / "x.png")]) == 2
    assert ("must be grid indices (integers, e.g. 20,0); times such as 1.1 are for sCM (TrigFlow consistency) "
            "and MeanFlow models") in capsys.readouterr().err   # the example is on the model's 40-point grid
    assert main(["sample", "--timesteps", "0,9", "--out", str(tmp_path / "x.png")]) == 2
    assert "timesteps: [0, 9] must be strictly descending (e.g. 9,0)\n" in capsys.readouterr().err  # digits: 18


def test_editing_runs_on_a_trigflow_model(trigflow_pipe):
    """Algorithm 4 takes the TrigFlow f in σ-space as it takes a consistency function: the known
    pixels survive exactly; an interpolation frame at z0 is the one-step sample of z0."""
    from consistency_models import editing

    gen = torch.Generator().manual_seed(1)
    z0, z1 = torch.randn(1, 3, 32, 32, generator=gen), torch.randn(1, 3, 32, 32, generator=gen)
    frames = editing.interpolate(trigflow_pipe, z0, z1, num=3, class_labels=4)
    one_step = trigflow_pipe(batch_size=1, latents=z0, class_labels=[4], output_type="pt").images
    torch.testing.assert_close(frames[:1], one_step, rtol=1e-5, atol=1e-6)  # float32 rounding of the slerp at 0
    image = (torch.rand(1, 3, 32, 32, generator=gen) > 0.5).float()
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:24, 8:24] = 1
    filled = editing.inpaint(trigflow_pipe, image, mask, num_inference_steps=3, class_labels=4, generator=gen)
    keep = mask.expand_as(image) == 0
    assert torch.equal(filled[keep], image[keep]) and not torch.equal(filled, image)


def _inpainting_case():
    gen = torch.Generator().manual_seed(5)
    image = torch.rand(1, 3, 32, 32, generator=gen)
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 4:20, 10:30] = 1
    return image, mask, image * 2 - 1, mask.expand(1, 3, 32, 32)


@pytest.mark.parametrize("kind", ["trigflow", "edm"])
def test_editing_runs_the_models_own_sampler(trigflow_pipe, pipe, kind):
    """Algorithm 4 goes through the pipeline's sampler: an sCM model re-noises x₀ + σ·z and ends at
    0; an EDM model takes Heun steps of its ODE with the known part put back into D (then an Euler
    step into 0). Both written out here by hand from the paper's formulas."""
    from consistency_models import editing
    from consistency_models.sampling import heun_step

    model = trigflow_pipe if kind == "trigflow" else ConsistencyModelPipeline(pipe.unet, pipe.scheduler,
                                                                               parametrization="edm")
    image, mask, y, omega = _inpainting_case()
    labels = torch.tensor([4])
    out = editing.inpaint(model, image, mask, sigmas=[10.0, 1.0, 0.2], class_labels=4,
                          generator=torch.Generator().manual_seed(3))

    known = y * (1 - omega)

    def projected(x, sigma, class_labels):
        x0 = model.denoiser(x, torch.tensor(float(sigma), dtype=torch.float64), class_labels).clamp(-1, 1)
        return known + x0 * omega

    gen = torch.Generator().manual_seed(3)
    x = known + 10.0 * torch.randn(y.shape, generator=gen)
    levels = [10.0, 1.0, 0.2, 0.0]
    for sigma, sigma_next in zip(levels, levels[1:]):
        if kind == "trigflow":
            x0 = projected(x, sigma, labels)
            z = torch.randn(y.shape, generator=gen)  # drawn at every step, the last too
            x = x0 + sigma_next * z
        elif sigma_next > 0:
            x = heun_step(projected, x, torch.tensor(sigma, dtype=torch.float64),
                          torch.tensor(sigma_next, dtype=torch.float64), labels)
        else:
            x = projected(x, sigma, labels)  # Euler into σ = 0: x + (0 − σ)(x − D)/σ = D
    expected = (x / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    keep = omega == 0
    torch.testing.assert_close(out[keep], image[keep], rtol=0, atol=1e-6)
    assert (out - image).abs()[~keep].max() > 0.05  # the masked part was regenerated


def test_the_timestep_search_points_sCM_models_to_explicit_times(trigflow_pipe, pipe):
    from consistency_models.evaluation.timestep_search import search_range

    with pytest.raises(InvalidInputError, match=r"this is an sCM \(TrigFlow\) model: give its two times directly"):
        search_range(trigflow_pipe)
    edm = ConsistencyModelPipeline(pipe.unet, pipe.scheduler, parametrization="edm")
    with pytest.raises(InvalidInputError, match=r"this is a diffusion \(EDM\) model$"):
        search_range(edm)


def test_one_sampling_loop_with_two_renoisings():
    """sample_consistency is the one loop; the re-noising differs. Algorithm 1 draws no noise in a
    one-step run and adds s_noise·√(σ² − σ_min²)·z; sCM draws at every step (the last too, as
    diffusers' SCMScheduler) and adds σ_next·z, nothing at σ = 0."""
    from consistency_models.sampling import Renoising, TrigFlowRenoising, sample_consistency, sample_trigflow

    x = torch.zeros(2, 3)
    model = lambda x, sigma, labels: x * 0.5 + 1.0  # noqa: E731  (x₀ as a fixed function of x)
    drawn = []

    def noise(sigma, sigma_next):
        drawn.append((float(sigma), float(sigma_next)))
        return torch.ones(2, 3)

    one = sample_consistency(model, x, [80.0, 0.002], noise_sampler=noise, clip_denoised=False)
    assert drawn == [] and torch.equal(one, torch.ones(2, 3))
    two = sample_consistency(model, x, [80.0, 2.0, 0.002], noise_sampler=noise, clip_denoised=False, s_noise=0.5)
    assert drawn == [(80.0, 2.0), (2.0, 0.002)]
    first = 1.0 + 0.5 * (2.0**2 - 0.002**2) ** 0.5   # x after step 1; step 2 adds 0·z at σ_min
    torch.testing.assert_close(two, torch.full((2, 3), first * 0.5 + 1.0))
    drawn.clear()
    trig = sample_trigflow(model, x, [80.0, 2.0, 0.0], noise_sampler=noise)
    assert drawn == [(80.0, 2.0), (2.0, 0.0)]
    torch.testing.assert_close(trig, torch.full((2, 3), (1.0 + 2.0) * 0.5 + 1.0))
    assert Renoising().draws(1) is False and TrigFlowRenoising().draws(1) is True
    with pytest.raises(InvalidInputError, match="followed by 0"):
        sample_trigflow(model, x, [80.0])
