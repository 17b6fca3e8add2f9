"""Exponential moving averages of a network's weights: the EMA models and the CD/CT target θ⁻.

`EMA` keeps float32 averages θ_ema ← r·θ_ema + (1 − r)·θ at several rates r beside the model
(the released consistency models use 0.999, 0.9999 and 0.9999432189950708). `ema_update_` is
the target-network update of consistency distillation and training (Song et al. 2023,
Algorithms 2 and 3), θ⁻ ← stopgrad(μθ⁻ + (1 − μ)θ), where μ changes with the step.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import torch
from torch import Tensor, nn

from ..errors import InvalidInputError


class EMA:
    """Float32 moving averages of `model`'s parameters at each rate in `rates`.

    Buffers (persistent ones, e.g. BatchNorm statistics) are not averaged but copied from the
    model at every update. Pass the bare model, not a DDP or `torch.compile` wrapper, so the
    names match `model.state_dict()`. The averages live on the device of each parameter.
    """

    def __init__(self, model: nn.Module, rates: Iterable[float] = (0.999, 0.9999), warmup: bool = False) -> None:
        """`warmup`: use min(r, (1 + n)/(10 + n)) at update n, so short runs are not dominated
        by the initial weights (the common EMA warm-up of TensorFlow's and diffusers' EMA)."""
        self.rates: tuple[float, ...] = _check_rates(rates)
        self.warmup = warmup
        params = dict(model.named_parameters())
        canonical = {id(p): name for name, p in params.items()}
        # Every state_dict name of a parameter (tied ones included) → the name its average is kept under.
        self._alias = {
            name: canonical[id(p)] for name, p in model.named_parameters(remove_duplicate=False)
        }
        buffers = dict(model.named_buffers())
        # state_dict order; persistent buffers only (non-persistent ones are not in a state dict).
        self._keys = [k for k in model.state_dict() if k in self._alias or k in buffers]
        self._buffer_names = [k for k in self._keys if k not in self._alias]
        self._param_names = list(params)
        with torch.no_grad():
            self._averages = [
                {name: p.detach().to(torch.float32, copy=True) for name, p in params.items()} for _ in self.rates
            ]
            self._buffers = {name: buffers[name].detach().clone() for name in self._buffer_names}
        self.num_updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """θ_ema ← r·θ_ema + (1 − r)·θ for every rate r (warmed up if asked); buffers copied."""
        params = dict(model.named_parameters())
        if list(params) != self._param_names:
            raise InvalidInputError(
                "model: its parameter names differ from the ones the EMA was built with; "
                "pass the same (unwrapped) model"
            )
        for rate, average in zip(self.rates, self._averages):
            if self.warmup:
                rate = min(rate, (1 + self.num_updates) / (10 + self.num_updates))
            targets = [average[name] for name in self._param_names]
            sources = [_like(params[name].detach(), t) for name, t in zip(self._param_names, targets)]
            torch._foreach_lerp_(targets, sources, 1.0 - rate)
        buffers = dict(model.named_buffers())
        for name, buf in self._buffers.items():
            buf.copy_(buffers[name])
        self.num_updates += 1

    def averaged(self, rate: float) -> dict[str, Tensor]:
        """The full state dict of the EMA at `rate`, for `model.load_state_dict` or saving.

        The tensors are the EMA's own (float32 parameters, buffers as in the model); clone
        them before changing them.
        """
        average = self._averages[self._index(rate)]
        return {
            key: average[self._alias[key]] if key in self._alias else self._buffers[key] for key in self._keys
        }

    def copy_to(self, model: nn.Module, rate: float) -> None:
        """Load the EMA weights at `rate` into `model` (cast to its dtypes)."""
        model.load_state_dict(self.averaged(rate))

    def state_dict(self) -> dict[str, Any]:
        """Rates, averages, buffers and update count; only types that weights_only loading accepts."""
        return {
            "rates": list(self.rates),
            "averages": [dict(average) for average in self._averages],
            "buffers": dict(self._buffers),
            "num_updates": self.num_updates,
        }

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the EMA from `state_dict()`; the rates and names must match this EMA's."""
        rates = tuple(float(r) for r in state["rates"])
        if rates != self.rates:
            raise InvalidInputError(f"state: EMA rates {list(rates)} differ from this EMA's {list(self.rates)}")
        for saved, average in zip(state["averages"], self._averages):
            _copy_matching(average, saved, "averages")
        _copy_matching(self._buffers, state["buffers"], "buffers")
        self.num_updates = int(state["num_updates"])

    def _index(self, rate: float) -> int:
        for index, own in enumerate(self.rates):
            if math.isclose(own, rate, rel_tol=0.0, abs_tol=1e-12):
                return index
        raise InvalidInputError(f"rate: {rate!r} is not one of this EMA's rates {list(self.rates)}")


@torch.no_grad()
def ema_update_(target: nn.Module, source: nn.Module, mu: float) -> None:
    """θ⁻ ← μ·θ⁻ + (1 − μ)·θ in place over all parameters, buffers copied (CD/CT target network).

    μ = 0 makes `target` an exact copy of `source` (iCT/ECT); μ = 1 leaves it unchanged.
    """
    mu = float(mu)
    if not 0.0 <= mu <= 1.0:
        raise InvalidInputError(f"mu: {mu!r} is not allowed; give a rate in [0, 1]")
    target_params = list(target.named_parameters())
    source_params = list(source.named_parameters())
    _check_same_tensors(target_params, source_params, "parameter")
    targets = [t for _, t in target_params]
    sources = [_like(s.detach(), t) for (_, s), t in zip(source_params, targets)]
    torch._foreach_lerp_(targets, sources, 1.0 - mu)
    target_buffers = list(target.named_buffers())
    source_buffers = list(source.named_buffers())
    _check_same_tensors(target_buffers, source_buffers, "buffer")
    for (_, t), (_, s) in zip(target_buffers, source_buffers):
        t.copy_(s)


def _check_rates(rates: Iterable[float]) -> tuple[float, ...]:
    try:
        values = tuple(float(r) for r in rates)
    except (TypeError, ValueError):
        raise InvalidInputError(f"rates: {rates!r} is not allowed; give numbers in [0, 1), e.g. (0.999, 0.9999)") from None
    if not values or len(set(values)) != len(values) or not all(0.0 <= r < 1.0 for r in values):
        raise InvalidInputError(
            f"rates: {rates!r} is not allowed; give one or more distinct numbers in [0, 1), e.g. (0.999, 0.9999)"
        )
    return values


def _like(source: Tensor, target: Tensor) -> Tensor:
    """`source` in the dtype and on the device of `target` (no copy when they already match)."""
    if source.dtype == target.dtype and source.device == target.device:
        return source
    return source.to(device=target.device, dtype=target.dtype)


def _check_same_tensors(target: list[tuple[str, Tensor]], source: list[tuple[str, Tensor]], what: str) -> None:
    if [n for n, _ in target] != [n for n, _ in source]:
        raise InvalidInputError(f"source: its {what} names differ from target's; give two copies of one network")
    for (name, t), (_, s) in zip(target, source):
        if t.shape != s.shape:
            raise InvalidInputError(
                f"source: {what} {name!r} has shape {tuple(s.shape)}, target's has {tuple(t.shape)}"
            )


def _copy_matching(own: dict[str, Tensor], saved: Mapping[str, Tensor], what: str) -> None:
    if set(saved) != set(own):
        missing = sorted(set(own) - set(saved))
        unexpected = sorted(set(saved) - set(own))
        raise InvalidInputError(f"state: EMA {what} do not match the model (missing {missing}, unexpected {unexpected})")
    for name, tensor in own.items():
        if tensor.shape != saved[name].shape:
            raise InvalidInputError(
                f"state: EMA {what} {name!r} has shape {tuple(saved[name].shape)}, the model's has {tuple(tensor.shape)}"
            )
        tensor.copy_(saved[name])
