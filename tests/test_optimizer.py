"""Training optimizers: multi-tensor RAdam and fused AdamW follow the papers' updates step by step."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from consistency_models.training.optimizer import build_optimizer

BETA1, BETA2, EPS = 0.9, 0.999, 1e-8


def radam_reference(theta: np.ndarray, grads: list[np.ndarray], lr: float, wd: float) -> np.ndarray:
    """RAdam (Liu et al. 2020, Algorithm 2) in float64, L2 weight decay added to the gradient."""
    m = np.zeros_like(theta)
    v = np.zeros_like(theta)
    rho_inf = 2 / (1 - BETA2) - 1
    for t, g in enumerate(grads, start=1):
        g = g + wd * theta
        m = BETA1 * m + (1 - BETA1) * g
        v = BETA2 * v + (1 - BETA2) * g * g
        m_hat = m / (1 - BETA1**t)
        rho_t = rho_inf - 2 * t * BETA2**t / (1 - BETA2**t)
        if rho_t > 5:
            adaptive = math.sqrt(1 - BETA2**t) / (np.sqrt(v) + EPS)
            rect = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
            theta = theta - lr * m_hat * rect * adaptive
        else:
            theta = theta - lr * m_hat
    return theta


def adamw_reference(theta: np.ndarray, grads: list[np.ndarray], lr: float, wd: float) -> np.ndarray:
    """AdamW (Loshchilov & Hutter 2019, Algorithm 2) in float64, decoupled weight decay."""
    m = np.zeros_like(theta)
    v = np.zeros_like(theta)
    for t, g in enumerate(grads, start=1):
        theta = theta * (1 - lr * wd)
        m = BETA1 * m + (1 - BETA1) * g
        v = BETA2 * v + (1 - BETA2) * g * g
        m_hat, v_hat = m / (1 - BETA1**t), v / (1 - BETA2**t)
        theta = theta - lr * m_hat / (np.sqrt(v_hat) + EPS)
    return theta


@pytest.mark.parametrize(("name", "reference"), [("radam", radam_reference), ("adamw", adamw_reference)])
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_updates_match_the_papers(name, reference, wd):
    """Ten steps (RAdam's rectified branch starts at step 6) on two parameters of different shapes."""
    rng = np.random.default_rng(0)
    shapes = [(5, 3), (7,)]
    start = [rng.standard_normal(s) for s in shapes]
    grads = [[rng.standard_normal(s) for _ in range(10)] for s in shapes]
    params = [torch.nn.Parameter(torch.tensor(x, dtype=torch.float32)) for x in start]
    optimizer = build_optimizer(name, params, lr=1e-2, weight_decay=wd)
    for step in range(10):
        for p, g in zip(params, grads):
            p.grad = torch.tensor(g[step], dtype=torch.float32)
        optimizer.step()
    for p, x, g in zip(params, start, grads):
        expected = reference(x, g, 1e-2, wd)
        assert np.abs(expected - x).max() > 1e-2  # the parameters did move
        np.testing.assert_allclose(p.detach().double().numpy(), expected, rtol=1e-5, atol=1e-6)


def test_fast_forms_are_chosen_on_cpu():
    params = [torch.nn.Parameter(torch.zeros(3))]
    assert build_optimizer("adamw", params, lr=1e-3).defaults["fused"] is True
    assert build_optimizer("radam", params, lr=1e-3).defaults["foreach"] is True
    # Float64 has no fused kernel: multi-tensor instead of an error.
    double = [torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))]
    optimizer = build_optimizer("adamw", double, lr=1e-3)
    assert not optimizer.defaults["fused"] and optimizer.defaults["foreach"] is True


def test_unknown_optimizer():
    with pytest.raises(ValueError, match=r"optimizer: unknown optimizer 'sgd'; choose one of radam, adamw"):
        build_optimizer("sgd", [torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
