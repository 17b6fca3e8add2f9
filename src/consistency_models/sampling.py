"""Samplers: consistency sampling (CM paper, Algorithm 1) and the EDM Heun sampler, and which
one a model of each kind samples with (its `Sampler`, named in `kinds/`).

Samplers are plain functions with the k-diffusion contract `sample(model, x, sigmas, ...)`:
`model(x, sigma, class_labels)` is a consistency function f (or a denoiser D), `x` is the
starting noise already multiplied by sigmas[0], and `sigmas` lists the noise levels at which
f is evaluated followed by σ_min (where no noise is added any more). New noise comes from
`noise_sampler(sigma, sigma_next)` when one is given (k-diffusion's contract), else from
`generator`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .errors import InvalidInputError, is_integer
from .parametrization import SIGMA_MAX, SIGMA_MIN, append_dims, karras_sigmas, noise_conditioning
from .schedule import NoiseLevels, SchedulerConfig, check_sigmas
from .meanflow import check_flow_times, default_flow_times, step as meanflow_step
from .trigflow import check_times, default_times, sigma_from_t, t_from_sigma

Generator = torch.Generator | Sequence[torch.Generator] | None


def check_generator(generator: object) -> None:
    """None, a torch.Generator or a list of them; anything else (a seed such as 0) is one line."""
    many = generator if isinstance(generator, (list, tuple)) else [generator]
    if generator is not None and not all(isinstance(g, torch.Generator) for g in many):
        raise InvalidInputError(f"generator: {generator!r} is not a torch.Generator (or a list of them); for a seed "
                                "give torch.Generator().manual_seed(seed)")


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
    check_generator(generator)
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


def renoise_scale(
    sigma_next: float | torch.Tensor, s_noise: float = 1.0, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX
) -> float | torch.Tensor:
    """s_noise·√(σ̂² − σ_min²), σ̂ = clamp(σ_next, σ_min, σ_max): z's factor in Algorithm 1, line 5.

    A 0-d float64 tensor gives a tensor on its device (no copy to the host), a number a number."""
    if torch.is_tensor(sigma_next):
        sigma_hat = sigma_next.clamp(sigma_min, sigma_max)
    else:
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


def sigma_levels(sigmas: Sequence[float | torch.Tensor], device: torch.device | str | None = None) -> list[torch.Tensor]:
    """Every σ as a 0-d float64 tensor on `device`, made once per schedule: the loop then copies
    nothing from the host, and a compiled model gets one graph for every step (a Python float
    would be baked into the graph, one recompilation per σ). A list of tensors is used as it is."""
    if all(torch.is_tensor(s) for s in sigmas):
        return list(sigmas)
    levels = torch.tensor([float(s) for s in sigmas], dtype=torch.float64).to(device)
    return [level.clone() for level in levels.unbind()]


NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def step_noise(like: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor, generator: Generator,
               noise_sampler: NoiseSampler | None) -> torch.Tensor:
    """The fresh noise of one step: `noise_sampler(σ, σ_next)` when given, else drawn from `generator`."""
    if noise_sampler is not None:
        return noise_sampler(sigma, sigma_next)
    return randn(like.shape, generator, device=like.device, dtype=like.dtype)


Level = float | torch.Tensor   # a noise level: a number, a 0-d tensor or one per sample (B,)


def report_step(i: int, sigma: Level, x: torch.Tensor, callback: Callable[[int, float, torch.Tensor], None] | None,
                progress: Callable[[int], object] | None) -> None:
    """After step i of a sampling loop: the user's callback(i, σ_i, x), then one tick of the progress bar.
    σ is read back as a float only for a callback: a CUDA graph captures the loop without one, and
    inside a capture no value may be read back to the host."""
    if callback is not None:
        callback(i, float(sigma), x)
    if progress is not None:
        progress(1)


@dataclass(frozen=True)
class Renoising:
    """How consistency sampling puts noise back before the next step: x = x₀ + scale(σ_next)·z —
    here Algorithm 1's (Song et al. 2023): scale = s_noise·√(σ̂² − σ_min²), σ̂ = clamp(σ_next,
    σ_min, σ_max), with noise drawn only when there is more than one step."""

    s_noise: float = 1.0
    sigma_min: float = SIGMA_MIN
    sigma_max: float = SIGMA_MAX
    last_level = "sigma_min"              # what `sigmas` ends with (for the error message)

    def draws(self, steps: int) -> bool:
        """Whether a run of `steps` steps draws noise after each step."""
        return steps > 1

    def __call__(self, x0: torch.Tensor, sigma_next: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return x0 + renoise_scale(sigma_next, self.s_noise, self.sigma_min, self.sigma_max) * z


@dataclass(frozen=True)
class TrigFlowRenoising(Renoising):
    """sCM's (Lu & Song 2024): scale = σ_next, noise drawn at every step (diffusers'
    `SCMScheduler.step` draws it at the last one, σ = 0, too, and adds none)."""

    last_level = "0"

    def draws(self, steps: int) -> bool:
        return True

    def __call__(self, x0: torch.Tensor, sigma_next: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        # At σ_next = 0 this adds 0·z: x0 exactly, without reading σ back to the host.
        return x0 + sigma_next.to(x0.dtype) * z


@torch.no_grad()
def sample_consistency(
    model: Callable[..., torch.Tensor],
    x: torch.Tensor,
    sigmas: Sequence[float | torch.Tensor],
    *,
    class_labels: torch.Tensor | None = None,
    generator: Generator = None,
    s_noise: float = 1.0,
    clip_denoised: bool = True,
    sigma_min: float = SIGMA_MIN,
    sigma_max: float = SIGMA_MAX,
    callback: Callable[[int, float, torch.Tensor], None] | None = None,
    progress: Callable[[int], object] | None = None,
    noise_sampler: NoiseSampler | None = None,
    renoising: Renoising | None = None,
) -> torch.Tensor:
    """One-step (len(sigmas) == 2) or multistep consistency sampling (Algorithm 1).

    The same numbers as OpenAI's `stochastic_iterative_sampler` and diffusers'
    `CMStochasticIterativeScheduler`: every step of a multistep run draws fresh noise (the
    last one scaled by 0), a one-step run draws none. `model(x, sigma, class_labels)` gets σ
    as a 0-d float64 tensor on x's device (as k-diffusion passes tensors); `sigmas` may already
    be such tensors (`sigma_levels`), which are then used as they are. The noise of step i is
    `noise_sampler(sigma_i, sigma_next)` when given, else drawn from `generator`. `renoising`
    replaces Algorithm 1's re-noising (built from s_noise, sigma_min, sigma_max) — sCM's, see
    `sample_trigflow`: the one loop of every consistency model.
    """
    if renoising is None:
        renoising = Renoising(s_noise, sigma_min, sigma_max)
    if len(sigmas) < 2:
        raise InvalidInputError(f"sigmas: need at least one evaluation level followed by {renoising.last_level}")
    levels = sigma_levels(sigmas, x.device)
    steps = len(levels) - 1
    for i in range(steps):
        x0 = model(x, levels[i], class_labels)
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
        if renoising.draws(steps):
            x = renoising(x0, levels[i + 1], step_noise(x0, levels[i], levels[i + 1], generator, noise_sampler))
        else:
            x = x0
        report_step(i, levels[i], x, callback, progress)
    return x


def euler_step(denoiser: Callable[..., torch.Tensor], x: torch.Tensor, sigma: Level, sigma_next: Level,
               class_labels: torch.Tensor | None = None) -> torch.Tensor:
    """One Euler step of the probability-flow ODE dx/dσ = (x − D(x, σ))/σ (EDM eq. 3)."""
    s, s_next = append_dims(sigma, x), append_dims(sigma_next, x)
    return x + (s_next - s) * (x - denoiser(x, sigma, class_labels)) / s


def heun_step(denoiser: Callable[..., torch.Tensor], x: torch.Tensor, sigma: Level, sigma_next: Level,
              class_labels: torch.Tensor | None = None) -> torch.Tensor:
    """One Heun (2nd-order) step of the probability-flow ODE from σ to σ_next > 0 (EDM Algorithm 1).

    `sigma` and `sigma_next` may be per-sample tensors of shape (B,).
    """
    s, s_next = append_dims(sigma, x), append_dims(sigma_next, x)
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
        report_step(i, sigmas[i], x, callback, progress)
    return x


def sample_trigflow(
    model: Callable[..., torch.Tensor],
    x: torch.Tensor,
    sigmas: Sequence[float | torch.Tensor],
    *,
    clip_denoised: bool = False,
    **options,
) -> torch.Tensor:
    """sCM sampling (Lu & Song 2024, Algorithm 1 of its appendix), written in σ = σ_d·tan t.

    TrigFlow's x_t = cos t·x₀ + sin t·σ_d·z is x_σ = x_t / cos t = x₀ + σ·z, and its consistency
    function f(x_t, t) = cos t·x_t − sin t·σ_d·F is the EDM-preconditioned D(x_σ, σ) (see
    `trigflow`). So with `model` = D: x starts as σ_d·z / cos t₀ = √(σ₀² + σ_d²)·z, each step
    takes x₀ = D(x, σ_i) and re-noises x = x₀ + σ_{i+1}·z, and `sigmas` ends with 0. Fresh noise
    is drawn at every step, the last one (σ = 0) included, as diffusers' `SCMScheduler.step`
    draws it, so a generator gives the same images in both. `options`: those of
    `sample_consistency` (class_labels, generator, callback, progress, noise_sampler), whose loop
    this is with sCM's re-noising.
    """
    return sample_consistency(model, x, sigmas, clip_denoised=clip_denoised, renoising=TrigFlowRenoising(), **options)


@torch.no_grad()
def sample_meanflow(
    model: Callable[..., torch.Tensor],
    x: torch.Tensor,
    times: Sequence[float],
    *,
    class_labels: torch.Tensor | None = None,
    callback: Callable[[int, float, torch.Tensor], None] | None = None,
    progress: Callable[[int], object] | None = None,
) -> torch.Tensor:
    """MeanFlow sampling (Geng et al. 2025, Algorithm 2 and eq. 12): from x = z_1 = ε, one jump
    z_r = z_t − (t − r)·u(z_t, r, t) between each pair of neighbouring `times` (descending flow
    times ending with 0); `model(z, r, t, class_labels)` is the average velocity u. Deterministic."""
    times = [float(t) for t in times]
    if len(times) < 2 or times[-1] != 0.0:
        raise InvalidInputError(f"timesteps: {times} must list at least one flow time followed by 0")
    for i in range(len(times) - 1):
        x = meanflow_step(model, x, times[i + 1], times[i], class_labels)
        report_step(i, times[i], x, callback, progress)
    return x


# -- which sampler a model uses ----------------------------------------------------------------
def consistency_schedule(levels: NoiseLevels, config: SchedulerConfig) -> list[float]:
    """Algorithm 1's σs: default one step at σ_max; the last level is σ_min."""
    return levels.resolve(config, default_steps=1)


def heun_schedule(levels: NoiseLevels, config: SchedulerConfig) -> list[float]:
    """EDM's σs: by default the N-point Karras grid (N = 18, 2N − 1 evaluations) ending at 0; given
    grid indices or σs, those levels, and 0 instead of σ_min (the ODE runs down to σ = 0)."""
    if levels.timesteps is None and levels.sigmas is None:
        steps = 18 if levels.steps is None else levels.steps
        if not is_integer(steps) or steps < 2:
            raise InvalidInputError(f"num_inference_steps: {steps!r} must be an integer of at least 2 for a diffusion "
                                    "model (Heun's method on a Karras grid)")
        steps = int(steps)
        return karras_sigmas(steps, config.sigma_min, config.sigma_max, config.rho).tolist() + [0.0]
    schedule = levels.resolve(config)
    schedule[-1] = 0.0
    return schedule


def trigflow_schedule(levels: NoiseLevels, config: SchedulerConfig) -> list[float]:
    """sCM's σs, ending at 0: `timesteps` are TrigFlow times t (floats, σ = σ_d·tan t, as diffusers'
    `SCMScheduler`); by default one step at t_max = arctan(σ_max/σ_d), two at [t_max, 1.1]; or
    explicit σs."""
    t_max = t_from_sigma(config.sigma_max, config.sigma_data)
    if levels.sigmas is not None:
        return check_sigmas(levels.sigmas, 0.0, config.sigma_max)[:-1] + [0.0]
    if levels.timesteps is not None:
        times = check_times(list(levels.timesteps))
    else:
        times = default_times(1 if levels.steps is None else levels.steps, t_max)
    return [float(sigma_from_t(t, config.sigma_data)) for t in times] + [0.0]


def meanflow_schedule(levels: NoiseLevels, config: SchedulerConfig) -> list[float]:
    """MeanFlow's flow times, ending at 0: given `timesteps` (floats in (0, 1], t = 1 pure noise),
    else `steps` evenly spaced from 1 (default one step: [1, 0]). It has no σ: `sigmas` is refused."""
    if levels.sigmas is not None:
        raise InvalidInputError("sigmas: a MeanFlow model has no noise levels σ; give its flow times instead, "
                                "e.g. --timesteps 1,0.5 (timesteps=[1.0, 0.5])")
    if levels.timesteps is not None:
        return check_flow_times(levels.timesteps) + [0.0]
    return default_flow_times(1 if levels.steps is None else levels.steps) + [0.0]


def run_meanflow(model: Callable[..., torch.Tensor], x: torch.Tensor, times: Sequence[float],
                 config: SchedulerConfig, *, generator: Generator = None, noise_sampler: NoiseSampler | None = None,
                 **options) -> torch.Tensor:
    """`sample_meanflow` (deterministic: no noise), clipped to [−1, 1] when the model clips."""
    x = sample_meanflow(model, x, times, **options)
    return x.clamp(-1, 1) if config.clip_denoised else x


def run_trigflow(model: Callable[..., torch.Tensor], x: torch.Tensor, sigmas: Sequence[float],
                 config: SchedulerConfig, **options) -> torch.Tensor:
    """`sample_trigflow` with the model's clipping."""
    return sample_trigflow(model, x, sigmas, clip_denoised=config.clip_denoised, **options)


def run_consistency(model: Callable[..., torch.Tensor], x: torch.Tensor, sigmas: Sequence[float],
                    config: SchedulerConfig, **options) -> torch.Tensor:
    """`sample_consistency` with the model's settings (re-noising scale, clipping, σ range)."""
    return sample_consistency(model, x, sigmas, s_noise=config.s_noise, clip_denoised=config.clip_denoised,
                              sigma_min=config.sigma_min, sigma_max=config.sigma_max, **options)


def run_heun(model: Callable[..., torch.Tensor], x: torch.Tensor, sigmas: Sequence[float],
             config: SchedulerConfig, *, generator: Generator = None, noise_sampler: NoiseSampler | None = None,
             **options) -> torch.Tensor:
    """`sample_heun` (deterministic: no noise), clipped to [−1, 1] when the model clips."""
    x = sample_heun(model, x, sigmas, **options)
    return x.clamp(-1, 1) if config.clip_denoised else x


@dataclass(frozen=True)
class Sampler:
    """How a model of one parametrization samples: its σ schedule and its loop."""

    name: str
    schedule: Callable[[NoiseLevels, SchedulerConfig], list[float]]
    run: Callable[..., torch.Tensor]  # run(model, x, sigmas, config, *, class_labels, generator, callback, progress)
    fast: bool = False                # the pipeline's fast paths (compile, CUDA graphs) apply
    # the starting noise's scale: σ₀ (Algorithm 1, EDM), or √(σ₀² + σ_d²) for TrigFlow's x = σ_d·z at t₀
    initial_scale: Callable[[Sequence[float], SchedulerConfig], float] = lambda sigmas, config: sigmas[0]
    # the `timestep` a user's callback is given for σ: c_noise(σ) (diffusers' CM scheduler), or TrigFlow's t
    timestep: Callable[[float, SchedulerConfig], float] = \
        lambda sigma, config: float(noise_conditioning(torch.tensor(max(sigma, 1e-44), dtype=torch.float64)))
    edit_grid: int = 40               # editing's default σs: this many Karras points (OpenAI's editing runs)

    def edit_schedule(self, levels: NoiseLevels, config: SchedulerConfig) -> list[float]:
        """The σs zero-shot editing (CM paper, Algorithm 4) runs this sampler's loop at: by default
        every point of the `edit_grid`-point Karras grid but the last, ended as this sampler's
        schedules end (σ_min for Algorithm 1, 0 for sCM and EDM); given levels, its own schedule."""
        if levels.is_default:
            grid = karras_sigmas(self.edit_grid, config.sigma_min, config.sigma_max, config.rho)
            levels = NoiseLevels(sigmas=grid[:-1].tolist())
        return self.schedule(levels, config)


TRIGFLOW_SAMPLER = Sampler("sCM sampling (TrigFlow)", trigflow_schedule, run_trigflow,
                           initial_scale=lambda sigmas, config: (sigmas[0] ** 2 + config.sigma_data ** 2) ** 0.5,
                           timestep=lambda sigma, config: t_from_sigma(sigma, config.sigma_data))

CONSISTENCY_SAMPLER = Sampler("consistency sampling (Algorithm 1)", consistency_schedule, run_consistency, fast=True)
HEUN_SAMPLER = Sampler("EDM Heun sampler", heun_schedule, run_heun)
MEANFLOW_SAMPLER = Sampler("MeanFlow sampling", meanflow_schedule, run_meanflow,
                           initial_scale=lambda times, config: 1.0,   # z_1 = ε
                           timestep=lambda t, config: t)              # the flow time itself


__all__ = [
    "CONSISTENCY_SAMPLER", "HEUN_SAMPLER", "MEANFLOW_SAMPLER", "NoiseSampler", "Renoising", "Sampler", "TRIGFLOW_SAMPLER",
    "TrigFlowRenoising", "euler_step", "heun_step", "randn", "renoise", "renoise_scale", "sample_consistency",
    "sample_heun", "sample_meanflow", "sample_trigflow", "sigma_levels",
]
