"""Truncated consistency models (issue 23): the truncated proposal against the standard library's
normal distribution, the stage-2 loss against a hand computation (targets from f_θ above t′ and the
frozen stage-1 model below it, boundary weights), the switch between the stages and the learning
rate, and `cm train --method tcm` (resume bit for bit across the stage switch, two processes = one,
--init-from runs stage 2 only)."""

from __future__ import annotations

import copy
import math
import shutil
import sys
from statistics import NormalDist

import pytest
import torch

from consistency_models.cli import main
from consistency_models.errors import InvalidInputError
from consistency_models.kinds import get_kind
from consistency_models.networks.mlp import MLP, MLPConfig
from consistency_models.training import TrainConfig
from consistency_models.training.batch_rng import BatchRNG
from consistency_models.training.checkpoint import list_checkpoints, load_checkpoint
from consistency_models.training.loop import learning_rate
from consistency_models.training.methods.tcm import TCMLoss, truncated_lognormal

from conftest import TORCHRUN, assert_same_exports, exported_weights, perturb_, train_one_and_two_processes

SIGMA_DATA, SIGMA_MIN = 0.5, 0.002


def test_the_truncated_proposal_is_the_inverse_cdf_of_the_truncated_lognormal():
    normal = torch.tensor([-40.0, -3.0, -0.7, 0.0, 0.4, 2.5, 40.0], dtype=torch.float64)
    p_mean, p_std, low, high = -1.1, 2.0, 1.0, 80.0
    sigma = truncated_lognormal(normal, p_mean, p_std, low, high)
    gauss, proposal = NormalDist(), NormalDist(p_mean, p_std)   # the standard library, not torch
    lo, hi = proposal.cdf(math.log(low)), proposal.cdf(math.log(high))
    for n, s in zip(normal.tolist(), sigma.tolist()):
        assert low <= s <= high
        if abs(n) < 10:   # P(σ' ≤ σ | low ≤ σ' ≤ high) equals the quantile Φ(n) the draw stands for
            assert (proposal.cdf(math.log(s)) - lo) / (hi - lo) == pytest.approx(gauss.cdf(n), abs=1e-9)
    assert sigma[0] == pytest.approx(low) and sigma[-1] == pytest.approx(high)


def test_a_range_far_in_the_upper_tail_keeps_its_spread():
    """σ in [20, 80] with ln σ ~ N(−1.1, 0.5²): 8 to 11 standard deviations up, where Φ rounds to 1.
    Checked with the survival function Q(z) = erfc(z/√2)/2 of the standard library."""
    normal = torch.tensor([-3.0, -1.0, 0.0, 1.0, 3.0], dtype=torch.float64)
    sigma = truncated_lognormal(normal, -1.1, 0.5, 20.0, 80.0)
    q = lambda z: math.erfc(z / math.sqrt(2)) / 2
    a, b = (math.log(20.0) + 1.1) / 0.5, (math.log(80.0) + 1.1) / 0.5
    assert bool((sigma[1:] > sigma[:-1]).all()) and 20 <= sigma.min() and sigma.max() <= 80
    for n, s in zip(normal.tolist(), sigma.tolist()):
        z = (math.log(s) + 1.1) / 0.5
        assert (q(a) - q(z)) / (q(a) - q(b)) == pytest.approx(NormalDist().cdf(n), rel=1e-9)


def make_loss(stage1_steps: int = 0, boundary_prob: float = 0.4, dividing_sigma: float = 1.0):
    network = perturb_(MLP(MLPConfig(hidden=16, depth=2, emb_dim=8)), 0)
    wrap = get_kind("consistency").wrapper
    loss = TCMLoss(wrap(network, SIGMA_DATA, SIGMA_MIN), wrap(network, SIGMA_DATA, SIGMA_MIN), total_steps=8,
                   stage1_steps=stage1_steps, num_stages=4, dividing_sigma=dividing_sigma,
                   boundary_prob=boundary_prob, boundary_weight=0.1, p_mean=-1.1, p_std=2.0,
                   sigma_min=SIGMA_MIN, sigma_max=80.0)
    return loss, network


def rng(seed: int = 3) -> BatchRNG:
    return BatchRNG(torch.Generator().manual_seed(seed), 64, slice(0, 64), "cpu")


def hand_times(seed: int = 3, stage: int = 3, boundary_prob: float = 0.4):
    """The loss's draws redone by hand: per sample (t, r, weight) and the noise ε."""
    draws = rng(seed)                       # the same draws, in the loss's order
    normal, uniform, eps = draws.randn(), draws.rand(), draws.randn(2)
    gauss, proposal = NormalDist(), NormalDist(-1.1, 2.0)
    lo, hi = proposal.cdf(0.0), proposal.cdf(math.log(80.0))
    times = []
    for n, u in zip(normal.tolist(), uniform.tolist()):
        if u < boundary_prob:
            t, weight = 1.0, 0.1 / boundary_prob                 # a boundary sample, at t′ = 1
        else:
            t, weight = math.exp(proposal.inv_cdf(lo + gauss.cdf(n) * (hi - lo))), 1 / (1 - boundary_prob)
        r = t * (1 - 2.0 ** -(stage + 1) * (1 + 8 / (1 + math.exp(t))))   # ECT's r(t)
        times.append((t, r, weight))
    return times, eps


def test_stage_two_loss_against_a_hand_computation():
    loss, network = make_loss()
    frozen = copy.deepcopy(network)         # f₁: the network when the loss was made (stage 1 = 0 steps)
    perturb_(network, 1)                    # f_θ now differs from f₁
    f = get_kind("consistency").wrapper
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(9))
    got = loss(x, None, 6, rng())           # stage 2 of 8 steps, all of them: ECT stage 3 of 4 (every 2 steps)
    times, eps = hand_times()
    expected = []
    with torch.no_grad():
        for i, (t, r, weight) in enumerate(times):
            one = lambda v: torch.tensor([v], dtype=torch.float64)
            student = f(network, SIGMA_DATA, SIGMA_MIN)(x[i:i + 1] + t * eps[i:i + 1], one(t), None)
            model = network if r >= 1.0 else frozen               # below t′: the stage-1 model
            target = f(model, SIGMA_DATA, SIGMA_MIN)(x[i:i + 1] + r * eps[i:i + 1], one(r), None)
            c = 0.00054 * math.sqrt(2)
            huber = math.sqrt(float(((student - target) ** 2).sum()) + c * c) - c
            expected.append(weight * huber / (t - r))
    torch.testing.assert_close(got.detach().double(), torch.tensor(expected, dtype=torch.float64), rtol=2e-5, atol=1e-7)
    below = sum(r < 1.0 for _, r, _ in times)
    assert 10 < below < 54                  # both kinds of target were checked


def test_only_targets_below_the_dividing_time_come_from_the_stage_one_model():
    loss, network = make_loss()
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    before = loss(x, None, 6, rng()).detach()
    perturb_(loss.frozen.network, 5)                            # move f₁ only
    after = loss(x, None, 6, rng()).detach()
    below = torch.tensor([r < 1.0 for _, r, _ in hand_times()[0]])
    assert bool((before[below] != after[below]).all()) and torch.equal(before[~below], after[~below])


def test_the_stage_one_model_is_frozen_at_the_switch_and_saved():
    loss, network = make_loss(stage1_steps=3)
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(2))
    assert loss.frozen is None and loss.state_dict() == {}
    loss(x, None, 2, rng())                                     # stage 1: ECT, nothing frozen
    assert loss.frozen is None
    loss(x, None, 3, rng())
    snapshot = {k: v.clone() for k, v in network.state_dict().items()}
    perturb_(network, 7)                                        # training goes on; f₁ stays
    state = loss.state_dict()["stage1_network"]
    assert all(torch.equal(state[k], snapshot[k]) for k in snapshot)
    again, _ = make_loss(stage1_steps=3)
    again.load_state_dict(loss.state_dict())
    assert all(torch.equal(again.frozen.network.state_dict()[k], snapshot[k]) for k in snapshot)
    assert not any(p.requires_grad for p in again.frozen.network.parameters())


def test_options_stage_shares_and_the_learning_rate(tmp_path):
    both = TrainConfig(method="tcm", data="toy:mog8", out=str(tmp_path / "a"), steps=100, lr=1e-3)
    assert both.options.stage1_share == 0.5
    assert [learning_rate(both, s) for s in (0, 49, 50, 99)] == [1e-3, 1e-3, 5e-4, 5e-4]
    only2 = TrainConfig(method="tcm", data="toy:mog8", out=str(tmp_path / "b"), steps=100, lr=1e-3,
                        init_from="digits")   # an embedded consistency model
    assert only2.options.stage1_share == 0.0 and learning_rate(only2, 0) == 1e-3
    with pytest.raises(InvalidInputError, match=r"^dividing_sigma: 90\.0 must lie between --sigma-min 0\.002 "
                                                r"and --sigma-max 80\.0$"):
        TrainConfig.from_settings(method="tcm", data="toy:mog8", out=str(tmp_path / "c"), dividing_sigma=90.0)
    for settings in ({"stage1_share": 0.0}, {"steps": 1}, {"steps": 50, "stage1_share": 0.99}):
        with pytest.raises(InvalidInputError, match=r"^stage1_share: .* without --init-from both stages need"):
            TrainConfig.from_settings(method="tcm", data="toy:mog8", out=str(tmp_path / "e"), **settings)
    with pytest.raises(InvalidInputError, match=r"^boundary_prob: "):
        TrainConfig.from_settings(method="tcm", data="toy:mog8", out=str(tmp_path / "d"), boundary_prob=1.0)


# -- cm train --method tcm ----------------------------------------------------------------------------
TOY = ["train", "--method", "tcm", "--data", "toy:mog8", "--batch-size", "32", "--no-progress",
       "--save-every", "2", "--sample-every", "100"]



def test_tcm_resumes_bit_for_bit_across_the_stage_switch_and_init_from_runs_stage_two(tmp_path):
    assert main([*TOY, "--steps", "6", "--out", str(tmp_path / "a")]) == 0     # stage 2 from step 3
    whole = exported_weights(tmp_path / "a")
    resumed = shutil.copytree(tmp_path / "a", tmp_path / "b")
    list_checkpoints(resumed)[-1][1].unlink()      # as if killed after the step-4 checkpoint (in stage 2)
    shutil.rmtree(resumed / "unet")
    assert "stage1_network" in load_checkpoint(list_checkpoints(resumed)[-1][1])["loss"]
    assert main([*TOY, "--steps", "6", "--out", str(resumed), "--resume"]) == 0
    again = exported_weights(resumed)
    assert all(torch.equal(whole[k], again[k]) for k in whole)

    assert main([*TOY, "--steps", "2", "--init-from", str(tmp_path / "a"), "--out", str(tmp_path / "c")]) == 0
    state = load_checkpoint(list_checkpoints(tmp_path / "c")[-1][1])
    frozen = state["loss"]["stage1_network"]       # stage 2 only: f₁ is the --init-from model
    assert all(torch.equal(frozen[k], whole[k]) for k in whole)


@pytest.mark.skipif(not TORCHRUN.is_file(), reason=f"torchrun is not installed next to {sys.executable}")
def test_two_torchrun_processes_train_what_one_trains(tmp_path):
    train_one_and_two_processes([*TOY, "--steps", "4", "--save-every", "4"], tmp_path)
    assert_same_exports(tmp_path / "one", tmp_path / "two")


def test_init_from_a_model_whose_network_takes_another_time_is_refused_in_one_line(tmp_path, capsys):
    sct = ["train", "--method", "sct", "--data", "toy:mog8", "--batch-size", "8", "--steps", "1", "--no-progress"]
    assert main([*sct, "--out", str(tmp_path / "sct")]) == 0
    capsys.readouterr()
    assert main([*TOY, "--steps", "1", "--init-from", str(tmp_path / "sct"), "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        f"cm: error: init-from: {tmp_path / 'sct'} holds an sCM (TrigFlow) model, whose network takes t as its time; "
        "this run trains a consistency model"), err
