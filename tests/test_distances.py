"""Per-sample distances on literal tensors with hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from consistency_models.training.distances import get_distance, l1, l2, pseudo_huber, pseudo_huber_c

# Two samples of shape (2, 2); d = 4 elements per sample.
X = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[0.0, -1.0], [2.0, 0.5]]])
Y = torch.tensor([[[1.0, 0.0], [0.0, 4.0]], [[1.0, 1.0], [-1.0, 0.5]]])
# X − Y: sample 0 = [0, 2, 3, 0], sample 1 = [−1, −2, 3, 0]


def test_l2_is_the_mean_of_squares_per_sample():
    out = l2(X, Y)
    assert out.shape == (2,)
    assert out.tolist() == pytest.approx([(0 + 4 + 9 + 0) / 4, (1 + 4 + 9 + 0) / 4])  # 3.25, 3.5


def test_l1_is_the_mean_absolute_difference_per_sample():
    assert l1(X, Y).tolist() == pytest.approx([(0 + 2 + 3 + 0) / 4, (1 + 2 + 3 + 0) / 4])  # 1.25, 1.5


def test_pseudo_huber_default_c():
    c = 0.00054 * 2  # 0.00054·√4
    assert pseudo_huber_c(4) == pytest.approx(0.00108, rel=1e-12)
    assert pseudo_huber_c(3 * 64 * 64) == pytest.approx(0.00054 * 110.85125168440814, rel=1e-12)
    out = pseudo_huber(X, Y)
    assert out.shape == (2,)
    assert out.tolist() == pytest.approx([math.sqrt(13 + c**2) - c, math.sqrt(14 + c**2) - c], rel=1e-6)


def test_pseudo_huber_explicit_c_and_limits():
    # c = 1: √(13 + 1) − 1 and √(14 + 1) − 1
    assert pseudo_huber(X, Y, c=1.0).tolist() == pytest.approx([math.sqrt(14) - 1, math.sqrt(15) - 1], rel=1e-6)
    # c = 0: the Euclidean norm
    assert pseudo_huber(X, Y, c=0.0).tolist() == pytest.approx([math.sqrt(13), math.sqrt(14)], rel=1e-6)
    # tiny differences: ≈ ‖Δ‖²/(2c) (quadratic regime)
    small = torch.full((1, 4), 1e-5)
    c = 0.00108
    assert float(pseudo_huber(small, torch.zeros(1, 4))) == pytest.approx(4e-10 / (2 * c), rel=1e-3)
    # equal inputs give 0
    assert pseudo_huber(X, X).tolist() == [0.0, 0.0]


def test_distances_on_flat_and_half_inputs():
    a = torch.tensor([[3.0, 4.0]], dtype=torch.float16)
    b = torch.zeros(1, 2, dtype=torch.float16)
    assert l2(a, b).dtype == torch.float32
    assert l2(a, b).tolist() == [12.5]
    assert l1(a, b).tolist() == [3.5]
    c = 0.00054 * math.sqrt(2)
    assert float(pseudo_huber(a, b)) == pytest.approx(math.sqrt(25 + c**2) - c, rel=1e-6)


def test_get_distance():
    assert get_distance("l2") is l2
    assert get_distance("l1") is l1
    assert get_distance("pseudo_huber") is pseudo_huber
    with pytest.raises(ValueError, match=r"distance: 'lpips' is not one of l2, l1, pseudo_huber"):
        get_distance("lpips")
