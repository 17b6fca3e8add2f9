"""Training optimizers: multi-tensor RAdam and fused AdamW follow the papers' updates step by step."""

from __future__ import annotations

import copy
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


def run_steps(optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], grads, steps: range, skip=None) -> None:
    for step in steps:
        for i, (p, g) in enumerate(zip(params, grads)):
            p.grad = None if skip == (step, i) else g[step].clone()
        optimizer.step()


def two_copies(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(64, 33), (17,), (3, 3, 4, 4)]
    start = [torch.randn(s, generator=gen) for s in shapes]
    grads = [[torch.randn(s, generator=gen) for _ in range(14)] for s in shapes]
    copies = [[torch.nn.Parameter(x.clone()) for x in start] for _ in range(2)]
    return copies, grads


def test_fused_rectified_steps_match_torch_radam(monkeypatch):
    """Fourteen steps with L2 weight decay: the same parameters and state as torch.optim.RAdam
    (single-tensor) to float32 rounding, the steps from 6 on taken by the fused Adam kernel."""
    fused_calls = []
    fused_adam = torch._fused_adam_

    def counting_adam(*args, **kwargs):
        fused_calls.append(len(args[0]))
        return fused_adam(*args, **kwargs)

    monkeypatch.setattr(torch, "_fused_adam_", counting_adam)
    (ours, reference), grads = two_copies()
    optimizer = build_optimizer("radam", ours, lr=3e-3, weight_decay=0.05)
    torch_radam = torch.optim.RAdam(reference, lr=3e-3, weight_decay=0.05, foreach=False)
    run_steps(optimizer, ours, grads, range(14))
    run_steps(torch_radam, reference, grads, range(14))
    assert fused_calls == [len(ours)] * 9  # one call for all tensors at steps 6..14: ρ_t > 5 from t = 6 with β2 = 0.999
    for p, q in zip(ours, reference):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)
        for key in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(optimizer.state[p][key], torch_radam.state[q][key], rtol=1e-5, atol=1e-12)


def test_fused_steps_split_by_dtype_and_run_on_cuda_alike(monkeypatch):
    """float32 and bfloat16 parameters in one group: one fused call per dtype, each equal to
    torch.optim.RAdam's single-tensor update to its dtype's rounding; on CUDA (where a device is
    here) the same steps give the same numbers as on the CPU."""
    calls = []
    fused_adam = torch._fused_adam_
    monkeypatch.setattr(torch, "_fused_adam_", lambda *a, **k: calls.append(a[0][0].dtype) or fused_adam(*a, **k))
    (ours, reference), grads = two_copies(4)
    dtypes = [torch.float32, torch.bfloat16, torch.float32][: len(ours)]
    ours = [torch.nn.Parameter(p.detach().to(d)) for p, d in zip(ours, dtypes)]
    reference = [torch.nn.Parameter(p.detach().to(d)) for p, d in zip(reference, dtypes)]
    grads = [[g.to(d) for g in gs] for gs, d in zip(grads, dtypes)]
    optimizer = build_optimizer("radam", ours, lr=3e-3)
    run_steps(optimizer, ours, grads, range(8))
    run_steps(torch.optim.RAdam(reference, lr=3e-3, foreach=False), reference, grads, range(8))
    assert sorted(map(str, calls)) == sorted(map(str, [torch.float32, torch.bfloat16] * 3))  # steps 6, 7, 8
    for p, q in zip(ours, reference):
        tol = 1e-2 if p.dtype == torch.bfloat16 else 1e-5
        torch.testing.assert_close(p, q, rtol=tol, atol=tol)
    if torch.cuda.is_available():
        (cpu, _), grads = two_copies(5)
        gpu = [torch.nn.Parameter(p.detach().cuda()) for p in cpu]
        for params, device in ((cpu, "cpu"), (gpu, "cuda")):
            run_steps(build_optimizer("radam", params, lr=3e-3), params, [[g.to(device) for g in gs] for gs in grads],
                      range(10))
        for p, q in zip(cpu, gpu):
            torch.testing.assert_close(p, q.cpu(), rtol=1e-5, atol=1e-7)


def test_radam_state_dict_is_torch_radams():
    """A torch.optim.RAdam checkpoint resumes in ours (and the other way) with the same result."""
    (ours, reference), grads = two_copies(1)
    torch_radam = torch.optim.RAdam(reference, lr=1e-2)
    run_steps(torch_radam, reference, grads, range(7))
    with torch.no_grad():
        for p, q in zip(ours, reference):
            p.copy_(q)
    optimizer = build_optimizer("radam", ours, lr=1e-2)
    optimizer.load_state_dict(copy.deepcopy(torch_radam.state_dict()))  # as read from a file: no shared tensors
    run_steps(optimizer, ours, grads, range(7, 14))
    run_steps(torch_radam, reference, grads, range(7, 14))
    for p, q in zip(ours, reference):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)
    assert set(optimizer.state_dict()["param_groups"][0]) == set(torch_radam.state_dict()["param_groups"][0])


def test_radam_falls_back_where_it_cannot_fuse():
    """A parameter without a gradient at step 8 (its step count lags) and decoupled weight decay:
    torch.optim.RAdam's own path, same numbers."""
    (ours, reference), grads = two_copies(2)
    optimizer = build_optimizer("radam", ours, lr=1e-2)
    torch_radam = torch.optim.RAdam(reference, lr=1e-2, foreach=False)
    run_steps(optimizer, ours, grads, range(14), skip=(7, 1))
    run_steps(torch_radam, reference, grads, range(14), skip=(7, 1))
    assert float(optimizer.state[ours[1]]["step"]) == 13
    for p, q in zip(ours, reference):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)
    (ours, reference), grads = two_copies(3)
    optimizer = build_optimizer("radam", ours, lr=1e-2)
    optimizer.param_groups[0].update(decoupled_weight_decay=True, weight_decay=0.1)
    torch_radam = torch.optim.RAdam(reference, lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True)
    run_steps(optimizer, ours, grads, range(10))
    run_steps(torch_radam, reference, grads, range(10))
    for p, q in zip(ours, reference):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)


def test_rectification_starts_at_step_6_and_tends_to_1():
    """ρ_∞ = 1999 for β2 = 0.999; ρ_5 ≈ 4.99 (no rectification), ρ_6 ≈ 5.99; r_t → 1."""
    from consistency_models.training.optimizer import rectification

    assert rectification(0.999, 5) is None
    rho_inf, t = 1999.0, 6
    rho_6 = rho_inf - 2 * t * 0.999**t / (1 - 0.999**t)
    expected = math.sqrt((rho_6 - 4) * (rho_6 - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_6))
    assert rectification(0.999, 6) == pytest.approx(expected, rel=1e-12)
    assert 0.025 < rectification(0.999, 6) < 0.027   # by hand: √(1.994·3.994·1999/(1995·1997·5.994)) ≈ 0.0258
    assert rectification(0.999, 1e6) == pytest.approx(1.0, abs=1e-6)
