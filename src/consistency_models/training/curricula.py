"""Curricula: pure functions of the training step k (and of random draws) that set N, μ and σ.

- CT (Song et al. 2023, Algorithm 3 and Appendix C): N(k) = ⌈√(k/K·((s1+1)² − s0²) + s0²) − 1⌉ + 1,
  μ(k) = exp(s0·ln μ0 / N(k)) in the paper; OpenAI's `create_ema_and_scales_fn` uses N(k) − 1
  in the denominator (and clamps the inner count to ≥ 1). The OpenAI form is the default.
- iCT (Song & Dhariwal 2023, arXiv 2310.14189, Section 3): N(k) = min(s0·2^⌊k/K′⌋, s1) + 1 with
  K′ = ⌊K/(log2⌊s1/s0⌋ + 1)⌋; σ_i drawn from the discretised lognormal
  p(σ_i) ∝ erf((ln σ_{i+1} − P_mean)/(√2 P_std)) − erf((ln σ_i − P_mean)/(√2 P_std)).
- ECT (Geng et al. 2024, arXiv 2406.14548): t ~ lognormal(P_mean, P_std),
  r = max(0, t·(1 − q^−(stage+1)·(1 + k·sigmoid(−b·t)))).
- EDM (Karras et al. 2022): σ ~ lognormal(P_mean −1.2, P_std 1.2).
"""

from __future__ import annotations

import math

import torch

from ..parametrization import RHO, SIGMA_MAX, SIGMA_MIN, karras_sigmas


def ct_curriculum(
    k: int, total_steps: int, s0: int = 2, s1: int = 150, mu0: float = 0.9, mu_form: str = "openai"
) -> tuple[int, float]:
    """(N(k), μ(k)) of consistency training; `mu_form` "openai" (default) or "paper"."""
    if mu_form not in ("openai", "paper"):
        raise ValueError(f"mu_form: {mu_form!r} is not 'openai' or 'paper'")
    inner = math.ceil(math.sqrt(k / total_steps * ((s1 + 1) ** 2 - s0**2) + s0**2) - 1)
    inner = max(inner, 1)
    n = inner + 1
    denominator = inner if mu_form == "openai" else n
    mu = math.exp(s0 * math.log(mu0) / denominator) if mu0 > 0 else 0.0   # μ₀ = 0: no EMA target (its limit)
    return n, mu


def ict_curriculum(k: int, total_steps: int, s0: int = 10, s1: int = 1280) -> int:
    """N(k) of improved CT: the number of grid points doubles every K′ steps, capped at s1 + 1."""
    k_prime = math.floor(total_steps / (math.log2(math.floor(s1 / s0)) + 1))
    k_prime = max(k_prime, 1)
    return min(s0 * 2 ** (k // k_prime), s1) + 1


def ascending_grid(
    num: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = RHO
) -> torch.Tensor:
    """The N-point Karras grid in ascending order (σ_1 = σ_min, ..., σ_N = σ_max), float64."""
    return karras_sigmas(num, sigma_min, sigma_max, rho).flip(0)


def ict_index_probabilities(sigmas: torch.Tensor, p_mean: float = -1.1, p_std: float = 2.0) -> torch.Tensor:
    """p(i) for the pairs (σ_i, σ_{i+1}) of an ascending grid, from the lognormal (iCT eq. 7)."""
    log_sigma = torch.log(sigmas.to(torch.float64))
    cdf = torch.erf((log_sigma - p_mean) / (math.sqrt(2) * p_std))
    weights = cdf[1:] - cdf[:-1]
    return weights / weights.sum()


def lognormal_sigmas(normal: torch.Tensor, p_mean: float, p_std: float) -> torch.Tensor:
    """σ = exp(P_mean + P_std·n) for standard normal draws n."""
    return torch.exp(p_mean + p_std * normal)


def ect_stage(k: int, total_steps: int, num_stages: int = 8) -> int:
    """The ECT stage at step k: raised every K/num_stages steps, 0-based."""
    every = max(total_steps // num_stages, 1)
    return min(k // every, num_stages - 1)


def ect_r(t: torch.Tensor, stage: int, q: float = 2.0, k: float = 8.0, b: float = 1.0) -> torch.Tensor:
    """r(t) = max(0, t·(1 − q^−(stage+1)·(1 + k·sigmoid(−b·t)))): the target's noise level."""
    ratio = 1 - q ** -(stage + 1) * (1 + k * torch.sigmoid(-b * t))
    return (t * ratio).clamp(min=0)
