"""A drop-in for diffusers' `CMStochasticIterativeScheduler`: same interface, same numbers.

A thin adapter over `parametrization` and `sampling`, so that an existing diffusers-style
loop runs unchanged:

    scheduler.set_timesteps(timesteps=[22, 0])
    for t in scheduler.timesteps:
        model_output = unet(scheduler.scale_model_input(sample, t), t, class_labels)
        sample = scheduler.step(model_output, t, sample, generator=g).prev_sample
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .errors import InvalidInputError, about, is_integer
from .io.pipeline_folder import SCHEDULER_CONFIG as CONFIG_NAME
from .io.hub import DOWNLOAD_OPTIONS, is_embedded, resolve_model_path
from .io.pipeline_folder import read_scheduler_config, write_scheduler_config
from .outputs import BaseOutput
from .parametrization import (
    consistency_scalings,
    input_scaling,
    karras_sigmas,
    noise_conditioning,
    sigma_from_noise_conditioning,
    sigmas_at,
)
from .sampling import Generator, randn, renoise
from .schedule import NoiseLevels, SchedulerConfig


@dataclass
class CMStochasticIterativeSchedulerOutput(BaseOutput):
    """`step`'s result: `.prev_sample`, also `out[0]`, `out["prev_sample"]`, `out.to_tuple()`."""

    prev_sample: torch.Tensor


class CMStochasticIterativeScheduler:
    """Multistep and one-step consistency sampling (Algorithm 1) in the diffusers scheduler shape.

    The constructor takes diffusers' keywords (or one `SchedulerConfig`, or any mapping of
    them, as the first argument); `config` is a read-only dict with attribute access, which
    diffusers' own `CMStochasticIterativeScheduler.from_config` accepts too."""

    order = 1
    _compatibles: list = []
    _deprecated_kwargs: list = []

    def __init__(
        self,
        num_train_timesteps: int | Mapping[str, Any] = 40,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        sigma_data: float = 0.5,
        s_noise: float = 1.0,
        rho: float = 7.0,
        clip_denoised: bool = True,
    ) -> None:
        if isinstance(num_train_timesteps, Mapping):  # CMStochasticIterativeScheduler(config)
            config = SchedulerConfig.from_dict(num_train_timesteps)
        else:
            config = SchedulerConfig(num_train_timesteps, sigma_min, sigma_max, sigma_data, s_noise, rho, clip_denoised)
        self.config = config
        self.init_noise_sigma = config.sigma_max
        grid = karras_sigmas(config.num_train_timesteps, config.sigma_min, config.sigma_max, config.rho)
        self.sigmas = grid.to(torch.float32)
        self.timesteps = torch.from_numpy(self.sigma_to_t(grid.numpy()))
        self.num_inference_steps: int | None = None
        self.custom_timesteps = False
        self._step_index: int | None = None
        self._begin_index: int | None = None
        # The model kind of the pipeline folder it was read with (not a config entry): so that
        # `type(pipe)(**pipe.components)` is the same kind of pipeline, and save_config writes its scheduler.
        self.parametrization: str | None = None

    # -- persistence --------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: Mapping[str, Any], return_unused_kwargs: bool = False, **overrides: Any
                    ) -> "CMStochasticIterativeScheduler | tuple[CMStochasticIterativeScheduler, dict]":
        """From a config mapping (ours, diffusers' FrozenDict, a dict read from JSON; unknown and
        `_`-prefixed keys are ignored); keyword arguments override its values. As in diffusers, the
        keys a diffusers config lists in `_use_default_values` (another scheduler's defaults, never
        chosen: `from_config(DDPMScheduler().config)`) are skipped, so this class's defaults apply;
        `return_unused_kwargs=True` also returns the keyword arguments that are no setting."""
        if not isinstance(config, Mapping):
            raise InvalidInputError(f"config: {type(config).__name__} is not a mapping; to read a folder use from_pretrained")
        defaults = config.get("_use_default_values") or ()
        chosen = {key: value for key, value in config.items() if key not in defaults}
        scheduler = cls(SchedulerConfig.from_dict({**chosen, **overrides}))
        if return_unused_kwargs:  # diffusers' (scheduler, the keyword arguments that are no setting)
            return scheduler, {key: value for key, value in overrides.items() if key not in SchedulerConfig.FIELDS}
        return scheduler

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, subfolder: str | None = None,
                        **overrides: Any) -> "CMStochasticIterativeScheduler":
        """From `path/[subfolder/]scheduler_config.json`: `path` a folder, an embedded model's name
        (`"digits", subfolder="scheduler"`) or a Hub id (when online; only that config is fetched,
        with the Hub's options — revision, token, ... — as diffusers takes them)."""
        if not isinstance(path, (str, os.PathLike)) or not os.fspath(path).strip():
            raise InvalidInputError(f"path: {path!r} is not allowed; give a folder, an embedded model's name or a Hub "
                                    "id like owner/name")
        download = {k: overrides.pop(k) for k in DOWNLOAD_OPTIONS if k in overrides}
        root = Path(path)
        if not root.exists() or is_embedded(path):
            try:
                root = resolve_model_path(path, allow_patterns=[f"{subfolder}/*.json" if subfolder else "*.json"],
                                          **download)
            except InvalidInputError as exc:
                raise about("path", exc) from None
        folder = root / subfolder if subfolder else root
        return cls.from_config(read_scheduler_config(folder), **overrides)

    def save_config(self, save_directory: str | os.PathLike) -> None:
        """Write `save_directory/scheduler_config.json` (created if needed), as diffusers does."""
        write_scheduler_config(save_directory, self.config, self.parametrization or "consistency")

    save_pretrained = save_config

    @property
    def compatibles(self) -> list[type]:
        """Classes that can be built from this config: this one (and diffusers' when installed)."""
        found: list[type] = [type(self)]
        try:
            import diffusers
        except ImportError:
            return found
        return found + [getattr(diffusers, type(self).__name__)]

    # -- schedule -----------------------------------------------------------------------
    @property
    def step_index(self) -> int | None:
        return self._step_index

    @staticmethod
    def sigma_to_t(sigmas: float | np.ndarray) -> np.ndarray:
        """The UNet's noise input c_noise(σ) = 250·ln(σ + 1e-44) (`noise_conditioning`), in float64."""
        return noise_conditioning(torch.as_tensor(np.asarray(sigmas, dtype=np.float64))).numpy()

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: Sequence[int] | None = None,
    ) -> None:
        """Pick the grid indices to visit: evenly spaced, or custom descending indices."""
        if (num_inference_steps is None) == (timesteps is None):
            raise InvalidInputError("set_timesteps: give exactly one of num_inference_steps or timesteps")
        sigmas = NoiseLevels.of(num_inference_steps, timesteps).resolve(self.config)
        self.custom_timesteps = timesteps is not None
        self.num_inference_steps = len(sigmas) - 1
        self.sigmas = torch.tensor(sigmas, dtype=torch.float32)
        self.timesteps = torch.from_numpy(self.sigma_to_t(np.array(sigmas[:-1]))).to(device)
        self._step_index = None
        self._begin_index = None

    @property
    def begin_index(self) -> int | None:
        """The step to start from, set by a pipeline (`set_begin_index`); None: found from the first
        timestep given to `scale_model_input` or `step` (diffusers' API)."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        if not is_integer(begin_index) or begin_index < 0:
            raise InvalidInputError(f"begin_index: {begin_index!r} is not allowed; use an integer >= 0")
        self._begin_index = int(begin_index)

    def index_for_timestep(self, timestep: float | torch.Tensor,
                           schedule_timesteps: torch.Tensor | None = None) -> int:
        """The position of `timestep` in `schedule_timesteps` (default: `timesteps`); of two equal
        entries the second, as diffusers picks it."""
        schedule = self.timesteps if schedule_timesteps is None else torch.as_tensor(schedule_timesteps)
        matches = (schedule.cpu() == torch.as_tensor(timestep, dtype=schedule.dtype).cpu()).nonzero()
        if len(matches) == 0:
            raise InvalidInputError(f"timestep: {float(timestep)} is not one of scheduler.timesteps")
        return int(matches[1 if len(matches) > 1 else 0])

    def _init_step_index(self, timestep: float | torch.Tensor) -> None:
        if self._step_index is None:
            self._step_index = self.index_for_timestep(timestep) if self._begin_index is None else self._begin_index

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor) -> torch.Tensor:
        """c_in(σ)·x = x / √(σ² + σ_d²)."""
        self._init_step_index(timestep)
        return sample * input_scaling(self.sigmas[self._step_index], self.config.sigma_data)

    def get_scalings_for_boundary_condition(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c_skip, c_out, _ = consistency_scalings(sigma, self.config.sigma_data, self.config.sigma_min)
        return c_skip, c_out

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: Generator = None,
        return_dict: bool = True,
    ) -> CMStochasticIterativeSchedulerOutput | tuple[torch.Tensor]:
        """x₀ = c_skip·x + c_out·F (clipped), then re-noise to the next σ (Algorithm 1)."""
        if isinstance(timestep, int) or (torch.is_tensor(timestep) and not timestep.is_floating_point()):
            raise InvalidInputError(
                "timestep: pass one of scheduler.timesteps (a float), not an integer index from enumerate()"
            )
        cfg = self.config
        self._init_step_index(timestep)
        sigma = self.sigmas[self._step_index]
        last = len(self.sigmas) - 1
        sigma_next = self.sigmas[min(self._step_index + 1, last)]
        c_skip, c_out = self.get_scalings_for_boundary_condition(sigma)
        denoised = c_out * model_output + c_skip * sample
        if cfg.clip_denoised:
            denoised = denoised.clamp(-1, 1)
        if len(self.timesteps) > 1:
            noise = randn(model_output.shape, generator, device=model_output.device, dtype=model_output.dtype)
        else:
            noise = torch.zeros_like(model_output)
        prev_sample = renoise(denoised, float(sigma_next), noise, cfg.s_noise, cfg.sigma_min, cfg.sigma_max)
        self._step_index += 1
        if not return_dict:
            return (prev_sample,)
        return CMStochasticIterativeSchedulerOutput(prev_sample=prev_sample)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x + σ(t)·noise for the σ of each given timestep (t = 250·ln σ, as `timesteps` holds them;
        one for the batch or one per sample), in the samples' dtype as diffusers returns it."""
        if isinstance(timesteps, (bool, int)) or (torch.is_tensor(timesteps) and not timesteps.is_floating_point()):
            raise InvalidInputError("timesteps: pass values of scheduler.timesteps (floats, 250·ln σ), not integer "
                                    "indices; index them as scheduler.timesteps[indices]")
        try:
            t = torch.as_tensor(timesteps, dtype=torch.float64).detach().cpu().reshape(-1)
        except (TypeError, ValueError, RuntimeError):
            raise InvalidInputError(f"timesteps: {type(timesteps).__name__} is not a tensor, list or number of "
                                    "scheduler.timesteps values") from None
        batch = original_samples.shape[0] if original_samples.ndim else 1
        if t.numel() not in (1, batch):
            raise InvalidInputError(f"timesteps: {t.numel()} values for a batch of {batch}; give one, or one per sample")
        sigma = sigma_from_noise_conditioning(t).expand(batch).to(original_samples.device, original_samples.dtype)
        return original_samples + noise * sigma.reshape(-1, *([1] * (original_samples.ndim - 1)))

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


__all__ = ["CONFIG_NAME", "CMStochasticIterativeScheduler", "CMStochasticIterativeSchedulerOutput", "SchedulerConfig",
           "sigmas_at"]
