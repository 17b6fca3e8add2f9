"""The training methods learn: CD, CT and iCT on the 8-Gaussian mixture, scored by sliced Wasserstein.

The teacher for CD is the exact denoiser E[x₀ | x_σ] of the mixture, so the teacher's 18-step
Heun sampler is as good as a sampler of this data can be; one-step CD must come within 2× of
it. CT and iCT have no teacher; their bounds are the ones these short runs reach (printed).
"""

from __future__ import annotations

import pytest
import torch

from consistency_models import ConsistencyModelPipeline, karras_sigmas
from consistency_models.data import load_dataset, mog8_denoiser
from consistency_models.metrics import sliced_wasserstein
from consistency_models.sampling import sample_heun
from consistency_models.training import TrainConfig, Trainer

NUM = 4000


def exact_teacher(x: torch.Tensor, sigma, class_labels=None) -> torch.Tensor:
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
    return mog8_denoiser(x, sigma.expand(x.shape[0]) if sigma.ndim == 0 else sigma)


@pytest.fixture(scope="module")
def reference() -> torch.Tensor:
    data = load_dataset("toy:mog8").tensors()[0]
    return data[torch.randperm(len(data), generator=torch.Generator().manual_seed(1))[:NUM]]


def sample_sw(run_dir, reference, steps: int) -> float:
    pipe = ConsistencyModelPipeline.from_pretrained(run_dir)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(batch_size=NUM, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="pt")
    return sliced_wasserstein(out.images, reference)


def run(tmp_path, method: str, steps: int, teacher=None, **settings) -> str:
    cfg = TrainConfig.from_settings(method=method, data="toy:mog8", out=str(tmp_path / method), steps=steps, batch_size=256,
                      lr=1e-3, progress=False, save_every=steps, sample_every=steps, log_every=steps, **settings)
    return str(Trainer(cfg, teacher=teacher).run())


def test_data_floor_and_teacher(reference):
    """The exact teacher's Heun sampler is near the finite-sample floor (sanity of the yardstick)."""
    data = load_dataset("toy:mog8").tensors()[0]
    other = data[torch.randperm(len(data), generator=torch.Generator().manual_seed(2))[:NUM]]
    floor = sliced_wasserstein(other, reference)
    x = 80.0 * torch.randn(NUM, 2, generator=torch.Generator().manual_seed(0))
    teacher = sliced_wasserstein(sample_heun(exact_teacher, x, [*karras_sigmas(18).tolist(), 0.0]), reference)
    noise = sliced_wasserstein(0.5 * torch.randn(NUM, 2, generator=torch.Generator().manual_seed(3)), reference)
    print(f"\nSW data floor {floor:.4f}, exact teacher Heun-18 {teacher:.4f}, matched Gaussian {noise:.4f}")
    assert teacher < 2 * floor and floor < noise / 3


def test_cd_one_step_within_2x_of_teacher(tmp_path, reference):
    x = 80.0 * torch.randn(NUM, 2, generator=torch.Generator().manual_seed(0))
    teacher = sliced_wasserstein(sample_heun(exact_teacher, x, [*karras_sigmas(18).tolist(), 0.0]), reference)
    run_dir = run(tmp_path, "cd", 1500, teacher=exact_teacher, num_scales=18)
    one, two = sample_sw(run_dir, reference, 1), sample_sw(run_dir, reference, 2)
    print(f"\nCD: teacher Heun-18 SW {teacher:.4f}; CD 1-step {one:.4f}, 2-step {two:.4f}")
    assert one <= 2 * teacher


@pytest.mark.slow  # ~30 s; iCT's loss is checked by hand in tests/test_losses.py, its training in bench/methods.py
def test_ict_gets_close(tmp_path, reference):
    run_dir = run(tmp_path, "ict", 2000, s1=160)
    one, two = sample_sw(run_dir, reference, 1), sample_sw(run_dir, reference, 2)
    print(f"\niCT: 1-step SW {one:.4f}, 2-step {two:.4f} (bounds 0.15 / 0.08)")
    assert one < 0.15 and two < 0.08


@pytest.mark.slow  # ~30 s; CT's loss is checked against a hand computation in tests/test_losses.py; CD and iCT learn here by default
def test_ct_gets_close(tmp_path, reference):
    run_dir = run(tmp_path, "ct", 2000, s1=50)
    one, two = sample_sw(run_dir, reference, 1), sample_sw(run_dir, reference, 2)
    print(f"\nCT: 1-step SW {one:.4f}, 2-step {two:.4f} (bounds 0.6 / 0.25)")
    assert one < 0.6 and two < 0.25
