"""The shipped digits classifier: it loads, its features have the documented shape, it is accurate."""

from __future__ import annotations

import pytest
import torch

from consistency_models.data import load_dataset
from consistency_models.metrics.digits_classifier import (
    DigitsClassifier,
    default_weights_path,
    load_digits_classifier,
)


@pytest.fixture(scope="module")
def classifier() -> DigitsClassifier:
    return load_digits_classifier()


def test_shipped_weights_are_small():
    assert default_weights_path().stat().st_size < 1_000_000


def test_held_out_accuracy(classifier):
    x, labels = load_dataset("digits:test").tensors()
    with torch.no_grad():
        accuracy = (classifier(x).argmax(dim=1) == labels).float().mean().item()
    assert accuracy >= 0.95


def test_features_are_128_d_and_eval_mode_is_deterministic(classifier):
    x, _ = load_dataset("digits:test").tensors()
    with torch.no_grad():
        f = classifier.features(x[:7])
        assert f.shape == (7, 128) and f.dtype == torch.float32
        assert torch.equal(f, classifier.features(x[:7]))
        assert classifier(x[:7]).shape == (7, 10)
    assert not classifier.training


def test_missing_weights_give_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_digits_classifier.py"):
        load_digits_classifier(tmp_path / "nope.safetensors")
