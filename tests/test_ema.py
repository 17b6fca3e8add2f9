"""EMA of the weights at several rates, and the CD/CT target update θ⁻ ← μθ⁻ + (1 − μ)θ."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from consistency_models.errors import InvalidInputError
from consistency_models.training.checkpoint import load_checkpoint, save_checkpoint
from consistency_models.training.ema import EMA, ema_update_

RATES = (0.9, 0.5)


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


@torch.no_grad()
def set_weights(model: nn.Module, seed: int) -> None:
    """New parameter values and batch statistics, as an optimizer step and a forward pass would give."""
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.copy_(torch.randn(p.shape, generator=gen))
    model[1].running_mean.copy_(torch.randn(4, generator=gen))
    model[1].num_batches_tracked += 1


def test_three_updates_match_a_hand_computation():
    model = tiny_model()
    ema = EMA(model, rates=RATES)
    names = [n for n, _ in model.named_parameters()]
    expected = {r: {n: p.detach().double().clone() for n, p in model.named_parameters()} for r in RATES}
    for step in range(3):
        set_weights(model, seed=step)
        ema.update(model)
        for r in RATES:
            for n, p in model.named_parameters():
                expected[r][n] = r * expected[r][n] + (1 - r) * p.detach().double()

    assert ema.num_updates == 3
    for r in RATES:
        averaged = ema.averaged(r)
        assert list(averaged) == list(model.state_dict())  # a full state dict, in the model's order
        for n in names:
            assert averaged[n].dtype == torch.float32
            torch.testing.assert_close(averaged[n].double(), expected[r][n], rtol=0, atol=1e-6)
        assert torch.equal(averaged["1.running_mean"], model[1].running_mean)  # buffers copied
        assert averaged["1.num_batches_tracked"].item() == 3
    # The two rates really differ, and the model itself was not touched.
    assert not torch.allclose(ema.averaged(0.9)["0.weight"], ema.averaged(0.5)["0.weight"])
    set_weights(reference := tiny_model(), seed=2)
    assert torch.equal(model[0].weight, reference[0].weight)


def test_copy_to_and_low_precision_model():
    model = tiny_model().to(torch.bfloat16)
    ema = EMA(model, rates=RATES)
    set_weights(model, seed=1)
    ema.update(model)
    assert ema.averaged(0.5)["0.weight"].dtype == torch.float32
    target = tiny_model(seed=5).to(torch.bfloat16)
    ema.copy_to(target, 0.5)
    assert target[0].weight.dtype == torch.bfloat16
    assert torch.equal(target[0].weight, ema.averaged(0.5)["0.weight"].to(torch.bfloat16))


def test_state_dict_round_trip_through_a_checkpoint(tmp_path):
    model = tiny_model()
    ema = EMA(model, rates=RATES)
    for step in range(2):
        set_weights(model, seed=step)
        ema.update(model)
    path = save_checkpoint(tmp_path, 2, {"ema": ema.state_dict()})  # weights_only-loadable

    resumed = EMA(tiny_model(seed=7), rates=RATES)
    resumed.load_state_dict(load_checkpoint(path)["ema"])
    assert resumed.num_updates == 2
    set_weights(model, seed=2)
    ema.update(model)
    resumed.update(model)
    for r in RATES:
        for key, value in ema.averaged(r).items():
            assert torch.equal(resumed.averaged(r)[key], value)

    with pytest.raises(InvalidInputError, match=r"state: EMA rates \[0.9, 0.5\] differ from this EMA's \[0.999\]"):
        EMA(model, rates=(0.999,)).load_state_dict(ema.state_dict())


def test_tied_parameters_share_one_average():
    model = nn.Sequential(nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False))
    model[1].weight = model[0].weight
    ema = EMA(model, rates=(0.5,))
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update(model)
    averaged = ema.averaged(0.5)
    assert averaged["0.weight"] is averaged["1.weight"]
    reloaded = nn.Sequential(nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False))
    ema.copy_to(reloaded, 0.5)
    assert torch.equal(reloaded[1].weight, averaged["0.weight"])


def test_bad_rates_and_unknown_rate():
    model = tiny_model()
    for rates in ((), (1.0,), (0.9, 0.9), (-0.1,), ("fast",)):
        with pytest.raises(InvalidInputError, match="rates: .* is not allowed"):
            EMA(model, rates=rates)
    with pytest.raises(InvalidInputError, match=r"rate: 0.99 is not one of this EMA's rates \[0.9, 0.5\]"):
        EMA(model, rates=RATES).averaged(0.99)


def test_ema_update_matches_the_formula():
    target, source = tiny_model(seed=1), tiny_model(seed=2)
    set_weights(source, seed=3)
    before = {n: p.detach().double().clone() for n, p in target.named_parameters()}
    ema_update_(target, source, mu=0.95)
    for n, p in target.named_parameters():
        want = 0.95 * before[n] + 0.05 * dict(source.named_parameters())[n].detach().double()
        torch.testing.assert_close(p.detach().double(), want, rtol=0, atol=1e-6)
        assert p.requires_grad
    assert torch.equal(target[1].running_mean, source[1].running_mean)

    ema_update_(target, source, mu=0.0)  # iCT/ECT: the target is the student, exactly
    for t, s in zip(target.parameters(), source.parameters()):
        assert torch.equal(t, s)
    frozen = [p.detach().clone() for p in target.parameters()]
    ema_update_(target, tiny_model(seed=4), mu=1.0)
    for t, f in zip(target.parameters(), frozen):
        assert torch.equal(t, f)

    with pytest.raises(InvalidInputError, match=r"mu: 1.5 is not allowed; give a rate in \[0, 1\]"):
        ema_update_(target, source, mu=1.5)
    with pytest.raises(InvalidInputError, match="source: parameter '0.weight' has shape"):
        ema_update_(target, nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)), mu=0.5)
