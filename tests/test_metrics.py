"""KID, Inception Score, precision/recall and the digits feature extractor, against independent references.

References are written differently from the code under test (python loops over pairs, entropy
identities, brute-force sorted distance matrices) or are properties with a known answer
(IS of uniform / one-hot predictions; precision and recall of constructed manifolds).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from consistency_models import InvalidInputError
from consistency_models.data import load_dataset
from consistency_models.metrics import (
    DigitsFeatures,
    feature_extractor,
    inception_score,
    kernel_inception_distance,
    knn_radii,
    precision_recall,
)
from consistency_models.metrics.digits_classifier import load_digits_classifier


# -- KID ---------------------------------------------------------------------------------------
def mmd2_unbiased_by_pairs(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased MMD² with k(a, b) = (a·b/d + 1)³, one kernel evaluation per pair."""
    d = x.shape[1]

    def k(a, b):
        return (float(np.dot(a, b)) / d + 1.0) ** 3

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(a, b) for a in x for b in y) / (m * n)
    return xx + yy - 2 * xy


def test_kid_of_whole_sets_equals_the_pairwise_formula():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 5)), rng.normal(0.3, 1.2, size=(30, 5))
    # subset_size above both set sizes: each "subset" is a whole set, in some order.
    result = kernel_inception_distance(x, torch.from_numpy(y), num_subsets=3, subset_size=1000)
    assert result.mean == pytest.approx(mmd2_unbiased_by_pairs(x, y), rel=1e-10)
    assert result.std == pytest.approx(0.0, abs=1e-12)


def test_kid_is_unbiased_for_two_samples_of_one_distribution():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(5000, 4)), rng.normal(size=(5000, 4))
    num_subsets, m = 1000, 50                           # subsets of 1 % of each set: nearly independent
    result = kernel_inception_distance(x, y, num_subsets=num_subsets, subset_size=m, seed=3)
    tolerance = 4 * result.std / math.sqrt(num_subsets)
    assert abs(result.mean) < tolerance
    # The biased (V-statistic) estimate keeps the i = j terms: it sits well above that tolerance.
    xs, ys = x[:m], y[:m]
    def kernel(a, b):
        return (a @ b.T / a.shape[1] + 1) ** 3

    biased = kernel(xs, xs).mean() + kernel(ys, ys).mean() - 2 * kernel(xs, ys).mean()
    assert biased > 10 * tolerance
    # Shifted means: clearly positive.
    shifted = kernel_inception_distance(x, y + 0.5, num_subsets=num_subsets, subset_size=m, seed=3)
    assert shifted.mean > 10 * shifted.std / math.sqrt(num_subsets)


def test_kid_is_reproducible_from_its_seed():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(300, 6)), rng.normal(size=(250, 6))
    a = kernel_inception_distance(x, y, num_subsets=5, subset_size=50, seed=7)
    assert a == kernel_inception_distance(x, y, num_subsets=5, subset_size=50, seed=7)
    assert a != kernel_inception_distance(x, y, num_subsets=5, subset_size=50, seed=8)


@pytest.mark.parametrize(("x", "y", "kwargs", "match"), [
    (np.zeros((10, 3)), np.zeros((10, 4)), {}, "features: shapes"),
    (np.zeros((1, 3)), np.zeros((10, 3)), {}, "at least 2 of each"),
    (np.zeros((10, 3)), np.zeros((10, 3)), {"num_subsets": 0}, "num_subsets, subset_size"),
    (np.zeros((10, 3)), np.zeros((10, 3)), {"subset_size": 1}, "num_subsets, subset_size"),
])
def test_kid_refuses_bad_input(x, y, kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        kernel_inception_distance(x, y, **kwargs)


# -- Inception Score ---------------------------------------------------------------------------
def test_is_of_uniform_predictions_is_one():
    result = inception_score(torch.zeros(100, 1008))
    assert result.mean == pytest.approx(1.0, abs=1e-12) and result.std == pytest.approx(0.0, abs=1e-12)


def test_is_of_confident_balanced_predictions_is_the_number_of_classes():
    k, splits = 7, 10
    labels = torch.arange(splits * k * 3) % k                  # every split holds each class 3 times
    logits = torch.nn.functional.one_hot(labels, 1008).double() * 100
    result = inception_score(logits, splits=splits)
    assert result.mean == pytest.approx(k, rel=1e-9) and result.std == pytest.approx(0.0, abs=1e-9)


def test_is_equals_the_entropy_identity():
    # KL(p(y|x) ‖ p(y)) averaged over x = H(p(y)) − mean H(p(y|x)).
    rng = np.random.default_rng(3)
    logits = rng.normal(scale=3.0, size=(103, 12))
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)

    def entropy(p):
        return -(p * np.log(p)).sum(axis=-1)

    splits = 4
    scores = []
    for i in range(splits):
        part = probs[i * 103 // splits:(i + 1) * 103 // splits]
        scores.append(np.exp(entropy(part.mean(axis=0)) - entropy(part).mean()))
    result = inception_score(torch.from_numpy(logits).float(), splits=splits)
    assert result.mean == pytest.approx(np.mean(scores), rel=1e-6)
    assert result.std == pytest.approx(np.std(scores), rel=1e-4)


@pytest.mark.parametrize(("logits", "splits", "match"), [
    (torch.zeros(10), 1, "logits: shape"), (torch.zeros(5, 10), 6, "splits: 6 for 5 images"),
    (torch.zeros(5, 10), 0, "splits: 0"),
])
def test_is_refuses_bad_input(logits, splits, match):
    with pytest.raises(InvalidInputError, match=match):
        inception_score(logits, splits=splits)


# -- precision / recall ------------------------------------------------------------------------
def circle(n: int, seed: int, start: float = 0.0, stop: float = 2 * math.pi) -> np.ndarray:
    angles = np.random.default_rng(seed).uniform(start, stop, size=n)
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def test_knn_radii_match_a_sorted_distance_matrix():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(40, 3))
    x[17] = x[5]                                        # a duplicate: its nearest neighbour is at 0
    distances = np.linalg.norm(x[:, None] - x[None], axis=-1)
    np.fill_diagonal(distances, np.inf)                 # a sample is not its own neighbour
    for k in (1, 3, 6):
        expected = np.sort(distances, axis=1)[:, k - 1]
        got = knn_radii(x, k=k, batch_size=7, dtype=torch.float64)
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)
    assert knn_radii(x, k=1, dtype=torch.float64)[5] == 0.0


def test_precision_recall_match_brute_force():
    rng = np.random.default_rng(5)
    real, fake = rng.normal(size=(60, 4)), rng.normal(0.4, 0.8, size=(50, 4))

    def radii(a):
        d = np.linalg.norm(a[:, None] - a[None], axis=-1)
        return np.sort(d, axis=1)[:, 3]                  # index 0 is the sample itself

    def inside(queries, points):
        d = np.linalg.norm(queries[:, None] - points[None], axis=-1)
        return (d <= radii(points)[None]).any(axis=1).mean()

    got = precision_recall(real, fake, k=3, batch_size=16, dtype=torch.float64)
    assert got.precision == pytest.approx(inside(fake, real), abs=1e-12)
    assert got.recall == pytest.approx(inside(real, fake), abs=1e-12)
    assert 0 < got.precision < 1 and 0 < got.recall < 1   # the check is not trivially all-or-nothing


def test_precision_recall_on_a_circle():
    real = circle(2000, seed=6)
    same = precision_recall(real, circle(2000, seed=7), batch_size=512)
    assert same.precision > 0.95 and same.recall > 0.95
    far = precision_recall(real, circle(2000, seed=7) + np.array([10.0, 0.0]))
    assert far == (0.0, 0.0)
    # Generated samples cover the upper half only, at the same density: all of them are realistic,
    # half of the real samples are reached.
    half = precision_recall(real, circle(1000, seed=8, stop=math.pi), batch_size=512)
    assert half.precision > 0.95
    assert half.recall == pytest.approx(0.5, abs=0.05)


def test_precision_recall_refuse_bad_input():
    with pytest.raises(InvalidInputError, match="real, fake: 2 and 3 features"):
        precision_recall(np.zeros((10, 2)), np.zeros((10, 3)))
    with pytest.raises(InvalidInputError, match="k: 3 neighbours in a set of 3"):
        precision_recall(np.zeros((3, 2)), np.zeros((10, 2)))
    with pytest.raises(InvalidInputError, match="batch_size: 0"):
        knn_radii(np.zeros((10, 2)), batch_size=0)


# -- digits feature extractor ------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_uint8() -> torch.Tensor:
    x = load_dataset("digits:test").x
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def test_digits_extractor_matches_the_classifier_in_batches(digits_uint8):
    extractor = feature_extractor("digits", batch_size=64)
    assert isinstance(extractor, DigitsFeatures) and (extractor.dim, extractor.num_logits) == (128, 10)
    features, logits = extractor.features_and_logits(digits_uint8.numpy())
    model = load_digits_classifier()
    with torch.no_grad():
        x = digits_uint8.float() / 127.5 - 1
        torch.testing.assert_close(features, model.features(x))
        torch.testing.assert_close(logits, model(x))
    labels = load_dataset("digits:test").labels
    assert (logits.argmax(dim=1) == labels).float().mean() > 0.9   # the shipped classifier reads them


def test_digits_extractor_turns_rgb_into_gray(digits_uint8):
    extractor = feature_extractor("digits")
    gray = extractor.features(digits_uint8[:20])
    torch.testing.assert_close(extractor.features(digits_uint8[:20].repeat(1, 3, 1, 1)), gray, atol=1e-5, rtol=1e-5)
    # Pure red becomes BT.601 luma 0.299·255.
    red = torch.zeros(1, 3, 16, 16, dtype=torch.uint8)
    red[:, 0] = 255
    luma = torch.full((1, 1, 16, 16), 0.299 * 255 / 127.5 - 1)
    torch.testing.assert_close(extractor.features(red), load_digits_classifier().features(luma))


def test_digits_extractor_refuses_other_sizes_and_types(digits_uint8):
    extractor = feature_extractor("digits")
    with pytest.raises(InvalidInputError, match="32×32 px; the digits classifier takes 16×16"):
        extractor.features(torch.zeros(2, 1, 32, 32, dtype=torch.uint8))
    with pytest.raises(InvalidInputError, match="images: torch.float32"):
        extractor.features(digits_uint8.float())
    assert extractor.features(digits_uint8[:0]).shape == (0, 128)


def test_feature_extractor_names(tmp_path, monkeypatch, no_network):
    with pytest.raises(InvalidInputError, match="name: 'vgg' is not a feature extractor; use one of inception, digits"):
        feature_extractor("vgg")
    with pytest.raises(InvalidInputError, match="inception_weights: .* leave it out"):
        feature_extractor("digits", inception_weights=tmp_path / "w.pth")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("CM_INCEPTION_WEIGHTS", raising=False)
    with pytest.raises(InvalidInputError, match="pt_inception-2015-12-05-6726825d.pth not found"):
        feature_extractor("inception")
