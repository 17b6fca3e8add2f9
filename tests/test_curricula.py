"""Curricula (N(k), μ(k), σ sampling) against DESIGN.md §2, recomputed with math / numpy / by hand."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from consistency_models.parametrization import karras_sigmas
from consistency_models.training.curricula import (
    ascending_grid,
    ct_curriculum,
    ect_r,
    ect_stage,
    ict_index_probabilities,
    ict_curriculum,
    lognormal_sigmas,
)

SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 80.0, 7.0


def grid_by_hand(num: int) -> list[float]:
    """σ_1 < ... < σ_N, the Karras grid of DESIGN.md §2 reversed, in Python floats."""
    lo, hi = SIGMA_MIN ** (1 / RHO), SIGMA_MAX ** (1 / RHO)
    descending = [(hi + i / (num - 1) * (lo - hi)) ** RHO for i in range(num)]
    return descending[::-1]


# -- CT ---------------------------------------------------------------------------------------
def ct_n_exact(k: int, total: int, s0: int, s1: int) -> tuple[int, int]:
    """(inner count, N) with exact rationals: ⌈√q − 1⌉ = m − 1, m the least integer with m² ≥ q."""
    q = Fraction(k, total) * ((s1 + 1) ** 2 - s0**2) + s0**2
    m = math.isqrt(q.numerator // q.denominator)
    while m * m < q:
        m += 1
    inner = max(m - 1, 1)  # OpenAI clamps the inner count to ≥ 1
    return inner, inner + 1


@pytest.mark.parametrize("s0, s1, mu0", [(2, 150, 0.9), (2, 200, 0.95)])
@pytest.mark.parametrize("frac", ["0", "1", "K/4", "K/2", "K-1", "K"])
def test_ct_schedule_matches_the_formula(s0, s1, mu0, frac):
    total = 1000
    k = {"0": 0, "1": 1, "K/4": total // 4, "K/2": total // 2, "K-1": total - 1, "K": total}[frac]
    inner, n_expected = ct_n_exact(k, total, s0, s1)
    # the same N with numpy floats, as DESIGN.md writes it
    n_numpy = int(np.ceil(np.sqrt(k / total * ((s1 + 1) ** 2 - s0**2) + s0**2) - 1)) + 1
    assert n_numpy == n_expected

    n_openai, mu_openai = ct_curriculum(k, total, s0, s1, mu0, "openai")
    n_paper, mu_paper = ct_curriculum(k, total, s0, s1, mu0, "paper")
    assert n_openai == n_paper == n_expected
    assert mu_openai == pytest.approx(mu0 ** (s0 / (n_expected - 1)), rel=1e-12)  # exp(s0·ln μ0/(N−1))
    assert mu_paper == pytest.approx(mu0 ** (s0 / n_expected), rel=1e-12)  # exp(s0·ln μ0/N)
    assert mu_openai < mu_paper  # the two forms differ: N − 1 < N
    assert 0 < mu_openai < 1 and 0 < mu_paper < 1


def test_ct_schedule_hand_values():
    # k = 0: √(s0²) − 1 = 1 → N = 2; μ openai = 0.9^(2/1) = 0.81, paper = 0.9^(2/2) = 0.9
    n, mu = ct_curriculum(0, 1000, 2, 150, 0.9, "openai")
    assert n == 2 and mu == pytest.approx(0.81, rel=1e-12)
    n, mu = ct_curriculum(0, 1000, 2, 150, 0.9, "paper")
    assert n == 2 and mu == pytest.approx(0.9, rel=1e-12)
    # k = K: √((s1+1)²) − 1 = s1 → N = s1 + 1 = 151
    n, mu = ct_curriculum(1000, 1000, 2, 150, 0.9, "openai")
    assert n == 151 and mu == pytest.approx(math.exp(2 * math.log(0.9) / 150), rel=1e-12)
    n, mu = ct_curriculum(1000, 1000, 2, 150, 0.9, "paper")
    assert n == 151 and mu == pytest.approx(math.exp(2 * math.log(0.9) / 151), rel=1e-12)
    # k = K/4 of (2, 150): √(22797/4 + 4) = √5703.25 = 75.52 → ⌈74.52⌉ + 1 = 76
    assert ct_curriculum(250, 1000, 2, 150, 0.9)[0] == 76
    # k = 1 of K = 1000: √(22.797 + 4) = 5.177 → ⌈4.177⌉ + 1 = 6
    assert ct_curriculum(1, 1000, 2, 150, 0.9)[0] == 6
    # (2, 200) at k = K: N = 201, the OpenAI ImageNet-64 CT grid
    assert ct_curriculum(1000, 1000, 2, 200, 0.95)[0] == 201


def test_ct_schedule_openai_clamp_of_the_inner_count():
    # s0 = 1 at k = 0: ⌈√1 − 1⌉ = 0, clamped to 1 → N = 2 and μ openai = exp(1·ln μ0/1) = μ0
    n, mu = ct_curriculum(0, 100, 1, 150, 0.9, "openai")
    assert n == 2 and mu == pytest.approx(0.9, rel=1e-12)


def test_ct_schedule_rejects_an_unknown_mu_form():
    with pytest.raises(ValueError, match="mu_form"):
        ct_curriculum(0, 10, mu_form="karras")


# -- iCT --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "k, expected",
    [(0, 11), (1, 11), (49_999, 11), (50_000, 21), (100_000, 41), (150_000, 81), (200_000, 161),
     (250_000, 321), (300_000, 641), (349_999, 641), (350_000, 1281), (399_999, 1281), (400_000, 1281)],
)
def test_ict_schedule_hand_values(k, expected):
    # K = 400000: K′ = ⌊400000/(log2 128 + 1)⌋ = 50000; N doubles every K′ steps from 10 up to 1280, plus 1
    assert ict_curriculum(k, 400_000, 10, 1280) == expected


@pytest.mark.parametrize("total, s0, s1", [(1000, 10, 1280), (777, 10, 1280), (300, 5, 100), (10, 10, 1280)])
def test_ict_schedule_matches_the_formula(total, s0, s1):
    k_prime = max(int(np.floor(total / (np.log2(np.floor(s1 / s0)) + 1))), 1)
    for k in sorted({0, 1, k_prime - 1, k_prime, 2 * k_prime, total // 2, total - 1, total}):
        assert ict_curriculum(k, total, s0, s1) == min(s0 * 2 ** (k // k_prime), s1) + 1, k


def test_ict_index_probabilities_match_erf_by_hand():
    p_mean, p_std = -1.1, 2.0
    for num in (11, 41, 1281):
        grid = grid_by_hand(num)
        cdf = [math.erf((math.log(s) - p_mean) / (math.sqrt(2) * p_std)) for s in grid]
        weights = [b - a for a, b in zip(cdf, cdf[1:])]
        expected = [w / sum(weights) for w in weights]
        probs = ict_index_probabilities(ascending_grid(num), p_mean, p_std)
        assert probs.shape == (num - 1,) and probs.dtype == torch.float64
        np.testing.assert_allclose(probs.numpy(), expected, rtol=1e-9, atol=1e-15)
        assert float(probs.sum()) == pytest.approx(1.0, abs=1e-12)
        assert bool((probs > 0).all())


def test_ict_index_probabilities_peak_near_exp_p_mean():
    grid = ascending_grid(1281)
    probs = ict_index_probabilities(grid, -1.1, 2.0).numpy()
    log_grid = np.log(grid.numpy())
    density = probs / np.diff(log_grid)  # probability per unit of ln σ: the lognormal's mode is exp(P_mean)
    i = int(np.argmax(density))
    assert grid[i] <= math.exp(-1.1) * 1.02 and grid[i + 1] >= math.exp(-1.1) / 1.02
    # with another P_mean the peak moves with it
    density = ict_index_probabilities(grid, 1.0, 2.0).numpy() / np.diff(log_grid)
    i = int(np.argmax(density))
    assert grid[i] <= math.e * 1.02 and grid[i + 1] >= math.e / 1.02


def test_ascending_grid_is_the_reversed_karras_grid():
    for num in (2, 5, 18, 151):
        grid = ascending_grid(num)
        assert grid.dtype == torch.float64
        assert torch.equal(grid, karras_sigmas(num).flip(0))
        np.testing.assert_allclose(grid.numpy(), grid_by_hand(num), rtol=1e-12)
        assert float(grid[0]) == pytest.approx(SIGMA_MIN, rel=1e-12)
        assert float(grid[-1]) == pytest.approx(SIGMA_MAX, rel=1e-12)
        assert bool((grid[1:] > grid[:-1]).all())


def test_lognormal_sigmas():
    n = torch.tensor([-1.0, 0.0, 0.5], dtype=torch.float64)
    expected = [math.exp(-1.2 + 1.2 * v) for v in (-1.0, 0.0, 0.5)]
    np.testing.assert_allclose(lognormal_sigmas(n, -1.2, 1.2).numpy(), expected, rtol=1e-12)


# -- ECT --------------------------------------------------------------------------------------
def ect_r_by_hand(t: float, stage: int, q: float = 2.0, k: float = 8.0, b: float = 1.0) -> float:
    sigmoid = 1 / (1 + math.exp(b * t))  # sigmoid(−b·t)
    return max(0.0, t * (1 - q ** -(stage + 1) * (1 + k * sigmoid)))


@pytest.mark.parametrize("stage", [0, 1, 3, 7])
@pytest.mark.parametrize("q, k, b", [(2.0, 8.0, 1.0), (4.0, 2.0, 0.5)])
def test_ect_r_matches_the_formula(stage, q, k, b):
    ts = [0.002, 0.01, 0.1, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 80.0]
    r = ect_r(torch.tensor(ts, dtype=torch.float64), stage, q, k, b)
    expected = [ect_r_by_hand(t, stage, q, k, b) for t in ts]
    np.testing.assert_allclose(r.numpy(), expected, rtol=1e-12, atol=1e-15)
    assert bool((r < torch.tensor(ts, dtype=torch.float64)).all())
    assert bool((r >= 0).all())


def test_ect_r_hand_values():
    # stage 0, t = 10: sigmoid(−10) = 4.5398e-5 → r = 10·(1 − ½·(1 + 8·4.5398e-5)) = 4.998184
    r = ect_r(torch.tensor([10.0], dtype=torch.float64), 0)
    assert float(r) == pytest.approx(10 * (1 - 0.5 * (1 + 8 / (1 + math.exp(10)))), rel=1e-12)
    assert float(r) == pytest.approx(4.998184, abs=1e-6)
    # stage 0, small t: sigmoid ≈ ½ → 1 − ½·5 < 0 → r = 0 (the target is the clean sample)
    r = ect_r(torch.tensor([0.002, 0.05, 0.5, 1.0], dtype=torch.float64), 0)
    assert r.tolist() == [0.0, 0.0, 0.0, 0.0]
    # late stages: r → t
    r = ect_r(torch.tensor([1.0], dtype=torch.float64), 7)
    assert float(r) == pytest.approx(1 - 2**-8 * (1 + 8 / (1 + math.e)), rel=1e-12)


@pytest.mark.parametrize(
    "k, total, stages, expected",
    [(0, 800, 8, 0), (99, 800, 8, 0), (100, 800, 8, 1), (450, 800, 8, 4), (799, 800, 8, 7), (800, 800, 8, 7),
     (5000, 800, 8, 7), (3, 5, 8, 3), (9, 5, 8, 7), (0, 10, 1, 0), (10, 10, 1, 0), (4, 10, 2, 0), (5, 10, 2, 1)],
)
def test_ect_stage(k, total, stages, expected):
    # raised every ⌊K/stages⌋ steps (at least 1), capped at stages − 1
    assert ect_stage(k, total, stages) == expected


# -- the defaults a run gets --------------------------------------------------------------------
@pytest.mark.parametrize(
    "method, expected",
    [("ct", dict(s0=2, s1=150, mu0=0.9, distance="l2", mu_form="openai", num_scales=None, ect_stages=None)),
     ("ict", dict(s0=10, s1=1280, distance="pseudo_huber", mu0=None, target_mu=None)),   # 10,000 steps: 7 doublings
     ("cd", dict(distance="l2", num_scales=40, target_mu=0.95, solver="heun", s0=None, init_from_teacher=True,
                 dropout=0.0)),
     ("ect", dict(ect_stages=8, distance=None)),
     ("edm", dict(distance=None, num_scales=None, s1=None))],
)
def test_train_config_method_defaults(method, expected):
    # cd: OpenAI's N = 40, and a student started from the teacher with dropout 0 (issue 13)
    """Each method's own settings get its registry defaults; the settings of other methods are absent."""
    from consistency_models.training.config import TrainConfig

    teacher = {"teacher": "teacher"} if method in ("cd", "ect") else {}
    cfg = TrainConfig(method=method, data="digits", out="run", **teacher).to_dict()
    assert {key: cfg.get(key) for key in expected} == expected
    assert (cfg["sigma_min"], cfg["sigma_max"], cfg["sigma_data"], cfg["rho"]) == (0.002, 80.0, 0.5, 7.0)


@pytest.mark.parametrize("steps, s1", [(400, 20), (800, 20), (1200, 40), (2000, 160), (3200, 1280), (400_000, 1280)])
def test_ict_s1_default_scales_with_the_budget(steps, s1):
    """s1 = s0·2^d, d = min(7, steps//400 − 1) (at least 1): the README toy recipe (2000 steps, s1 160)
    and the paper's 1280 from 3,200 steps on; an explicit --s1 wins."""
    from consistency_models.training.config import TrainConfig

    assert TrainConfig(method="ict", data="d", out="r", steps=steps).options.s1 == s1
    assert TrainConfig(method="ict", data="d", out="r", steps=steps, options={"s1": 50}).options.s1 == 50
    assert TrainConfig(method="ict", data="d", out="r", steps=2000, options={"s0": 5}).options.s1 == 80


@pytest.mark.parametrize("steps", [40, 400, 799, 800, 1200, 2000, 3200, 400_000])
def test_the_help_states_the_ict_s1_budget_formula_the_code_uses(steps):
    """`cm train --help` writes s1's budget default as a formula: evaluated, it gives the s1 a run gets."""
    import re

    from consistency_models.cli import build_parser
    from consistency_models.training.config import TrainConfig

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    text = next(a.help for a in train._actions if a.dest == "s1")
    formula = re.search(r"ict s0\*2\^d, d = (.+?): ", text).group(1)
    doublings = eval(formula, {"min": min, "max": max}, {"steps": steps})
    assert TrainConfig(method="ict", data="d", out="r", steps=steps).options.s1 == 10 * 2**doublings


def test_ct_schedule_with_mu0_zero_has_no_ema_target():
    """μ₀ = 0 (allowed by --mu0's check) is the limit μ(k) = 0 ^ (s0/(N−1)) = 0, not a math error."""
    for k in (0, 50, 99):
        n, mu = ct_curriculum(k, 100, 2, 150, 0.0)
        assert mu == 0.0 == 0.0 ** (2 / (n - 1))
