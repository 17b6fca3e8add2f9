"""Folder and number compatibility with diffusers' `ConsistencyModelPipeline` and `UNet2DModel`.

Reference: diffusers 0.42 itself. Pipelines written by diffusers load in ours and give the same
images for the same seeds; ours load in diffusers; the UNet computes the same function.
"""

import numpy as np
import pytest
import torch
from diffusers import ConsistencyModelPipeline as DiffusersPipeline
from diffusers import UNet2DModel

from consistency_models import ConsistencyModelPipeline, UNetModel, preset
from consistency_models.io.diffusers_format import unet_config_from_diffusers, unet_config_to_diffusers
from conftest import build_diffusers_unet, save_diffusers_pipeline

# diffusers' consistency-model test UNet, as its conversion script writes it (TEST_UNET_CONFIG).
TEST_UNET_CONFIG = {
    "sample_size": 32,
    "in_channels": 3,
    "out_channels": 3,
    "layers_per_block": 2,
    "num_class_embeds": 1000,
    "block_out_channels": [32, 64],
    "attention_head_dim": 8,
    "down_block_types": ["ResnetDownsampleBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "ResnetUpsampleBlock2D"],
    "resnet_time_scale_shift": "scale_shift",
    "attn_norm_num_groups": 32,
    "upsample_type": "resnet",
    "downsample_type": "resnet",
}

LABELS = [3, 871]
TOL = dict(rtol=1e-5, atol=1e-5)  # float32 rounding: oneDNN picks other kernels (and sums) on AVX2 than on AVX-512


def diffusers_pipe(folder):
    p = DiffusersPipeline.from_pretrained(folder)
    p.set_progress_bar_config(disable=True)
    return p


def our_pipe(folder):
    p = ConsistencyModelPipeline.from_pretrained(folder)
    p.set_progress_bar_config(disable=True)
    return p


def run_both(ours, ref, output_type, seed=0, timesteps=None, class_labels=LABELS, generator=None):
    make = generator or (lambda: torch.Generator().manual_seed(seed))
    steps = dict(num_inference_steps=1) if timesteps is None else dict(timesteps=timesteps)
    a = ours(batch_size=2, class_labels=class_labels, generator=make(), output_type=output_type, **steps).images
    ref_steps = dict(num_inference_steps=1) if timesteps is None else dict(num_inference_steps=None, timesteps=timesteps)
    b = ref(batch_size=2, class_labels=class_labels, generator=make(), output_type=output_type, **ref_steps).images
    return a, b


# -- config translation ---------------------------------------------------------------------------
def test_literal_test_config_translates_to_test_preset():
    """diffusers' TEST_UNET_CONFIG ↔ preset('test'), both directions."""
    assert unet_config_from_diffusers(TEST_UNET_CONFIG) == preset("test")
    ours = unet_config_to_diffusers(preset("test"))
    for key, value in TEST_UNET_CONFIG.items():
        assert ours[key] == value, key


def test_literal_config_unet_has_our_keys_and_shapes():
    ref = UNet2DModel(**TEST_UNET_CONFIG).state_dict()
    translated = UNet2DModel(**{k: v for k, v in unet_config_to_diffusers(preset("test")).items()
                                if not k.startswith("_")}).state_dict()
    ours = UNetModel(preset("test")).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in ref.items()}
    assert {k: tuple(v.shape) for k, v in translated.items()} == {k: tuple(v.shape) for k, v in ref.items()}


def test_literal_config_unet_computes_the_same(tmp_path):
    """A UNet2DModel built from the literal dict, saved by diffusers, loads in ours: same raw outputs."""
    ref = build_diffusers_unet(TEST_UNET_CONFIG, seed=20)
    save_diffusers_pipeline(ref, tmp_path / "pipe")
    ours = ConsistencyModelPipeline.from_pretrained(tmp_path / "pipe").unet
    assert ours.config == preset("test")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([1095.507, 80.949])
    y = torch.tensor([5, 999])
    with torch.no_grad():
        expected = ref(x, t, class_labels=y).sample
        got = ours(x, t, y)
    assert expected.std() > 0.1
    torch.testing.assert_close(got, expected, **TOL)


def test_unet_raw_output_matches_diffusers(diffusers_unet, diffusers_pipeline_dir):
    """Different timesteps within one batch, class labels: the same raw network output."""
    ours = ConsistencyModelPipeline.from_pretrained(diffusers_pipeline_dir).unet
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([1095.507, -600.0])
    y = torch.tensor([0, 42])
    with torch.no_grad():
        expected = diffusers_unet(x, t, class_labels=y).sample
        got = ours(x, t, y)
    torch.testing.assert_close(got, expected, **TOL)
    assert not torch.allclose(got[0], got[1], atol=1e-2)


# -- diffusers folder → our pipeline ------------------------------------------------------------------
@pytest.mark.parametrize("timesteps", [None, [22, 0]], ids=["one-step", "22,0"])
def test_diffusers_folder_samples_the_same(diffusers_pipeline_dir, timesteps):
    ours, ref = our_pipe(diffusers_pipeline_dir), diffusers_pipe(diffusers_pipeline_dir)
    a, b = run_both(ours, ref, "pt", timesteps=timesteps)
    assert a.shape == b.shape == (2, 3, 32, 32)
    torch.testing.assert_close(a, b, **TOL)
    a, b = run_both(ours, ref, "np", seed=1, timesteps=timesteps)
    assert isinstance(a, np.ndarray) and a.shape == b.shape == (2, 32, 32, 3)
    np.testing.assert_allclose(a, b, **TOL)
    assert 0.05 < a.std() and 0.0 <= a.min() and a.max() <= 1.0


def test_unconditional_folder_samples_the_same(diffusers_pipeline_dir_uncond):
    ours, ref = our_pipe(diffusers_pipeline_dir_uncond), diffusers_pipe(diffusers_pipeline_dir_uncond)
    assert ours.unet.config.num_classes is None
    for timesteps in (None, [22, 0]):
        a, b = run_both(ours, ref, "np", seed=2, timesteps=timesteps, class_labels=None)
        np.testing.assert_allclose(a, b, **TOL)
    # num_inference_steps=2 is the evenly spaced [20, 0] in both.
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    a = ours(batch_size=2, num_inference_steps=2, generator=gen(), output_type="np").images
    b = ref(batch_size=2, num_inference_steps=2, generator=gen(), output_type="np").images
    np.testing.assert_allclose(a, b, **TOL)


def test_per_sample_generators_match_diffusers(diffusers_pipeline_dir):
    ours, ref = our_pipe(diffusers_pipeline_dir), diffusers_pipe(diffusers_pipeline_dir)
    gens = lambda: [torch.Generator().manual_seed(s) for s in (11, 12)]  # noqa: E731
    a, b = run_both(ours, ref, "pt", timesteps=[22, 0], generator=gens)
    torch.testing.assert_close(a, b, **TOL)
    assert not torch.allclose(a[0], a[1], atol=1e-2)


def test_seed_changes_the_images(diffusers_pipeline_dir):
    """Guard against a comparison that passes because the output ignores the noise."""
    ours = our_pipe(diffusers_pipeline_dir)
    a = ours(batch_size=2, class_labels=LABELS, generator=torch.Generator().manual_seed(0), output_type="pt").images
    b = ours(batch_size=2, class_labels=LABELS, generator=torch.Generator().manual_seed(1), output_type="pt").images
    assert (a - b).abs().max() > 0.05


# -- our folder → diffusers ---------------------------------------------------------------------------
def test_our_folder_loads_in_diffusers(tmp_path, pipe):
    pipe.save_pretrained(tmp_path / "ours")
    ref = diffusers_pipe(tmp_path / "ours")
    assert isinstance(ref.unet, UNet2DModel)
    assert ref.scheduler.config.num_train_timesteps == pipe.scheduler.config.num_train_timesteps
    for timesteps in (None, [22, 0]):
        a, b = run_both(pipe, ref, "np", seed=4, timesteps=timesteps)
        np.testing.assert_allclose(a, b, **TOL)
    ours_state = pipe.unet.state_dict()
    for key, value in ref.unet.state_dict().items():
        assert torch.equal(value, ours_state[key]), key
