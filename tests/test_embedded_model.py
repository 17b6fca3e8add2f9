"""The shipped digits models: they load offline, sample what they are asked for, and the CLI uses them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from consistency_models import ConsistencyModelPipeline
from consistency_models.cli import main
from consistency_models.metrics.digits_classifier import load_digits_classifier


@pytest.fixture(scope="module")
def pipe():
    pipe = ConsistencyModelPipeline.from_pretrained("digits")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def classify(images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return load_digits_classifier()(images * 2 - 1).argmax(dim=1)


def test_embedded_model_is_a_class_conditional_consistency_model(pipe):
    cfg = pipe.unet.config
    assert pipe.parametrization == "consistency"
    assert (cfg.image_size, cfg.in_channels, cfg.num_classes) == (16, 1, 10)
    assert pipe.dtype == torch.float32  # shipped in float16, loaded as float32


def test_one_step_samples_show_the_asked_digit(pipe):
    """The shipped classifier (99.7 % on held-out digits) reads ≥ 90 % of one-step samples as their label."""
    labels = torch.arange(100) % 10
    out = pipe(batch_size=100, class_labels=labels, generator=torch.Generator().manual_seed(0), output_type="pt")
    accuracy = (classify(out.images) == labels).float().mean().item()
    print(f"\none-step label accuracy on 100 samples: {accuracy:.2%}")
    assert accuracy >= 0.9


@pytest.mark.parametrize("name, kind", [("digits-teacher", "edm"), ("digits-teacher-trigflow", "trigflow_diffusion")])
def test_teachers_sample_with_heun(name, kind):
    teacher = ConsistencyModelPipeline.from_pretrained(name)
    teacher.set_progress_bar_config(disable=True)
    assert teacher.parametrization == kind
    labels = torch.arange(20) % 10
    out = teacher(batch_size=20, class_labels=labels, num_inference_steps=10,
                  generator=torch.Generator().manual_seed(0), output_type="pt")
    assert (classify(out.images) == labels).float().mean().item() >= 0.8


def test_cm_sample_without_model_uses_the_embedded_one(tmp_path, capsys):
    assert main(["sample", "--out", str(tmp_path / "grid.png")]) == 0
    assert "wrote 16 images" in capsys.readouterr().out
    assert main(["sample", "--class-labels", "3", "--batch-size", "16", "--out", str(tmp_path / "threes.npz")]) == 0
    data = np.load(tmp_path / "threes.npz")
    assert data["arr_0"].shape == (16, 16, 16, 1) and (data["arr_1"] == 3).all()
    images = torch.from_numpy(data["arr_0"]).permute(0, 3, 1, 2).float() / 255
    assert (classify(images) == 3).float().mean().item() >= 0.8


def test_sampling_is_reproducible_despite_dropout(pipe):
    """The network was trained with dropout 0.1; a loaded pipeline samples in eval mode."""
    assert not pipe.unet.training
    a = pipe(batch_size=4, generator=torch.Generator().manual_seed(7), output_type="pt").images
    b = pipe(batch_size=4, generator=torch.Generator().manual_seed(7), output_type="pt").images
    assert torch.equal(a, b)
