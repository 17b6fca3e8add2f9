"""Fréchet distance and Gaussian statistics against closed forms computed independently."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from consistency_models import InvalidInputError
from consistency_models.metrics import RunningStatistics, frechet_distance, gaussian_statistics


def features(seed: int, n: int = 400, d: int = 6) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=gen)
    return torch.randn(n, d, generator=gen) @ mix + torch.randn(d, generator=gen)


def test_statistics_match_numpy_in_float64():
    f = features(0).float()
    mu, sigma = gaussian_statistics(f)
    assert mu.dtype == sigma.dtype == torch.float64
    ref = f.double().numpy()
    np.testing.assert_allclose(mu.numpy(), ref.mean(axis=0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(sigma.numpy(), np.cov(ref, rowvar=False), rtol=1e-12, atol=1e-12)


def test_a_set_against_itself_is_zero():
    mu, sigma = gaussian_statistics(features(1))
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)


def test_diagonal_covariances_give_the_closed_form():
    # Σ diagonal: tr(Σ₁ + Σ₂ − 2(Σ₁^½Σ₂Σ₁^½)^½) = Σᵢ (√aᵢ − √bᵢ)², plus ‖μ₁ − μ₂‖².
    a, b = [4.0, 1.0, 0.25, 9.0], [1.0, 1.0, 4.0, 0.01]
    mu1, mu2 = [0.0, 1.0, -2.0, 0.5], [1.0, -1.0, 0.0, 0.5]
    expected = sum((math.sqrt(x) - math.sqrt(y)) ** 2 for x, y in zip(a, b))
    expected += sum((x - y) ** 2 for x, y in zip(mu1, mu2))  # 14.7 + 9 here
    got = frechet_distance(torch.tensor(mu1), torch.diag(torch.tensor(a)), np.array(mu2), np.diag(b))
    assert got == pytest.approx(expected, rel=1e-12)


def test_gaussian_samples_approach_the_closed_form():
    # Samples from N(μ, diag(a)) and N(ν, diag(b)): the fitted statistics give nearly the true distance.
    gen = torch.Generator().manual_seed(2)
    a, b = torch.tensor([1.0, 4.0, 0.5]), torch.tensor([2.0, 1.0, 0.5])
    mu, nu = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([0.5, 1.0, 1.0])
    x = mu + a.sqrt() * torch.randn(200_000, 3, generator=gen, dtype=torch.float64)
    y = nu + b.sqrt() * torch.randn(200_000, 3, generator=gen, dtype=torch.float64)
    expected = float(((a.sqrt() - b.sqrt()) ** 2).sum() + ((mu - nu) ** 2).sum())
    assert frechet_distance(*gaussian_statistics(x), *gaussian_statistics(y)) == pytest.approx(expected, abs=0.02)


def test_full_covariances_match_a_matrix_square_root_by_eigendecomposition():
    # tr((Σ₁Σ₂)^½) = Σ √λ(Σ₁Σ₂): Σ₁Σ₂ is similar to a PSD matrix, so its eigenvalues are real ≥ 0.
    mu1, s1 = gaussian_statistics(features(3))
    mu2, s2 = gaussian_statistics(features(4))
    eig = np.linalg.eigvals(s1.numpy() @ s2.numpy())
    trace_sqrt = np.sqrt(np.clip(eig.real, 0, None)).sum()
    expected = ((mu1 - mu2) ** 2).sum().item() + np.trace(s1.numpy()) + np.trace(s2.numpy()) - 2 * trace_sqrt
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_rank_deficient_covariances_stay_finite_and_non_negative():
    f = features(5, n=4, d=6)  # 4 samples in 6-D: singular covariance
    mu, sigma = gaussian_statistics(f)
    value = frechet_distance(mu, sigma, mu, sigma)
    assert math.isfinite(value) and 0.0 <= value <= 1e-6 * float(torch.trace(sigma))
    shifted = frechet_distance(mu, sigma, mu + 1.0, sigma)  # ‖Δμ‖² = 6, the covariances equal
    assert shifted == pytest.approx(6.0, abs=1e-6 * float(torch.trace(sigma)))


def test_running_statistics_equal_the_one_shot_statistics():
    f = features(6, n=1003) + 1000.0  # a large offset: the float64 sums must still be accurate
    running = RunningStatistics()
    for batch in f.float().split(128):
        running.update(batch)
    mu, sigma = running.finalize()
    ref_mu, ref_sigma = gaussian_statistics(f.float())
    assert running.count == 1003
    torch.testing.assert_close(mu, ref_mu, rtol=0, atol=1e-9)
    torch.testing.assert_close(sigma, ref_sigma, rtol=1e-8, atol=1e-7)


def test_bad_inputs_name_the_argument():
    with pytest.raises(InvalidInputError, match="^features:"):
        gaussian_statistics(torch.zeros(5))
    with pytest.raises(InvalidInputError, match="^features:"):
        RunningStatistics().finalize()
    running = RunningStatistics()
    running.update(torch.zeros(3, 4))
    with pytest.raises(InvalidInputError, match="^batch:"):
        running.update(torch.zeros(3, 5))
    with pytest.raises(InvalidInputError, match="^sigma2:"):
        frechet_distance(torch.zeros(3), torch.eye(3), torch.zeros(3), torch.eye(4))
