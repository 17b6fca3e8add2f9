"""TrigFlow (Lu & Song 2024, "Simplifying, Stabilizing, and Scaling Continuous-Time Consistency
Models", arXiv 2410.11081, §2–3): the time variable of continuous-time consistency models.

    x_t = cos t·x₀ + sin t·z,  z ~ N(0, σ_d² I),  t ∈ [0, π/2]
    f_θ(x_t, t) = cos t·x_t − sin t·σ_d·F_θ(x_t/σ_d, t)              (the consistency function)
    dx_t/dt = σ_d·F_θ(x_t/σ_d, t)                                      (the diffusion model's velocity)

EDM's σ is σ = σ_d·tan t and x_σ = x_t / cos t. The network's time input is one of two:

- "t" (parametrization "trigflow"): the paper's c_noise(t) = t and F_θ = the network's output.
  sCT trains this one. Its time tangent in the JVP, cos t·sin t·σ_d ≤ 0.25, is small.
- "log_sigma" (parametrization "trigflow_edm"): an EDM-preconditioned network as it is. EDM's
  c_in·x_σ = x_t/σ_d, c_skip·x_σ = cos t·x_t and c_out = σ_d·sin t make D(x_σ, σ) the function
  above with F_θ = −F_edm and time input c_noise = 250·ln(σ_d·tan t): EDM teachers (the shipped
  `digits-teacher`, converted `edm_*`) give sCD its velocity, and an sCD student started from a
  teacher keeps this input. Its time tangent is the constant 250·σ_d = 125 (cos t·sin t cancels
  d ln tan t/dt), which meets the network's sinusoidal embedding (frequencies up to 1 per unit)
  and makes dF/dt large: measured on the 2-D toy, sCT with this input collapses (1-step on-mode
  1 %) where the input t reaches 87 % with the same settings — the paper's reason for c_noise = t
  (EDM's own ¼·ln σ reaches 50 %, 1000·t 0 %); sCD started from an EDM teacher collapses too
  (0 %), so sCD here starts a fresh student with input t by default (89 %).

The pipeline samples both in σ-space (`parametrization.TrigFlowFunction` and `Denoiser`,
`sampling.sample_trigflow`); `TrigFlow` below is the same function in t, which training uses.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .errors import InvalidInputError, is_integer
from .parametrization import SIGMA_DATA, SIGMA_MAX, append_dims, noise_conditioning

HALF_PI = math.pi / 2
T_MAX = math.atan(SIGMA_MAX / SIGMA_DATA)  # ≈ 1.56454: EDM's σ_max = 80 (diffusers' SCMScheduler uses π/2)
T_MIDDLE = 1.1                              # the paper's two-step middle time (diffusers' default: 1.3)


def sigma_from_t(t: float | torch.Tensor, sigma_data: float = SIGMA_DATA) -> float | torch.Tensor:
    """σ = σ_d·tan t."""
    return sigma_data * (torch.tan(t) if torch.is_tensor(t) else math.tan(t))


def t_from_sigma(sigma: float | torch.Tensor, sigma_data: float = SIGMA_DATA) -> float | torch.Tensor:
    """t = arctan(σ/σ_d)."""
    return torch.atan(sigma / sigma_data) if torch.is_tensor(sigma) else math.atan(sigma / sigma_data)


def check_times(times: list[float]) -> list[float]:
    """Descending TrigFlow times in (0, π/2), as floats (a one-line error otherwise). Times past
    t_max = arctan(σ_max/σ_d) are allowed (diffusers' float32 t_max lies 6e-8 above it)."""
    values = [float(t) for t in times]
    if not values:
        raise InvalidInputError("timesteps: give at least one TrigFlow time t in (0, π/2)")
    if any(not math.isfinite(t) or not 0 < t < HALF_PI for t in values):
        raise InvalidInputError(f"timesteps: {values} must be TrigFlow times t with 0 < t < π/2 "
                                f"(σ = σ_d·tan t; the model's t_max is {T_MAX:.6g} for σ_max = 80)")
    if any(b >= a for a, b in zip(values, values[1:])):
        raise InvalidInputError(f"timesteps: {values} must be strictly descending (e.g. 1.56454,1.1)")
    return values


def default_times(steps: int, t_max: float = T_MAX, middle: float = T_MIDDLE) -> list[float]:
    """The evaluation times of `steps`-step sampling: [t_max] for one step, [t_max, 1.1] for two
    (the paper's choice), else `steps` times evenly spaced from t_max down (as diffusers'
    `SCMScheduler.set_timesteps` without an intermediate time)."""
    if not is_integer(steps) or not 1 <= steps <= 1000:
        raise InvalidInputError(f"num_inference_steps: {steps!r} must be an integer from 1 to 1000")
    steps = int(steps)
    if steps == 2 and middle < t_max:
        return [t_max, middle]
    return [t_max * (steps - i) / steps for i in range(steps)]


TIME_INPUTS = ("t", "log_sigma")  # the network's time input (kinds/trigflow.py: one model kind each)


class TrigFlow(nn.Module):
    """A network in TrigFlow time: F_θ(x_t/σ_d, t), the velocity σ_d·F_θ and f_θ(x_t, t).

    `network(x, c_noise, class_labels)` is a raw network as the σ-space wrappers take it; t is a
    tensor of shape () or (B,), kept in float64 for the trigonometry, as σ is elsewhere.
    """

    def __init__(self, network: nn.Module, sigma_data: float = SIGMA_DATA, time_input: str = "t") -> None:
        super().__init__()
        if time_input not in TIME_INPUTS:
            raise InvalidInputError(f"time_input: {time_input!r} is not one of {', '.join(TIME_INPUTS)}")
        self.network = network
        self.sigma_data = float(sigma_data)
        self.time_input = time_input
        self.sign = 1.0 if time_input == "t" else -1.0  # an EDM network's F_edm is −F_θ

    def time_conditioning(self, t: torch.Tensor) -> torch.Tensor:
        """The network's time input: t itself, or c_noise(σ_d·tan t) = 250·ln(σ_d·tan t)."""
        t = t.to(torch.float64)
        return t if self.time_input == "t" else noise_conditioning(sigma_from_t(t, self.sigma_data))

    def F(self, x_t: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """F_θ(x_t/σ_d, t): network(x_t/σ_d, t), or −network(x_t/σ_d, 250·ln(σ_d·tan t)) for an EDM network."""
        return self.F_scaled((x_t / self.sigma_data).to(x_t.dtype), t, class_labels)

    def F_scaled(self, u: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """F_θ(u, t) of the scaled input u = x_t/σ_d: the function sCM takes the JVP of. The time
        input is computed in float64 and given in the network's dtype (float64 for a float64
        copy), so a JVP or a finite difference in t reaches the network."""
        t = torch.as_tensor(t, device=u.device)
        t = (t if t.dtype == torch.float64 else t.double()).expand(u.shape[0])
        dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
        out = self.network(u, self.time_conditioning(t).to(dtype), class_labels)
        return self.sign * (out if out.dtype == torch.float64 else out.float())

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """dx_t/dt = σ_d·F_θ(x_t/σ_d, t): what diffusers' `SCMScheduler.step` takes as `model_output`."""
        return self.sigma_data * self.F(x_t, t, class_labels)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """f_θ(x_t, t) = cos t·x_t − sin t·σ_d·F_θ(x_t/σ_d, t)."""
        t = torch.as_tensor(t, dtype=torch.float64, device=x_t.device).expand(x_t.shape[0])
        cos, sin = append_dims(torch.cos(t), x_t), append_dims(torch.sin(t), x_t)
        return (cos * x_t.double() - sin * self.velocity(x_t, t, class_labels).double()).float()


__all__ = ["HALF_PI", "TIME_INPUTS", "T_MAX", "T_MIDDLE", "TrigFlow", "check_times", "default_times",
           "sigma_from_t", "t_from_sigma"]
