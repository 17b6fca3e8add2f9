"""Training losses on a tiny linear network, recomputed by hand in numpy (float64).

The network is F(x_in, c_noise, y) = w·x_in + b + a·c_noise + g·y, so f = c_skip·x + c_out·F is
known in closed form. Every loss draws from a `BatchRNG`; the tests replay the same draws from a
generator with the same seed in the order the loss makes them, then recompute σ, noise,
scalings (DESIGN.md §2), distance and weight without calling the code under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from consistency_models.parametrization import ConsistencyFunction, Denoiser
from consistency_models.training.batch_rng import BatchRNG
from consistency_models.training.methods import CDLoss, CTLoss, ECTLoss, EDMLoss, ICTLoss

SIGMA_MIN, SIGMA_MAX, RHO, SD = 0.002, 80.0, 7.0, 0.5
SHAPE = (2, 3)  # one sample; d = 6
D = 6
PH_C = 0.00054 * math.sqrt(D)


class LinearNet(nn.Module):
    """F(x_in, c_noise, y) = w·x_in + b + a·c_noise + g·y, optionally through a recorded dropout mask."""

    def __init__(self, w: float, b: float, a: float = 1e-3, g: float = 0.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w))
        self.b = nn.Parameter(torch.tensor(b))
        self.a = nn.Parameter(torch.tensor(a))
        self.g = nn.Parameter(torch.tensor(g))
        self.register_buffer("counter", torch.tensor(0.0))
        self.dropout = nn.Dropout(dropout)
        self.masks: list[torch.Tensor] = []

    def params(self) -> tuple[float, float, float, float]:
        return tuple(float(p.detach()) for p in (self.w, self.b, self.a, self.g))

    def forward(self, x, noise_labels, class_labels=None):
        col = (-1, *([1] * (x.ndim - 1)))
        out = self.w * x + self.b + self.a * noise_labels.reshape(col)
        if class_labels is not None:
            out = out + self.g * class_labels.to(x.dtype).reshape(col)
        if self.dropout.p > 0:
            mask = self.dropout(torch.ones_like(out))
            self.masks.append(mask.detach().clone())
            out = out * mask
        return out


# -- the reference, in numpy float64 ------------------------------------------------------------
def col(v: np.ndarray) -> np.ndarray:
    return np.asarray(v, dtype=np.float64).reshape(-1, *([1] * len(SHAPE)))


def scalings(sigma: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if kind == "consistency":
        c_skip = SD**2 / ((sigma - SIGMA_MIN) ** 2 + SD**2)
        c_out = (sigma - SIGMA_MIN) * SD / np.sqrt(sigma**2 + SD**2)
    else:  # edm
        c_skip = SD**2 / (sigma**2 + SD**2)
        c_out = sigma * SD / np.sqrt(sigma**2 + SD**2)
    c_in = 1 / np.sqrt(sigma**2 + SD**2)
    return c_skip, c_out, c_in


def ref_f(net: LinearNet, x: np.ndarray, sigma: np.ndarray, kind: str, labels=None, mask=None) -> np.ndarray:
    """c_skip·x + c_out·F(c_in·x, 250·ln σ, y) by hand."""
    w, b, a, g = net.params()
    sigma = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (x.shape[0],))
    c_skip, c_out, c_in = scalings(sigma, kind)
    out = w * col(c_in) * x + b + a * col(250 * np.log(sigma))
    if labels is not None:
        out = out + g * col(labels)
    if mask is not None:
        out = out * mask
    return col(c_skip) * x + col(c_out) * out


def ref_grid(num: int) -> np.ndarray:
    """The ascending Karras grid σ_1 = σ_min < ... < σ_N = σ_max."""
    lo, hi = SIGMA_MIN ** (1 / RHO), SIGMA_MAX ** (1 / RHO)
    i = np.arange(num)
    return ((hi + i / (num - 1) * (lo - hi)) ** RHO)[::-1].copy()


def mean_sq(d: np.ndarray) -> np.ndarray:
    return (d.reshape(d.shape[0], -1) ** 2).mean(axis=1)


def pseudo_huber_ref(d: np.ndarray, c: float = PH_C) -> np.ndarray:
    return np.sqrt((d.reshape(d.shape[0], -1) ** 2).sum(axis=1) + c**2) - c


def data(batch: int) -> torch.Tensor:
    return torch.linspace(-0.9, 0.8, batch * D).reshape(batch, *SHAPE)


def np64(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def rng_for(seed: int, global_batch: int, rows: slice | None = None) -> BatchRNG:
    return BatchRNG(torch.Generator().manual_seed(seed), global_batch, rows or slice(0, global_batch), "cpu")


# -- EDM ----------------------------------------------------------------------------------------
def test_edm_loss_matches_a_hand_computation():
    batch, seed = 6, 11
    net = LinearNet(w=0.7, b=0.1, a=2e-3, g=0.05)
    x, labels = data(batch), torch.tensor([0, 1, 2, 3, 4, 5])
    loss = EDMLoss(Denoiser(net), p_mean=-1.2, p_std=1.2)(x, labels, 0, rng_for(seed, batch))

    g = torch.Generator().manual_seed(seed)
    normal = np64(torch.randn((batch,), generator=g))  # σ draw first, then the noise
    noise = np64(torch.randn((batch, *SHAPE), generator=g))
    sigma = np.exp(-1.2 + 1.2 * normal)
    xn = np64(x)
    denoised = ref_f(net, xn + col(sigma) * noise, sigma, "edm", labels.numpy())
    weight = (sigma**2 + SD**2) / (sigma * SD) ** 2
    expected = weight * mean_sq(denoised - xn)
    assert loss.shape == (batch,) and loss.dtype == torch.float32
    np.testing.assert_allclose(np64(loss), expected, rtol=1e-4)


# -- CT -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("distance", ["l2", "l1"])
def test_ct_loss_matches_a_hand_computation(distance):
    # global batch 8, this process holds rows 4..7 (as rank 1 of 2)
    seed, global_batch, rows = 5, 8, slice(4, 8)
    student_net, target_net = LinearNet(w=1.3, b=0.2, g=0.1), LinearNet(w=0.6, b=-0.1, a=3e-3, g=-0.2)
    total, step = 1000, 1  # N(1) = ⌈√(1/1000·(151² − 4) + 4) − 1⌉ + 1 = ⌈4.177⌉ + 1 = 6
    num = 6
    ct = CTLoss(ConsistencyFunction(student_net), ConsistencyFunction(target_net), total, 2, 150, 0.9,
                distance=distance)
    x, labels = data(4), torch.tensor([1, 0, 3, 2])
    loss = ct(x, labels, step, rng_for(seed, global_batch, rows))

    g = torch.Generator().manual_seed(seed)
    n = torch.randint(0, num - 1, (global_batch,), generator=g)[rows].numpy()
    z = np64(torch.randn((global_batch, *SHAPE), generator=g))[rows]
    grid = ref_grid(num)
    t_lo, t_hi = grid[n], grid[n + 1]
    xn = np64(x)
    student = ref_f(student_net, xn + col(t_hi) * z, t_hi, "consistency", labels.numpy())
    target = ref_f(target_net, xn + col(t_lo) * z, t_lo, "consistency", labels.numpy())  # the same z
    diff = (student - target).reshape(4, -1)
    expected = (diff**2).mean(axis=1) if distance == "l2" else np.abs(diff).mean(axis=1)
    np.testing.assert_allclose(np64(loss), expected, rtol=1e-4)


@pytest.mark.parametrize("mu_form, exponent", [("openai", 2 / 5), ("paper", 2 / 6)])
def test_ct_after_step_is_the_ema_with_mu_of_the_schedule(mu_form, exponent):
    # step 1 of 1000: N = 6, μ = exp(s0·ln μ0/(N − 1)) = 0.9^(2/5) (openai) or 0.9^(2/6) (paper)
    student_net, target_net = LinearNet(w=1.5, b=0.2, a=0.01, g=0.3), LinearNet(w=0.5, b=-0.4, a=0.02, g=0.1)
    student_net.counter.fill_(7.0)
    before_student = dict((k, v.clone()) for k, v in student_net.state_dict().items())
    before_target = dict((k, v.clone()) for k, v in target_net.state_dict().items())
    ct = CTLoss(ConsistencyFunction(student_net), ConsistencyFunction(target_net), 1000, 2, 150, 0.9, mu_form)
    ct.after_step(1)
    mu = 0.9**exponent
    for name in ("w", "b", "a", "g"):
        expected = mu * float(before_target[name]) + (1 - mu) * float(before_student[name])
        assert float(getattr(target_net, name).detach()) == pytest.approx(expected, rel=1e-6), name
        assert torch.equal(getattr(student_net, name).detach(), before_student[name])
    assert float(target_net.counter) == 7.0  # buffers are copied


def test_cd_after_step_is_the_ema_with_constant_mu():
    student_net, target_net = LinearNet(w=2.0, b=1.0), LinearNet(w=0.0, b=-1.0)
    teacher = Denoiser(LinearNet(w=0.3, b=0.0))
    cd = CDLoss(ConsistencyFunction(student_net), ConsistencyFunction(target_net), teacher, num_scales=5, mu=0.95)
    cd.after_step(0)
    assert float(target_net.w.detach()) == pytest.approx(0.95 * 0.0 + 0.05 * 2.0, rel=1e-6)
    assert float(target_net.b.detach()) == pytest.approx(0.95 * -1.0 + 0.05 * 1.0, rel=1e-6)
    cd.after_step(1)  # the same μ at every step
    assert float(target_net.w.detach()) == pytest.approx(0.95 * 0.1 + 0.05 * 2.0, rel=1e-6)
    assert float(student_net.w.detach()) == 2.0


# -- CD -----------------------------------------------------------------------------------------
def ref_denoise(teacher_net: LinearNet, x: np.ndarray, sigma: np.ndarray, labels) -> np.ndarray:
    return ref_f(teacher_net, x, sigma, "edm", labels)


def ref_euler(teacher_net, x, s, s_next, labels) -> np.ndarray:
    d = (x - ref_denoise(teacher_net, x, s, labels)) / col(s)
    return x + col(s_next - s) * d


def ref_heun(teacher_net, x, s, s_next, labels) -> np.ndarray:
    """EDM Algorithm 1: an Euler predictor, then the average of the two slopes."""
    d = (x - ref_denoise(teacher_net, x, s, labels)) / col(s)
    x_euler = x + col(s_next - s) * d
    d_next = (x_euler - ref_denoise(teacher_net, x_euler, s_next, labels)) / col(s_next)
    return x + col(s_next - s) * (d + d_next) / 2


def test_reference_heun_step_on_a_linear_denoiser_matches_the_closed_form():
    """A check of the test's own Heun: D(x, σ) = α(σ)·x + β(σ) makes the step affine in x."""
    net = LinearNet(w=0.4, b=0.3, a=1e-3)
    x = np.array([0.5, -2.0]).reshape(2, 1, 1) * np.ones((2, *SHAPE))
    s, s_next = np.array([3.0, 0.7]), np.array([1.5, 0.4])
    w, b, a, _ = net.params()
    c_skip, c_out, c_in = scalings(s, "edm")
    alpha, beta = c_skip + c_out * w * c_in, c_out * (b + a * 250 * np.log(s))
    c_skip2, c_out2, c_in2 = scalings(s_next, "edm")
    alpha2, beta2 = c_skip2 + c_out2 * w * c_in2, c_out2 * (b + a * 250 * np.log(s_next))
    h = s_next - s
    d = ((1 - alpha) * x[:, 0, 0] - beta) / s
    xe = x[:, 0, 0] + h * d
    d2 = ((1 - alpha2) * xe - beta2) / s_next
    closed = x[:, 0, 0] + h * (d + d2) / 2
    np.testing.assert_allclose(ref_heun(net, x, s, s_next, None)[:, 0, 0], closed, rtol=1e-12)


@pytest.mark.parametrize("solver", ["heun", "euler"])
def test_cd_loss_matches_a_hand_computation(solver):
    seed, batch, num = 3, 6, 5
    student_net, target_net = LinearNet(w=1.1, b=0.05, g=0.1), LinearNet(w=0.9, b=-0.05, a=2e-3, g=0.2)
    teacher_net = LinearNet(w=0.4, b=0.3, a=-1e-3, g=0.15)
    cd = CDLoss(ConsistencyFunction(student_net), ConsistencyFunction(target_net), Denoiser(teacher_net),
                num_scales=num, mu=0.95, solver=solver)
    x, labels = data(batch), torch.tensor([3, 1, 4, 1, 5, 9])
    loss = cd(x, labels, 0, rng_for(seed, batch))

    g = torch.Generator().manual_seed(seed)
    n = torch.randint(0, num - 1, (batch,), generator=g).numpy()  # the index first, then the noise
    z = np64(torch.randn((batch, *SHAPE), generator=g))
    grid = ref_grid(num)
    t_lo, t_hi = grid[n], grid[n + 1]
    xn, y = np64(x), labels.numpy()
    x_hi = xn + col(t_hi) * z
    step = ref_heun if solver == "heun" else ref_euler
    x_lo = step(teacher_net, x_hi, t_hi, t_lo, y)
    expected = mean_sq(ref_f(student_net, x_hi, t_hi, "consistency", y) - ref_f(target_net, x_lo, t_lo, "consistency", y))
    np.testing.assert_allclose(np64(loss), expected, rtol=1e-4)
    # Heun and Euler give different targets here (the check tells them apart)
    other = (ref_euler if solver == "heun" else ref_heun)(teacher_net, x_hi, t_hi, t_lo, y)
    assert np.abs(other - x_lo).max() > 1e-3


def test_cd_rejects_an_unknown_solver():
    net = LinearNet(w=1.0, b=0.0)
    with pytest.raises(ValueError, match="solver"):
        CDLoss(ConsistencyFunction(net), ConsistencyFunction(net), Denoiser(net), solver="rk4")


# -- iCT ----------------------------------------------------------------------------------------
def ict_draws(seed: int, batch: int, num: int, p_mean: float = -1.1, p_std: float = 2.0):
    """The grid, the pair index (multinomial over the erf probabilities, computed with math.erf) and z."""
    grid = ref_grid(num)
    cdf = [math.erf((math.log(s) - p_mean) / (math.sqrt(2) * p_std)) for s in grid]
    weights = np.diff(cdf)
    g = torch.Generator().manual_seed(seed)
    i = torch.multinomial(torch.tensor(weights / weights.sum()), batch, replacement=True, generator=g).numpy()
    z = np64(torch.randn((batch, *SHAPE), generator=g))
    return grid, i, z


def test_ict_loss_matches_a_hand_computation():
    # K = 100: K′ = ⌊100/(log2 128 + 1)⌋ = 12; step 30 → N = min(10·2², 1280) + 1 = 41
    seed, batch, total, step, num = 8, 6, 100, 30, 41
    net = LinearNet(w=0.8, b=0.1, a=2e-3, g=0.1)
    ict = ICTLoss(ConsistencyFunction(net), ConsistencyFunction(net), total)  # θ⁻ = stop-grad θ
    x, labels = data(batch), torch.tensor([0, 1, 0, 1, 0, 1])
    loss = ict(x, labels, step, rng_for(seed, batch))

    grid, i, z = ict_draws(seed, batch, num)
    t_lo, t_hi = grid[i], grid[i + 1]
    xn, y = np64(x), labels.numpy()
    diff = ref_f(net, xn + col(t_hi) * z, t_hi, "consistency", y) - ref_f(net, xn + col(t_lo) * z, t_lo, "consistency", y)
    expected = 1 / (t_hi - t_lo) * pseudo_huber_ref(diff)  # λ(σ_i) = 1/(σ_{i+1} − σ_i)
    np.testing.assert_allclose(np64(loss), expected, rtol=1e-4)


def test_ict_gradient_flows_only_through_the_student():
    seed, batch, total, step, num = 4, 4, 100, 0, 11  # N(0) = 11
    net = LinearNet(w=0.8, b=0.1, a=2e-3)
    ict = ICTLoss(ConsistencyFunction(net), ConsistencyFunction(net), total)
    x = data(batch).requires_grad_(True)
    ict(x, None, step, rng_for(seed, batch)).sum().backward()

    grid, i, z = ict_draws(seed, batch, num)
    t_lo, t_hi = grid[i], grid[i + 1]
    xn = np64(x)
    x_hi, x_lo = xn + col(t_hi) * z, xn + col(t_lo) * z
    w, b, a, _ = net.params()
    diff = ref_f(net, x_hi, t_hi, "consistency") - ref_f(net, x_lo, t_lo, "consistency")
    norm = np.sqrt((diff.reshape(batch, -1) ** 2).sum(axis=1) + PH_C**2)
    upstream = col(1 / (t_hi - t_lo) / norm) * diff  # ∂L/∂student
    c_skip, c_out, c_in = scalings(t_hi, "consistency")
    grads = {
        "w": (upstream * col(c_out * c_in) * x_hi).sum(),
        "b": (upstream * col(c_out)).sum(),
        "a": (upstream * col(c_out * 250 * np.log(t_hi))).sum(),
    }
    for name, expected in grads.items():
        assert float(getattr(net, name).grad) == pytest.approx(expected, rel=1e-4), name
    # ∂f(x + t·z, t)/∂x = c_skip + c_out·w·c_in, elementwise; nothing through the target
    np.testing.assert_allclose(np64(x.grad), upstream * col(c_skip + c_out * w * c_in), rtol=1e-4, atol=1e-7)
    # had the target been differentiated too, ∂/∂w would differ by a visible amount
    c_skip_lo, c_out_lo, c_in_lo = scalings(t_lo, "consistency")
    through_target = (upstream * col(c_out_lo * c_in_lo) * x_lo).sum()
    assert abs(through_target) > 1e-2 * abs(grads["w"])


def test_ict_student_and_target_share_the_dropout_mask():
    torch.manual_seed(0)
    net = LinearNet(w=0.8, b=0.1, a=2e-3, dropout=0.5).train()
    f = ConsistencyFunction(net)
    ict = ICTLoss(f, f, 100)
    x = data(4)

    # the same input and σ: student and target outputs are identical under dropout
    student, target = ict.pair(x, None, 1.5, x, 1.5, x)
    assert torch.equal(student, target)
    mask = net.masks[0]
    assert torch.equal(net.masks[1], mask)
    assert bool((mask == 0).any()) and bool((mask == 2).any())  # dropout is really on, 1/(1 − p) = 2
    with torch.no_grad():
        assert not torch.equal(f(x, 1.5), f(x, 1.5))  # without the rewind, two forwards differ

    # the full loss: one mask for both, and the value by hand with that mask
    net.masks.clear()
    seed, batch = 2, 4
    loss = ict(x, None, 0, rng_for(seed, batch))
    assert len(net.masks) == 2 and torch.equal(net.masks[0], net.masks[1])
    mask = np64(net.masks[0])
    grid, i, z = ict_draws(seed, batch, 11)
    t_lo, t_hi = grid[i], grid[i + 1]
    xn = np64(x)
    diff = (ref_f(net, xn + col(t_hi) * z, t_hi, "consistency", mask=mask)
            - ref_f(net, xn + col(t_lo) * z, t_lo, "consistency", mask=mask))
    np.testing.assert_allclose(np64(loss), pseudo_huber_ref(diff) / (t_hi - t_lo), rtol=1e-4)


# -- ECT ----------------------------------------------------------------------------------------
def ect_expected(net, x, seed, batch, stage, q=2.0, k=8.0, b=1.0, p_mean=-1.1, p_std=2.0, labels=None):
    g = torch.Generator().manual_seed(seed)
    normal = np64(torch.randn((batch,), generator=g))  # t first, then ε
    eps = np64(torch.randn((batch, *SHAPE), generator=g))
    t = np.clip(np.exp(p_mean + p_std * normal), SIGMA_MIN, SIGMA_MAX)
    r = np.array([max(0.0, tt * (1 - q ** -(stage + 1) * (1 + k / (1 + math.exp(b * tt))))) for tt in t])
    r_eval = np.maximum(r, SIGMA_MIN)
    student = ref_f(net, x + col(t) * eps, t, "consistency", labels)
    target = ref_f(net, x + col(r_eval) * eps, r_eval, "consistency", labels)
    boundary = r <= SIGMA_MIN
    target[boundary] = x[boundary]  # the boundary condition: the clean sample
    return pseudo_huber_ref(student - target) / (t - r), boundary


@pytest.mark.parametrize("step, stage, seed", [(0, 0, 4), (99, 0, 13), (100, 1, 4), (450, 4, 19), (799, 7, 19)])
def test_ect_loss_matches_a_hand_computation(step, stage, seed):
    batch, total = 8, 800  # 8 stages: the stage goes up every 100 steps
    net = LinearNet(w=0.9, b=0.05, a=1e-3, g=0.1)
    f = ConsistencyFunction(net)
    x, labels = data(batch), torch.arange(batch)
    loss = ECTLoss(f, total, num_stages=8, target=f)(x, labels, step, rng_for(seed, batch))
    expected, boundary = ect_expected(net, np64(x), seed, batch, stage, labels=labels.numpy())
    if stage == 0:
        assert boundary.any() and not boundary.all()  # both branches are exercised
    if seed == 19:
        assert boundary.sum() == 1  # t clamped to σ_min: r < σ_min even at a late stage
    np.testing.assert_allclose(np64(loss), expected, rtol=2e-4)


def test_ect_default_target_is_the_student_and_boundary_target_is_x():
    seed, batch = 7, 8
    net = LinearNet(w=0.9, b=0.05)
    ect = ECTLoss(ConsistencyFunction(net), 800)
    assert ect.target is ect.student
    x = data(batch)
    loss = ect(x, None, 0, rng_for(seed, batch))
    expected, boundary = ect_expected(net, np64(x), seed, batch, 0)
    np.testing.assert_allclose(np64(loss), expected, rtol=2e-4)
    # where r = 0 the loss is d(f(x + tε, t), x)/t exactly
    g = torch.Generator().manual_seed(seed)
    t = np.clip(np.exp(-1.1 + 2.0 * np64(torch.randn((batch,), generator=g))), SIGMA_MIN, SIGMA_MAX)
    eps = np64(torch.randn((batch, *SHAPE), generator=g))
    xn = np64(x)
    direct = pseudo_huber_ref(ref_f(net, xn + col(t) * eps, t, "consistency") - xn) / t
    np.testing.assert_allclose(np64(loss)[boundary], direct[boundary], rtol=2e-4)
