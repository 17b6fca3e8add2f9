"""The σ grid, c_noise and the scalings; f(x, σ_min) = x; D uses the unshifted EDM scalings.

References: the closed forms of DESIGN.md §2 evaluated by hand in numpy, the worked values of
DESIGN.md (N = 40), and diffusers' `CMStochasticIterativeScheduler.get_scalings*`.
"""

import math

import numpy as np
import pytest
import torch
from diffusers import CMStochasticIterativeScheduler as DiffusersScheduler
from torch import nn

from consistency_models import (
    ConsistencyFunction,
    Denoiser,
    consistency_scalings,
    edm_scalings,
    karras_sigmas,
    noise_conditioning,
)

SIGMA_MIN, SIGMA_MAX, RHO, SIGMA_DATA = 0.002, 80.0, 7.0, 0.5


def numpy_karras(n, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rho=RHO):
    """σ_i = (σ_max^{1/ρ} + i/(N−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, element by element."""
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return np.array([(hi + i / (n - 1) * (lo - hi)) ** rho for i in range(n)])


class TinyNet(nn.Module):
    """A small random network F(x, c_noise, y) that depends on all three inputs and records them."""

    def __init__(self, channels=3, num_classes=10, seed=0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.embed = nn.Embedding(num_classes, channels)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))
        self.seen = []

    def forward(self, x, noise_labels, class_labels=None):
        self.seen.append((x.clone(), noise_labels.clone()))
        h = self.conv(x) * torch.cos(noise_labels / 100)[:, None, None, None]
        if class_labels is not None:
            h = h + self.embed(class_labels)[:, :, None, None]
        return h


# -- the grid -------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [2, 3, 18, 40, 151, 201])
def test_karras_grid_matches_closed_form(n):
    """Against the EDM eq. 5 closed form written out in numpy."""
    grid = karras_sigmas(n)
    assert grid.dtype == torch.float64 and grid.shape == (n,)
    np.testing.assert_allclose(grid.numpy(), numpy_karras(n), rtol=1e-12, atol=0)
    assert grid[0].item() == pytest.approx(SIGMA_MAX, rel=1e-12)
    assert grid[-1].item() == pytest.approx(SIGMA_MIN, rel=1e-12)
    assert torch.all(grid[1:] < grid[:-1])


def test_karras_grid_custom_range():
    grid = karras_sigmas(11, sigma_min=0.01, sigma_max=10.0, rho=3.0)
    np.testing.assert_allclose(grid.numpy(), numpy_karras(11, 0.01, 10.0, 3.0), rtol=1e-12)


def test_karras_grid_needs_two_points():
    with pytest.raises(ValueError, match="num"):
        karras_sigmas(1)


def test_worked_values_from_design():
    """DESIGN.md, N = 40: grid[0] = 80, grid[22] ≈ 1.3824, grid[17] ≈ 4.3656, grid[20] ≈ 2.2404."""
    grid = karras_sigmas(40)
    assert grid[0].item() == pytest.approx(80.0, abs=1e-9)
    assert grid[22].item() == pytest.approx(1.3824, abs=5e-5)
    assert grid[17].item() == pytest.approx(4.3656, abs=5e-5)
    assert grid[20].item() == pytest.approx(2.2404, abs=5e-5)


def test_noise_conditioning_worked_values():
    """c_noise = 250·ln(σ + 1e-44): 1095.507 at σ = 80, ≈ 80.949 at σ = grid[22]."""
    grid = karras_sigmas(40)
    c = noise_conditioning(torch.stack([grid[0], grid[22], grid[-1]]))
    assert c[0].item() == pytest.approx(1095.507, abs=1e-3)
    assert c[1].item() == pytest.approx(80.949, abs=1e-3)
    assert c[2].item() == pytest.approx(250 * math.log(0.002), abs=1e-9)
    assert c[0].item() == pytest.approx(250 * math.log(80.0), abs=1e-9)


# -- scalings -------------------------------------------------------------------------------------
def test_consistency_scalings_worked_values_at_sigma_max():
    """At σ = 80: c_skip ≈ 3.9e-5, c_out ≈ 0.49998, c_in ≈ 0.0125 (DESIGN.md)."""
    c_skip, c_out, c_in = consistency_scalings(torch.tensor(80.0, dtype=torch.float64))
    assert c_skip.item() == pytest.approx(3.9e-5, rel=0.01)
    assert c_out.item() == pytest.approx(0.49998, abs=5e-6)
    assert c_in.item() == pytest.approx(0.0125, rel=1e-4)


def test_scalings_closed_form_by_hand():
    sigmas = np.array([0.002, 0.01, 0.5, 1.3824, 20.0, 80.0])
    d, e = SIGMA_DATA, SIGMA_MIN
    c_skip, c_out, c_in = consistency_scalings(torch.from_numpy(sigmas))
    np.testing.assert_allclose(c_skip.numpy(), d**2 / ((sigmas - e) ** 2 + d**2), rtol=1e-12)
    np.testing.assert_allclose(c_out.numpy(), (sigmas - e) * d / np.sqrt(sigmas**2 + d**2), rtol=1e-12)
    np.testing.assert_allclose(c_in.numpy(), 1 / np.sqrt(sigmas**2 + d**2), rtol=1e-12)
    k_skip, k_out, k_in = edm_scalings(torch.from_numpy(sigmas))
    np.testing.assert_allclose(k_skip.numpy(), d**2 / (sigmas**2 + d**2), rtol=1e-12)
    np.testing.assert_allclose(k_out.numpy(), sigmas * d / np.sqrt(sigmas**2 + d**2), rtol=1e-12)
    np.testing.assert_allclose(k_in.numpy(), c_in.numpy(), rtol=1e-12)


def test_scalings_match_diffusers():
    """Consistency = diffusers' get_scalings_for_boundary_condition; EDM = its get_scalings."""
    sched = DiffusersScheduler()
    sigmas = torch.tensor([0.002, 0.05, 1.3824, 4.3656, 80.0], dtype=torch.float64)
    ours_cm = consistency_scalings(sigmas)
    ref_cm = sched.get_scalings_for_boundary_condition(sigmas)
    ours_edm = edm_scalings(sigmas)
    ref_edm = sched.get_scalings(sigmas)
    for ours, ref in zip(ours_cm[:2], ref_cm):
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=0)
    for ours, ref in zip(ours_edm[:2], ref_edm):
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=0)
    # The two really differ (the σ_min shift), so the comparisons above are not vacuous.
    assert not torch.allclose(ours_cm[0][:3], ours_edm[0][:3])


# -- the wrapped network ----------------------------------------------------------------------------
def test_boundary_condition_is_exact():
    """f(x, σ_min) == x bit for bit, whatever the network outputs."""
    net = TinyNet()
    f = ConsistencyFunction(net)
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 3
    labels = torch.tensor([0, 3, 5, 9])
    out = f(x, SIGMA_MIN, labels)
    assert torch.equal(out, x)
    assert net(x, torch.zeros(4), labels).abs().max() > 0.1  # the network itself is far from zero


def test_boundary_condition_per_sample_sigmas():
    """A per-sample σ vector: samples at σ_min come back unchanged, the others do not."""
    f = ConsistencyFunction(TinyNet())
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    out = f(x, torch.tensor([SIGMA_MIN, 1.0, SIGMA_MIN], dtype=torch.float64), torch.tensor([1, 2, 3]))
    assert torch.equal(out[0], x[0]) and torch.equal(out[2], x[2])
    assert not torch.allclose(out[1], x[1], atol=1e-3)


@pytest.mark.parametrize("wrapper, diffusers_scalings", [
    (ConsistencyFunction, "get_scalings_for_boundary_condition"),
    (Denoiser, "get_scalings"),
])
def test_wrapper_output_equals_hand_formula(wrapper, diffusers_scalings):
    """f / D = c_skip·x + c_out·F(c_in·x, 250·ln σ, y) with diffusers' c_skip, c_out."""
    net = TinyNet(seed=3)
    model = wrapper(net)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * 5
    labels = torch.tensor([4, 7])
    sigmas = torch.tensor([1.3824, 20.0], dtype=torch.float64)
    out = model(x, sigmas, labels)

    model_in, c_noise = net.seen[-1]
    c_in = (1 / torch.sqrt(sigmas**2 + SIGMA_DATA**2)).float()
    torch.testing.assert_close(model_in, x * c_in[:, None, None, None], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(c_noise, (250 * torch.log(sigmas)).float(), rtol=1e-7, atol=1e-5)

    c_skip, c_out = getattr(DiffusersScheduler(), diffusers_scalings)(sigmas)
    raw = net(model_in, c_noise, labels)
    expected = c_skip.float()[:, None, None, None] * x + c_out.float()[:, None, None, None] * raw
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


def test_denoiser_differs_from_consistency_function():
    """The same network under D and f: different outputs at σ ~ 1 (unshifted vs shifted scalings)."""
    net = TinyNet(seed=4)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    labels = torch.tensor([1, 2])
    d = Denoiser(net)(x, 0.5, labels)
    f = ConsistencyFunction(net)(x, 0.5, labels)
    assert (d - f).abs().max() > 1e-3
    # D does not satisfy the boundary condition: D(x, σ_min) ≠ x.
    assert not torch.equal(Denoiser(net)(x, SIGMA_MIN, labels), x)
