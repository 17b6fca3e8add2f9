"""Our `CMStochasticIterativeScheduler` against diffusers' scheduler and its published test numbers.

References: diffusers' `tests/schedulers/test_scheduler_consistency_model.py` (its dummy model,
its deterministic sample, its expected sums and means) and diffusers' scheduler itself.
"""

import json

import numpy as np
import pytest
import torch
from diffusers import CMStochasticIterativeScheduler as DiffusersScheduler

from consistency_models import CMStochasticIterativeScheduler, InvalidInputError, SchedulerConfig

TEST_CONFIG = {"num_train_timesteps": 201, "sigma_min": 0.002, "sigma_max": 80.0}


def dummy_sample_deter():
    """diffusers' `SchedulerCommonTest.dummy_sample_deter`: a deterministic (4, 3, 8, 8) ramp."""
    batch_size, num_channels, height, width = 4, 3, 8, 8
    num_elems = batch_size * num_channels * height * width
    sample = torch.arange(num_elems)
    sample = sample.reshape(num_channels, height, width, batch_size)
    sample = sample / num_elems
    return sample.permute(3, 0, 1, 2)


def dummy_model(sample, t):
    """diffusers' `SchedulerCommonTest.dummy_model`: sample·t/(t + 1), t broadcast over the sample."""
    t = t.reshape(-1, *(1,) * (sample.ndim - 1)).to(sample.device, dtype=sample.dtype)
    return sample * t / (t + 1)


def full_loop(scheduler, sample, model, generator):
    for t in scheduler.timesteps:
        scaled = scheduler.scale_model_input(sample, t)
        sample = scheduler.step(model(scaled, t), t, sample, generator=generator).prev_sample
    return sample


# -- diffusers' published numbers ---------------------------------------------------------------------
def test_full_loop_onestep_published_numbers():
    """diffusers `test_full_loop_no_noise_onestep`: sum 192.7614, mean 0.2510."""
    scheduler = CMStochasticIterativeScheduler(**TEST_CONFIG)
    scheduler.set_timesteps(1)
    sample = full_loop(scheduler, dummy_sample_deter() * scheduler.init_noise_sigma, dummy_model, torch.manual_seed(0))
    assert abs(sample.abs().sum().item() - 192.7614) < 1e-2
    assert abs(sample.abs().mean().item() - 0.2510) < 1e-3


def test_full_loop_custom_timesteps_published_numbers():
    """diffusers `test_full_loop_no_noise_multistep` ([106, 0]): sum 347.6357, mean 0.4527."""
    scheduler = CMStochasticIterativeScheduler(**TEST_CONFIG)
    scheduler.set_timesteps(timesteps=[106, 0])
    sample = full_loop(scheduler, dummy_sample_deter() * scheduler.init_noise_sigma, dummy_model, torch.manual_seed(0))
    assert abs(sample.abs().sum().item() - 347.6357) < 1e-2
    assert abs(sample.abs().mean().item() - 0.4527) < 1e-3


@pytest.mark.parametrize("settings", [
    dict(num_train_timesteps=40, s_noise=1.0, clip_denoised=True),
    dict(num_train_timesteps=40, s_noise=1.007, clip_denoised=False),
    dict(num_train_timesteps=151, sigma_data=0.6, rho=5.0),
])
@pytest.mark.parametrize("schedule", [dict(num_inference_steps=3), dict(timesteps=[30, 17, 4, 0])])
def test_full_loop_matches_diffusers(settings, schedule):
    """Step by step, the same samples as diffusers' scheduler for a random 'model' and the same seed."""
    ours, ref = CMStochasticIterativeScheduler(**settings), DiffusersScheduler(**settings)
    ours.set_timesteps(**schedule)
    ref.set_timesteps(**schedule)
    weight = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))

    def model(x, t):
        return torch.tanh(x * weight) * 2 + 0.01 * t

    x0 = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * 80
    a = full_loop(ours, x0, model, torch.Generator().manual_seed(3))
    b = full_loop(ref, x0, model, torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert ours.step_index == ref.step_index == len(ref.timesteps)


# -- schedules ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [40, 201])
@pytest.mark.parametrize("schedule", [
    dict(num_inference_steps=1), dict(num_inference_steps=2), dict(num_inference_steps=3),
    dict(num_inference_steps=40), dict(timesteps=[22, 0]), dict(timesteps=[17, 0]), dict(timesteps=[39, 20, 5]),
])
def test_timesteps_and_sigmas_equal_diffusers(n, schedule):
    ours, ref = CMStochasticIterativeScheduler(num_train_timesteps=n), DiffusersScheduler(num_train_timesteps=n)
    ours.set_timesteps(**schedule)
    ref.set_timesteps(**schedule)
    assert ours.timesteps.dtype == ref.timesteps.dtype
    torch.testing.assert_close(ours.timesteps, ref.timesteps, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(ours.sigmas, ref.sigmas, rtol=1e-6, atol=0)
    assert ours.custom_timesteps == ref.custom_timesteps


def test_initial_state_equals_diffusers():
    ours, ref = CMStochasticIterativeScheduler(), DiffusersScheduler()
    torch.testing.assert_close(ours.timesteps, ref.timesteps, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(ours.sigmas, ref.sigmas.float(), rtol=1e-6, atol=0)
    assert ours.init_noise_sigma == ref.init_noise_sigma == 80.0
    assert len(ours) == len(ref) == 40


def test_worked_schedules_from_design():
    """N = 40: `[22, 0]` → σ [80, 1.3824, 0.002], t [1095.507, 80.949]; 2 steps → middle σ 2.2404."""
    s = CMStochasticIterativeScheduler()
    s.set_timesteps(timesteps=[22, 0])
    np.testing.assert_allclose(s.sigmas.numpy(), [80.0, 1.3824, 0.002], atol=5e-5)
    np.testing.assert_allclose(s.timesteps.numpy(), [1095.507, 80.949], atol=1e-3)
    s.set_timesteps(timesteps=[17, 0])
    assert s.sigmas[1].item() == pytest.approx(4.3656, abs=5e-5)
    s.set_timesteps(num_inference_steps=2)
    np.testing.assert_allclose(s.sigmas.numpy(), [80.0, 2.2404, 0.002], atol=5e-5)
    s.set_timesteps(num_inference_steps=1)
    np.testing.assert_allclose(s.sigmas.numpy(), [80.0, 0.002], atol=1e-6)
    assert s.timesteps.tolist() == pytest.approx([1095.507], abs=1e-3)


# -- errors -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("timesteps", [[0, 22], [22, 22, 0], [5, 10, 0]])
def test_timesteps_must_descend(timesteps):
    with pytest.raises(InvalidInputError, match=r"^timesteps: .*descending"):
        CMStochasticIterativeScheduler().set_timesteps(timesteps=timesteps)


@pytest.mark.parametrize("timesteps", [[40, 0], [100, 22, 0]])
def test_timesteps_must_be_grid_indices(timesteps):
    with pytest.raises(InvalidInputError, match=r"^timesteps: .*\[0, 39\]"):
        CMStochasticIterativeScheduler().set_timesteps(timesteps=timesteps)


def test_set_timesteps_needs_exactly_one_argument():
    s = CMStochasticIterativeScheduler()
    with pytest.raises(InvalidInputError, match="exactly one"):
        s.set_timesteps()
    with pytest.raises(InvalidInputError, match="exactly one"):
        s.set_timesteps(num_inference_steps=2, timesteps=[22, 0])


def test_too_many_inference_steps():
    with pytest.raises(InvalidInputError, match="num_inference_steps"):
        CMStochasticIterativeScheduler().set_timesteps(num_inference_steps=41)


def test_step_refuses_integer_timestep():
    s = CMStochasticIterativeScheduler()
    s.set_timesteps(timesteps=[22, 0])
    x = torch.zeros(1, 3, 4, 4)
    with pytest.raises(InvalidInputError, match="timestep"):
        s.step(x, 0, x)


# -- persistence --------------------------------------------------------------------------------------
CUSTOM = dict(num_train_timesteps=151, sigma_min=0.003, sigma_max=70.0, sigma_data=0.6, s_noise=1.007, rho=6.0,
              clip_denoised=False)


def test_save_and_load_round_trip(tmp_path):
    CMStochasticIterativeScheduler(**CUSTOM).save_pretrained(tmp_path / "s")
    loaded = CMStochasticIterativeScheduler.from_pretrained(tmp_path / "s")
    assert loaded.config == SchedulerConfig(**CUSTOM)
    data = json.loads((tmp_path / "s" / "scheduler_config.json").read_text())
    assert data["_class_name"] == "CMStochasticIterativeScheduler"


def test_diffusers_folder_loads_in_ours(tmp_path):
    DiffusersScheduler(**CUSTOM).save_pretrained(tmp_path / "d")
    ours = CMStochasticIterativeScheduler.from_pretrained(tmp_path / "d")
    assert ours.config == SchedulerConfig(**CUSTOM)
    ref = DiffusersScheduler(**CUSTOM)
    ours.set_timesteps(timesteps=[100, 50, 0])
    ref.set_timesteps(timesteps=[100, 50, 0])
    torch.testing.assert_close(ours.sigmas, ref.sigmas, rtol=1e-6, atol=0)


def test_our_folder_loads_in_diffusers(tmp_path):
    CMStochasticIterativeScheduler(**CUSTOM).save_pretrained(tmp_path / "o")
    ref = DiffusersScheduler.from_pretrained(tmp_path / "o")
    for key, value in CUSTOM.items():
        assert ref.config[key] == value, key


def test_from_pretrained_subfolder(tmp_path):
    CMStochasticIterativeScheduler(num_train_timesteps=201).save_pretrained(tmp_path / "pipe" / "scheduler")
    loaded = CMStochasticIterativeScheduler.from_pretrained(tmp_path / "pipe", subfolder="scheduler")
    assert loaded.config.num_train_timesteps == 201


def test_from_pretrained_missing_and_corrupt(tmp_path):
    with pytest.raises(InvalidInputError, match="^scheduler: missing"):
        CMStochasticIterativeScheduler.from_pretrained(tmp_path)
    (tmp_path / "scheduler_config.json").write_text('{"num_train_timesteps": 4')
    with pytest.raises(InvalidInputError, match="^scheduler: corrupt"):
        CMStochasticIterativeScheduler.from_pretrained(tmp_path)
    (tmp_path / "scheduler_config.json").write_text("[1, 2]")
    with pytest.raises(InvalidInputError, match="^scheduler: .*JSON object"):
        CMStochasticIterativeScheduler.from_pretrained(tmp_path)


def test_from_pretrained_takes_an_embedded_name_and_a_hub_id_as_diffusers_does(tmp_path, monkeypatch):
    """`from_pretrained("digits", subfolder="scheduler")`, and a Hub id whose scheduler config
    alone is fetched (huggingface_hub's snapshot_download stands in for the network here: the
    machine that runs the tests has none), with the Hub's options; offline, a one-line error."""
    import shutil

    huggingface_hub = pytest.importorskip("huggingface_hub")
    from consistency_models import ConsistencyModelPipeline

    embedded = CMStochasticIterativeScheduler.from_pretrained("digits", subfolder="scheduler")
    assert embedded.config == ConsistencyModelPipeline.from_pretrained("digits").scheduler.config
    CMStochasticIterativeScheduler(num_train_timesteps=201).save_pretrained(tmp_path / "repo" / "scheduler")
    asked = []

    def snapshot_download(repo_id, allow_patterns, **options):
        asked.append((repo_id, allow_patterns, options))
        served = tmp_path / "served"
        shutil.copytree(tmp_path / "repo", served, dirs_exist_ok=True)
        return str(served)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    loaded = CMStochasticIterativeScheduler.from_pretrained("owner/cm", subfolder="scheduler", revision="v1",
                                                            sigma_max=40.0)
    assert (loaded.config.num_train_timesteps, loaded.config.sigma_max) == (201, 40.0)
    assert asked == [("owner/cm", ["scheduler/*.json"], {"revision": "v1", "local_files_only": False})]
    monkeypatch.undo()   # the real snapshot_download, offline: nothing is fetched
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InvalidInputError, match=r"^path: could not fetch Hub id 'owner/cm' "):
        CMStochasticIterativeScheduler.from_pretrained("owner/cm", subfolder="scheduler")
    with pytest.raises(InvalidInputError, match=r"^path: no such folder 'nothere'"):
        CMStochasticIterativeScheduler.from_pretrained("nothere", subfolder="scheduler")
