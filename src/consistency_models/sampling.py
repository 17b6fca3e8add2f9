"""Consistency-model samplers: one-step and multistep (CM paper, Algorithm 1).

Samplers are plain functions with the k-diffusion contract `sample(model, x, sigmas, ...)`:
`model(x, sigma, class_labels)` is a consistency function f (or a denoiser D), `x` is the
starting noise already multiplied by sigmas[0], and `sigmas` lists the noise levels at which
f is evaluated followed by σ_min (where no noise is added any more).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from .errors import InvalidInputError
from .parametrization import RHO, SIGMA_MAX, SIGMA_MIN, karras_sigmas

Generator = torch.Generator | Sequence[torch.Generator] | None


def randn(
    shape: Sequence[int],
    generator: Generator = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise; with a list of generators, sample i is drawn from generator i.

    Noise is drawn on the generator's device and moved to `device`, exactly as diffusers'
    `randn_tensor`, so the same seeds give the same images on either library.
    """
    shape = tuple(shape)
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise InvalidInputError(
                f"generator: got a list of {len(generator)} generators for a batch of {shape[0]}; give one per sample"
            )
        if len(generator) == 1:
            generator = generator[0]
        else:
            parts = [torch.randn((1, *shape[1:]), generator=g, device=g.device, dtype=dtype) for g in generator]
            return torch.cat(parts).to(device)
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device)


def sigmas_from_timesteps(
    timesteps: Sequence[int],
    num_train_timesteps: int,
    sigma_min: float = SIGMA_MIN,
    sigma_max: float = SIGMA_MAX,
    rho: float = RHO,
) -> list[float]:
    """diffusers-style descending grid indices (index 0 = σ_max) → evaluation σs + [σ_min].

    `[22, 0]` on the 40-point grid gives [80, 1.3824, 0.002], like OpenAI's `ts=0,22,39`.
    """
    timesteps = [int(t) for t in timesteps]
    if not timesteps:
        raise InvalidInputError("timesteps: give at least one grid index")
    if any(b >= a for a, b in zip(timesteps, timesteps[1:])):
        raise InvalidInputError(f"timesteps: {timesteps} must be strictly descending (e.g. 22,0)")
    if timesteps[0] >= num_train_timesteps or timesteps[-1] < 0:
        raise InvalidInputError(
            f"timesteps: {timesteps} must be grid indices in [0, {num_train_timesteps - 1}] "
            f"(the scheduler's grid has num_train_timesteps={num_train_timesteps})"
        )
    grid = karras_sigmas(num_train_timesteps, sigma_min, sigma_max, rho)
    return [float(grid[i]) for i in reversed(timesteps)] + [float(sigma_min)]


def timesteps_for_steps(num_inference_steps: int, num_train_timesteps: int) -> list[int]:
    """Evenly spaced descending grid indices, as diffusers' `set_timesteps(num_inference_steps)`."""
    if not 1 <= num_inference_steps <= num_train_timesteps:
        raise InvalidInputError(
            f"num_inference_steps: {num_inference_steps} must be between 1 and num_train_timesteps={num_train_timesteps}"
        )
    ratio = num_train_timesteps // num_inference_steps
    return [i * ratio for i in reversed(range(num_inference_steps))]


def check_sigmas(sigmas: Sequence[float], sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX) -> list[float]:
    """Explicit evaluation σs (e.g. [80, 1.38]) → the same list + [σ_min], after validation."""
    try:
        sigmas = [float(s) for s in sigmas]
    except (TypeError, ValueError):
        raise InvalidInputError(f"sigmas: {sigmas!r} must be numbers") from None
    if not sigmas:
        raise InvalidInputError("sigmas: give at least one noise level")
    if not all(math.isfinite(s) for s in sigmas):
        raise InvalidInputError(f"sigmas: {sigmas} must be finite numbers")
    if any(b >= a for a, b in zip(sigmas, sigmas[1:])):
        raise InvalidInputError(f"sigmas: {sigmas} must be strictly descending (e.g. 80,1.38)")
    if sigmas[0] > sigma_max or sigmas[-1] <= sigma_min:
        raise InvalidInputError(
            f"sigmas: {sigmas} must lie in (sigma_min={sigma_min}, sigma_max={sigma_max}]; "
            "sigma_min is appended automatically"
        )
    return sigmas + [float(sigma_min)]


def resolve_sigmas(
    num_inference_steps: int | None = 1,
    timesteps: Sequence[int] | None = None,
    sigmas: Sequence[float] | None = None,
    num_train_timesteps: int = 40,
    sigma_min: float = SIGMA_MIN,
    sigma_max: float = SIGMA_MAX,
    rho: float = RHO,
) -> list[float]:
    """One σ schedule from exactly one of: explicit σs, grid indices, or a number of steps.

    `sigmas` and `timesteps` override `num_inference_steps`; giving both of them is an error.
    """
    if timesteps is not None and sigmas is not None:
        raise InvalidInputError("timesteps/sigmas: give one of them, not both")
    if sigmas is not None:
        return check_sigmas(sigmas, sigma_min, sigma_max)
    if timesteps is None:
        if num_inference_steps is None:
            raise InvalidInputError("num_inference_steps: give a number of steps, timesteps or sigmas")
        timesteps = timesteps_for_steps(int(num_inference_steps), num_train_timesteps)
    return sigmas_from_timesteps(timesteps, num_train_timesteps, sigma_min, sigma_max, rho)


def renoise_scale(
    sigma_next: float, s_noise: float = 1.0, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX
) -> float:
    """s_noise·√(σ̂² − σ_min²), σ̂ = clamp(σ_next, σ_min, σ_max): z's factor in Algorithm 1, line 5."""
    sigma_hat = min(max(float(sigma_next), sigma_min), sigma_max)
    return s_noise * (sigma_hat**2 - sigma_min**2) ** 0.5


def renoise(
    denoised: torch.Tensor,
    sigma_next: float,
    noise: torch.Tensor,
    s_noise: float = 1.0,
    sigma_min: float = SIGMA_MIN,
    sigma_max: float = SIGMA_MAX,
) -> torch.Tensor:
    """x = x₀ + s_noise·z·√(σ̂² − σ_min²), σ̂ = clamp(σ_next, σ_min, σ_max) (Algorithm 1, line 5)."""
    return denoised + renoise_scale(sigma_next, s_noise, sigma_min, sigma_max) * noise


def sigma_levels(sigmas: Sequence[float], device: torch.device | str | None = None) -> list[torch.Tensor]:
    """The evaluation σs (all but the final σ_min) as 0-d float64 tensors on `device`, made once per
    schedule: the loop then copies nothing from the host, and a compiled model gets one graph for
    every step (a Python float would be baked into the graph, one recompilation per σ)."""
    levels = torch.tensor([float(s) for s in sigmas[:-1]], dtype=torch.float64).to(device)
    return [level.clone() for level in levels.unbind()]


@torch.no_grad()
def sample_consistency(
    model: Callable[..., torch.Tensor],
    x: torch.Tensor,
    sigmas: Sequence[float],
    *,
    class_labels: torch.Tensor | None = None,
    generator: Generator = None,
    s_noise: float = 1.0,
    clip_denoised: bool = True,
    sigma_min: float = SIGMA_MIN,
    sigma_max: float = SIGMA_MAX,
    callback: Callable[[int, float, torch.Tensor], None] | None = None,
    progress: Callable[[int], object] | None = None,
    noise: torch.Tensor | None = None,
    levels: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """One-step (len(sigmas) == 2) or multistep consistency sampling (Algorithm 1).

    The same numbers as OpenAI's `stochastic_iterative_sampler` and diffusers'
    `CMStochasticIterativeScheduler`: every step of a multistep run draws fresh noise (the
    last one scaled by 0), a one-step run draws none. `model(x, sigma, class_labels)` gets σ
    as a 0-d float64 tensor on x's device (as k-diffusion passes tensors). `noise` (steps × x's
    shape) replaces the draws from `generator`, and `levels` (from `sigma_levels`) the σ
    tensors, for a loop that must not touch the host (CUDA graph capture).
    """
    sigmas = [float(s) for s in sigmas]
    if len(sigmas) < 2:
        raise InvalidInputError("sigmas: need at least one evaluation level followed by sigma_min")
    steps = len(sigmas) - 1
    levels = sigma_levels(sigmas, x.device) if levels is None else levels
    for i in range(steps):
        x0 = model(x, levels[i], class_labels)
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
        if steps > 1:
            z = noise[i] if noise is not None else randn(x0.shape, generator, device=x0.device, dtype=x0.dtype)
            x = x0 + renoise_scale(sigmas[i + 1], s_noise, sigma_min, sigma_max) * z
        else:
            x = x0
        if callback is not None:
            callback(i, sigmas[i], x)
        if progress is not None:
            progress(1)
    return x


class CUDAGraphSampler:
    """`sample_consistency` for one fixed batch shape, schedule and model, captured once as a
    single CUDA graph (every step of the multistep loop) and replayed.

    The graph reads its inputs from static buffers: the scaled starting noise, the class labels
    and the step noises, which the caller draws beforehand in the order the loop would
    (`draw_step_noise`), so a replay gives the same images as the eager loop.
    """

    def __init__(
        self,
        model: Callable[..., torch.Tensor],
        x: torch.Tensor,
        sigmas: Sequence[float],
        class_labels: torch.Tensor | None,
        noise: torch.Tensor | None,
        warmup: int = 2,
        **options: float | bool,
    ) -> None:
        if x.device.type != "cuda":
            raise InvalidInputError(f"cuda_graph: needs a CUDA device, the model is on {x.device}")
        self.key = self.key_for(model, x, sigmas, class_labels)
        self.static_x = x.clone()
        self.static_labels = None if class_labels is None else class_labels.clone()
        self.static_noise = None if noise is None else noise.clone()
        # The graph reads the σ tensors at replay: they must live as long as it does.
        self.levels = sigma_levels(sigmas, x.device)

        def run() -> torch.Tensor:
            return sample_consistency(model, self.static_x, sigmas, class_labels=self.static_labels,
                                      noise=self.static_noise, levels=self.levels, **options)

        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):  # warm-up outside the graph: lazy init, autotuning, compilation
            for _ in range(warmup):
                run()
        torch.cuda.current_stream(x.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_out = run()

    @staticmethod
    def key_for(model: Callable, x: torch.Tensor, sigmas: Sequence[float], class_labels: torch.Tensor | None) -> tuple:
        """What a captured graph is valid for."""
        labels = None if class_labels is None else (tuple(class_labels.shape), class_labels.dtype)
        return (id(model), tuple(x.shape), x.dtype, x.stride(), x.device, tuple(float(s) for s in sigmas), labels)

    def __call__(self, x: torch.Tensor, class_labels: torch.Tensor | None, noise: torch.Tensor | None) -> torch.Tensor:
        self.static_x.copy_(x)
        if self.static_labels is not None:
            self.static_labels.copy_(class_labels)
        if self.static_noise is not None:
            self.static_noise.copy_(noise)
        self.graph.replay()
        return self.static_out.clone()


def draw_step_noise(
    shape: Sequence[int], steps: int, generator: Generator, device: torch.device | str | None
) -> torch.Tensor | None:
    """The step noises a multistep `sample_consistency` run draws, drawn in advance (None for one step)."""
    if steps < 2:
        return None
    return torch.stack([randn(shape, generator, device=device) for _ in range(steps)])


def _column(sigma: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """σ (a float or a (B,) tensor) shaped to broadcast against x, in float32."""
    return torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1, *([1] * (x.ndim - 1)))


def euler_step(
    denoiser: Callable[..., torch.Tensor],
    x: torch.Tensor,
    sigma: float | torch.Tensor,
    sigma_next: float | torch.Tensor,
    class_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """One Euler step of the probability-flow ODE dx/dσ = (x − D(x, σ))/σ (EDM eq. 3)."""
    s, s_next = _column(sigma, x), _column(sigma_next, x)
    return x + (s_next - s) * (x - denoiser(x, sigma, class_labels)) / s


def heun_step(
    denoiser: Callable[..., torch.Tensor],
    x: torch.Tensor,
    sigma: float | torch.Tensor,
    sigma_next: float | torch.Tensor,
    class_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """One Heun (2nd-order) step of the probability-flow ODE from σ to σ_next > 0 (EDM Algorithm 1).

    `sigma` and `sigma_next` may be per-sample tensors of shape (B,).
    """
    s, s_next = _column(sigma, x), _column(sigma_next, x)
    d = (x - denoiser(x, sigma, class_labels)) / s
    x_euler = x + (s_next - s) * d
    d_next = (x_euler - denoiser(x_euler, sigma_next, class_labels)) / s_next
    return x + (s_next - s) * (d + d_next) / 2


@torch.no_grad()
def sample_heun(
    denoiser: Callable[..., torch.Tensor],
    x: torch.Tensor,
    sigmas: Sequence[float],
    *,
    class_labels: torch.Tensor | None = None,
    callback: Callable[[int, float, torch.Tensor], None] | None = None,
    progress: Callable[[int], object] | None = None,
) -> torch.Tensor:
    """Deterministic EDM sampler (Karras et al. 2022, Algorithm 1) for a diffusion denoiser.

    `sigmas` is the descending grid ending at 0: Heun steps between positive levels, an Euler
    step into σ = 0. N grid points cost 2N − 1 denoiser evaluations.
    """
    sigmas = [float(s) for s in sigmas]
    for i in range(len(sigmas) - 1):
        if sigmas[i + 1] > 0:
            x = heun_step(denoiser, x, sigmas[i], sigmas[i + 1], class_labels)
        else:
            x = euler_step(denoiser, x, sigmas[i], sigmas[i + 1], class_labels)
        if callback is not None:
            callback(i, sigmas[i], x)
        if progress is not None:
            progress(1)
    return x
