"""The TrigFlow diffusion teacher (`cm train --method edm --time-input t`) and sCD from it (issue 23):
its loss against EDM's weighted loss and against a hand computation on 1-D Gaussian data (where the
exact velocity is known in closed form), Heun sampling of that exact velocity, the folder it is
saved as, sCD starting its student from it, and the bounded learned weighting."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from consistency_models.cli import main
from consistency_models.kinds import get_kind
from consistency_models.networks.mlp import MLP, MLPConfig
from consistency_models.pipeline import ConsistencyModelPipeline
from consistency_models.sampling import sample_heun
from consistency_models.parametrization import karras_sigmas
from consistency_models.training import Trainer, TrainConfig
from consistency_models.training.batch_rng import BatchRNG
from consistency_models.training.methods.edm import EDMLoss, TrigFlowDiffusionLoss
from consistency_models.training.methods.scm import AdaptiveWeight

from conftest import perturb_

SIGMA_DATA, SIGMA_MIN = 0.5, 0.002


def rng(seed: int, batch: int) -> BatchRNG:
    return BatchRNG(torch.Generator().manual_seed(seed), batch, slice(0, batch), "cpu")


def test_the_trigflow_loss_is_edm_s_weighted_loss_times_sigma_data_squared():
    """‖σ_d·F − v‖² = σ_d²·λ(σ)·‖D − x₀‖² with D the kind's σ-space wrapper of the same network
    (the docstring of methods/edm.py derives it); the two losses see the same draws."""
    net = perturb_(MLP(MLPConfig(hidden=32, depth=2, emb_dim=16)), 0)
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    trig = TrigFlowDiffusionLoss(net, SIGMA_DATA, p_mean=-1.0, p_std=1.4)(x, None, 0, rng(5, 64))
    denoiser = get_kind("trigflow_diffusion").wrapper(net, SIGMA_DATA, SIGMA_MIN)
    edm = EDMLoss(denoiser, p_mean=-1.0, p_std=1.4)(x, None, 0, rng(5, 64))
    assert trig.min() > 1e-3
    torch.testing.assert_close(trig, SIGMA_DATA**2 * edm, rtol=2e-4, atol=1e-6)


class GaussianVelocity(nn.Module):
    """The exact TrigFlow velocity of 1-D data x₀ ~ N(m, s²), as a network F(u, t) with u = x_t/σ_d:
    x_t = cos t·x₀ + sin t·z and v = cos t·z − sin t·x₀ are jointly Gaussian, so
    E[v | x_t] = −sin t·m + Cov(v, x_t)/Var(x_t)·(x_t − cos t·m) with Cov = sin t cos t (σ_d² − s²),
    Var(x_t) = cos²t·s² + sin²t·σ_d²; F = E[v | x_t]/σ_d."""

    def __init__(self, m: float, s: float, scale: float = 1.0) -> None:
        super().__init__()
        self.m, self.s, self.scale = m, s, scale
        self.dummy = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def moments(self, t: torch.Tensor):
        cos, sin = torch.cos(t), torch.sin(t)
        return cos, sin, sin * cos * (SIGMA_DATA**2 - self.s**2), cos**2 * self.s**2 + sin**2 * SIGMA_DATA**2

    def forward(self, u, t, class_labels=None):
        cos, sin, cov, var = (v.reshape(-1, 1).to(torch.float64) for v in self.moments(t.to(torch.float64)))
        x_t = SIGMA_DATA * u.to(torch.float64)
        velocity = -sin * self.m + cov / var * (x_t - cos * self.m)
        return (self.scale * velocity / SIGMA_DATA).to(u.dtype)

    def least_loss(self, t: torch.Tensor) -> torch.Tensor:
        """Var(v | x_t): what the loss averages to at the exact velocity."""
        cos, sin, cov, var = self.moments(t)
        return cos**2 * SIGMA_DATA**2 + sin**2 * self.s**2 - cov**2 / var


def test_the_loss_against_a_hand_computation_and_its_minimum_at_the_exact_velocity():
    m, s, batch = 0.3, 0.8, 20000
    x = m + s * torch.randn(batch, 1, generator=torch.Generator().manual_seed(2))
    exact = GaussianVelocity(m, s)
    loss = TrigFlowDiffusionLoss(exact, SIGMA_DATA, p_mean=-1.0, p_std=1.4)(x, None, 0, rng(7, batch))
    draws = rng(7, batch)                     # the same draws, in the loss's order, by hand in float64
    t = torch.atan(torch.exp(-1.0 + 1.4 * draws.randn().double()) / SIGMA_DATA)
    z = (draws.randn(1).double() * SIGMA_DATA)[:, 0]
    x0 = x[:, 0].double()
    cos, sin, cov, var = exact.moments(t)
    x_t = cos * x0 + sin * z
    by_hand = (-sin * m + cov / var * (x_t - cos * m) - (cos * z - sin * x0)) ** 2
    torch.testing.assert_close(loss.double(), by_hand, rtol=1e-4, atol=1e-6)
    # its mean is E[Var(v | x_t)] over the same t (within 3 standard errors), and a scaled
    # velocity does worse: the exact one is the minimiser, so the target's sign and scale are right
    expected, spread = exact.least_loss(t).mean(), loss.double().std() / math.sqrt(batch)
    assert abs(loss.mean() - expected) < 3 * spread
    for scale in (0.8, 1.2):   # compared sample by sample on the same draws
        worse = TrigFlowDiffusionLoss(GaussianVelocity(m, s, scale), SIGMA_DATA, -1.0, 1.4)(x, None, 0, rng(7, batch))
        gap = (worse - loss).double()
        assert gap.mean() > 3 * gap.std() / math.sqrt(batch)


def test_heun_sampling_of_the_exact_velocity_gives_the_data_distribution():
    """The kind's denoiser (x̂₀ = cos t·x_t − sin t·σ_d·F) of the exact velocity, run by its
    sampler (Heun on the Karras grid), moves N(0, 80²) noise to N(m, s²)."""
    m, s = 0.3, 0.8
    kind = get_kind("trigflow_diffusion")
    denoiser = kind.wrapper(GaussianVelocity(m, s), SIGMA_DATA, SIGMA_MIN)
    sigmas = karras_sigmas(40, SIGMA_MIN, 80.0, 7.0).tolist() + [0.0]
    noise = 80.0 * torch.randn(50000, 1, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        x = sample_heun(denoiser, noise, sigmas)
    # the ODE maps the noise's quantiles to the data's: the spread follows the draw's own (1.0033 here)
    assert abs(x.mean().item() - m) < 0.02 and abs(x.std().item() / s - noise.std().item() / 80.0) < 0.01


@pytest.fixture(scope="module")
def points(tmp_path_factory):
    import numpy as np

    folder = tmp_path_factory.mktemp("tf")
    gen = np.random.default_rng(0)
    angles = gen.integers(0, 6, 2000) * (2 * np.pi / 6)
    data = np.stack([np.cos(angles), np.sin(angles)], 1) + 0.06 * gen.standard_normal((2000, 2))
    np.savez(folder / "ring.npz", data.astype(np.float32))
    return folder / "ring.npz"


@pytest.fixture(scope="module")
def teacher(points, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "t"
    assert main(["train", "--method", "edm", "--time-input", "t", "--data", str(points), "--out", str(out),
                 "--steps", "20", "--batch-size", "64", "--lr", "1e-3", "--no-progress"]) == 0
    return out


def test_a_trigflow_teacher_is_saved_as_its_own_kind_and_samples_the_same_after_reloading(teacher, tmp_path):
    index = json.loads((teacher / "model_index.json").read_text())
    assert index["_parametrization"] == "trigflow_diffusion" and index["scheduler"] == ["diffusers", "SCMScheduler"]
    config = json.loads((teacher / "train_config.json").read_text())
    assert (config["time_input"], config["p_mean"], config["p_std"]) == ("t", -1.0, 1.4)   # sCM's proposal
    pipe = ConsistencyModelPipeline.from_pretrained(teacher)
    first = pipe(batch_size=5, num_inference_steps=6, generator=torch.Generator().manual_seed(0),
                 output_type="pt").images
    pipe.save_pretrained(tmp_path / "copy")
    again = ConsistencyModelPipeline.from_pretrained(tmp_path / "copy")(
        batch_size=5, num_inference_steps=6, generator=torch.Generator().manual_seed(0), output_type="pt").images
    torch.testing.assert_close(first, again, rtol=0, atol=0)


def test_scd_starts_its_student_as_the_trigflow_teacher_and_reads_its_velocity_as_it_is(teacher, points, tmp_path):
    cfg = TrainConfig.from_settings(method="scd", teacher=str(teacher), data=str(points), out=str(tmp_path / "s"),
                                    steps=2, batch_size=64, progress=False)
    assert cfg.init_from_teacher and cfg.options.time_input == "t"
    assert cfg.options.adaptive_weight and cfg.options.weight_bound == 1.0   # on, bounded (README, sCD)
    trainer = Trainer(cfg)
    assert trainer.loss.weight.bound == 1.0
    assert trainer.parametrization == "trigflow"
    teacher_net = ConsistencyModelPipeline.from_pretrained(teacher).unet
    for name, value in teacher_net.state_dict().items():
        torch.testing.assert_close(trainer.network.state_dict()[name], value, rtol=0, atol=0)
    x_t = torch.randn(4, 2, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.1, 0.5, 1.0, 1.5], dtype=torch.float64)
    with torch.no_grad():   # dx_t/dt = σ_d·F(x_t/σ_d, t), the network given t itself, no sign flip
        want = SIGMA_DATA * teacher_net(x_t / SIGMA_DATA, t.float(), None)
        torch.testing.assert_close(trainer.loss.teacher.velocity(x_t, t, None), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("argv, message", [
    (["--method", "ect"], "init-from-teacher: {t} holds a TrigFlow diffusion model (velocity, time input t), "
                          "whose network takes t as its time; this run trains a consistency model, whose network "
                          "takes log_sigma"),
    (["--method", "scd", "--time-input", "log_sigma"], "time-input: 'log_sigma' does not fit a student started from "
                                                       "the teacher (its network takes t)"),
    (["--method", "sct", "--weight-bound", "2", "--no-adaptive-weight"], "weight-bound: 2.0 bounds the learned "
                                                                        "weighting, which is off"),
])
def test_a_student_that_cannot_start_from_a_trigflow_teacher_is_refused_in_one_line(teacher, points, tmp_path,
                                                                                   capsys, argv, message):
    code = main(["train", "--data", str(points), "--out", str(tmp_path / "r"), "--teacher", str(teacher),
                 "--steps", "2", "--batch-size", "64", "--no-progress", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message.format(t=teacher) in err, err


def test_cd_distils_a_trigflow_teacher_through_its_denoiser(teacher, points, tmp_path):
    assert main(["train", "--method", "cd", "--teacher", str(teacher), "--no-init-from-teacher", "--data",
                 str(points), "--out", str(tmp_path / "cd"), "--steps", "2", "--batch-size", "64",
                 "--no-progress"]) == 0


def test_the_bounded_weight_is_b_tanh_w_over_b():
    free, bounded = AdaptiveWeight(SIGMA_DATA, seed=1), AdaptiveWeight(SIGMA_DATA, seed=1, bound=2.0)
    with torch.no_grad():
        for module in (free, bounded):
            module.linear.weight.normal_(0, 3, generator=torch.Generator().manual_seed(4))
    t = torch.linspace(0.01, 1.56, 50, dtype=torch.float64)
    w, b = free(t), bounded(t)
    assert w.abs().max() > 4     # the unbounded weight runs past the bound here
    for wi, bi in zip(w.tolist(), b.tolist()):
        assert bi == pytest.approx(2.0 * math.tanh(wi / 2.0), rel=1e-5, abs=1e-6) and abs(bi) <= 2.0
