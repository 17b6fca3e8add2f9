"""MeanFlow (Geng, Deng, Bai, Kolter, He 2025, "Mean Flows for One-step Generative Modeling",
arXiv 2505.13447): a network for the *average* velocity between two times of a flow.

    z_t = (1 − t)·x + t·ε,  ε ~ N(0, I),  t ∈ [0, 1]          (the flow path; t = 1 is pure noise)
    v(z_t, t) = E[ε − x | z_t]                                 (the flow's instantaneous velocity)
    u(z_t, r, t) = 1/(t − r)·∫_r^t v(z_τ, τ) dτ,  u(z, t, t) = v(z, t)     (its average velocity, eq. 3)
    u = v − (t − r)·du/dt,  du/dt = v·∂_z u + ∂_t u            (the MeanFlow identity, eq. 6)
    z_r = z_t − (t − r)·u(z_t, r, t)                           (sampling; one step: x = ε − u(ε, 0, 1))

The network is given (t, t − r) as its two time inputs (the paper's choice, its Table 1c) and
no other scaling: u_θ(z, r, t) = network(z, [t, t − r], class_labels), data in [−1, 1].
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from .errors import InvalidInputError, is_integer
from .parametrization import SIGMA_DATA, SIGMA_MIN

TIME_INPUTS = 2   # the network's time inputs: t and t − r


def check_flow_times(times: Sequence[float]) -> list[float]:
    """Descending flow times t in (0, 1], as floats (a one-line error otherwise)."""
    values = [float(t) for t in times]
    if not values:
        raise InvalidInputError("timesteps: give at least one flow time t in (0, 1]")
    if any(not math.isfinite(t) or not 0 < t <= 1 for t in values):
        raise InvalidInputError(f"timesteps: {values} must be MeanFlow times t with 0 < t <= 1 (t = 1 is pure "
                                "noise), e.g. 1,0.5")
    if any(b >= a for a, b in zip(values, values[1:])):
        raise InvalidInputError(f"timesteps: {values} must be strictly descending (e.g. 1,0.5)")
    return values


def default_flow_times(steps: int) -> list[float]:
    """The times of `steps`-step sampling: 1, (n−1)/n, …, 1/n (the paper's 2-step: 1, 0.5)."""
    if not is_integer(steps) or not 1 <= steps <= 1000:
        raise InvalidInputError(f"num_inference_steps: {steps!r} must be an integer from 1 to 1000")
    steps = int(steps)
    return [(steps - i) / steps for i in range(steps)]


class AverageVelocity(nn.Module):
    """u_θ(z, r, t) = network(z, [t, t − r], class_labels), computed in float32 (float64 for a
    float64 network, the finite-difference references). `sigma_data` and `sigma_min` are the
    σ-space wrappers' arguments, unused: a MeanFlow model has no σ."""

    def __init__(self, network: nn.Module, sigma_data: float = SIGMA_DATA, sigma_min: float = SIGMA_MIN) -> None:
        super().__init__()
        self.network = network

    def forward(self, z: torch.Tensor, r: torch.Tensor | float, t: torch.Tensor | float,
                class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """r, t: numbers, 0-d tensors or one per sample (B,)."""
        dtype = torch.float64 if z.dtype == torch.float64 else torch.float32
        r, t = (torch.as_tensor(v, device=z.device).to(dtype).expand(z.shape[0]) for v in (r, t))
        times = torch.stack([t, t - r], dim=1)
        network_dtype = next(self.network.parameters()).dtype
        out = self.network(z.to(network_dtype), times, class_labels)
        return out.to(dtype)


def step(model: AverageVelocity, z: torch.Tensor, r: torch.Tensor | float, t: torch.Tensor | float,
         class_labels: torch.Tensor | None = None) -> torch.Tensor:
    """z_r = z_t − (t − r)·u(z_t, r, t) (eq. 12)."""
    r, t = (torch.as_tensor(v, dtype=torch.float32, device=z.device) for v in (r, t))
    gap = (t - r).reshape(-1, *([1] * (z.ndim - 1))) if (t - r).ndim else (t - r)
    return z.float() - gap * model(z, r, t, class_labels).float()


__all__ = ["AverageVelocity", "TIME_INPUTS", "check_flow_times", "default_flow_times", "step"]
