"""Which noise levels to sample at: the sampling settings of a model and the σ schedule of one run.

- `SchedulerConfig`: a model's sampling settings (the Karras grid N, σ_min, σ_max, σ_data, ρ,
  the re-noising scale and the clipping of x₀); the fields and defaults of diffusers'
  `CMStochasticIterativeScheduler` config, stored in `scheduler/scheduler_config.json`.
- `NoiseLevels`: one run's choice, given as a number of steps, diffusers-style grid indices
  (`timesteps`, index 0 = σ_max) or explicit σ values; `resolve` turns it into the σ list the
  samplers take (the evaluation levels followed by σ_min).

`[22, 0]` on the 40-point grid gives [80, 1.3824, 0.002], like OpenAI's `ts=0,22,39`.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .errors import InvalidInputError
from .parametrization import RHO, SIGMA_DATA, SIGMA_MAX, SIGMA_MIN, karras_sigmas


_SETTINGS: dict[str, Any] = {        # the fields and defaults of diffusers' scheduler config
    "num_train_timesteps": 40,       # points N of the Karras grid
    "sigma_min": SIGMA_MIN,          # ε, the boundary of the consistency function
    "sigma_max": SIGMA_MAX,          # T
    "sigma_data": SIGMA_DATA,
    "s_noise": 1.0,                  # scale of the noise re-added between steps
    "rho": RHO,
    "clip_denoised": True,           # clip each x₀ to [−1, 1]
}


MAX_GRID = 1_000_000                 # the largest Karras grid N accepted


class SchedulerConfig(dict):
    """A model's sampling settings, read-only: a dict (so that `dict(c)`, `{**c}` and diffusers'
    `from_config(c)` take it, as diffusers' `FrozenDict`) whose keys are also attributes (`c.rho`)."""

    FIELDS = tuple(_SETTINGS)

    def __init__(
        self,
        num_train_timesteps: int = _SETTINGS["num_train_timesteps"],
        sigma_min: float = _SETTINGS["sigma_min"],
        sigma_max: float = _SETTINGS["sigma_max"],
        sigma_data: float = _SETTINGS["sigma_data"],
        s_noise: float = _SETTINGS["s_noise"],
        rho: float = _SETTINGS["rho"],
        clip_denoised: bool = _SETTINGS["clip_denoised"],
    ) -> None:
        super().__init__(num_train_timesteps=num_train_timesteps, sigma_min=sigma_min, sigma_max=sigma_max,
                         sigma_data=sigma_data, s_noise=s_noise, rho=rho, clip_denoised=clip_denoised)
        self._check()
        # Python numbers from here on (a NumPy scalar passed the check): float64 grids, and a
        # config that JSON, and so save_pretrained, can write.
        dict.update(self, {name: int(value) if name == "num_train_timesteps" else value if name == "clip_denoised"
                           else float(value) for name, value in self.items()})

    def _check(self) -> None:
        """Every value within what sampling can use (a one-line error naming it otherwise)."""
        def real(value: Any) -> bool:
            return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)

        n = self["num_train_timesteps"]
        checks = [
            ("num_train_timesteps", isinstance(n, numbers.Integral) and not isinstance(n, bool)
             and 2 <= n <= MAX_GRID, f"an integer from 2 to {MAX_GRID}"),
            ("sigma_min", real(self["sigma_min"]) and self["sigma_min"] > 0, "a number > 0"),
            ("sigma_max", real(self["sigma_max"]) and real(self["sigma_min"]) and self["sigma_max"] > self["sigma_min"],
             f"a number > sigma_min ({self['sigma_min']!r})"),
            ("sigma_data", real(self["sigma_data"]) and self["sigma_data"] > 0, "a number > 0"),
            ("s_noise", real(self["s_noise"]) and self["s_noise"] >= 0, "a number >= 0"),
            ("rho", real(self["rho"]) and self["rho"] > 0, "a number > 0"),
            ("clip_denoised", isinstance(self["clip_denoised"], bool), "true or false"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise InvalidInputError(f"{name}: {self[name]!r} is not allowed; use {allowed}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SchedulerConfig":
        """Known keys only (diffusers writes `_class_name` and friends beside them)."""
        return cls(**{k: v for k, v in data.items() if k in _SETTINGS})

    def replace(self, **changes: Any) -> "SchedulerConfig":
        """A copy with some settings changed."""
        return type(self)(**{**self, **changes})

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}") from None

    def _read_only(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(f"{type(self).__name__} is read-only; make a new one with .replace(...)")

    __setattr__ = __delattr__ = __setitem__ = __delitem__ = _read_only
    update = pop = popitem = clear = setdefault = __ior__ = _read_only

    def __reduce__(self):
        return type(self).from_dict, (dict(self),)

    def __copy__(self) -> "SchedulerConfig":
        return self

    def __deepcopy__(self, memo: dict) -> "SchedulerConfig":
        return self

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(self.items()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.items())})"


def sigmas_from_timesteps(
    timesteps: Sequence[int],
    num_train_timesteps: int,
    sigma_min: float = SIGMA_MIN,
    sigma_max: float = SIGMA_MAX,
    rho: float = RHO,
) -> list[float]:
    """diffusers-style descending grid indices (index 0 = σ_max) → evaluation σs + [σ_min]."""
    example = f"{max(1, num_train_timesteps // 2)},0"  # on this model's grid (digits: 9,0; 40 points: 20,0)
    if any(isinstance(t, bool) or not float(t).is_integer() for t in timesteps):
        raise InvalidInputError(f"timesteps: {list(timesteps)} must be grid indices (integers, e.g. {example}); "
                                "times such as 1.1 are for sCM (TrigFlow consistency) and MeanFlow models")
    timesteps = [int(t) for t in timesteps]
    if not timesteps:
        raise InvalidInputError("timesteps: give at least one grid index")
    if any(b >= a for a, b in zip(timesteps, timesteps[1:])):
        raise InvalidInputError(f"timesteps: {timesteps} must be strictly descending (e.g. {example})")
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
            f"num_inference_steps: {num_inference_steps} must be from 1 to {num_train_timesteps} (the model's grid has "
            f"num_train_timesteps={num_train_timesteps} points)"
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


@dataclass(frozen=True)
class NoiseLevels:
    """Which noise levels to sample at: `steps` evenly spaced grid points, descending grid indices
    `timesteps` (diffusers' convention), or explicit descending `sigmas`. Explicit timesteps or
    sigmas override steps; giving both timesteps and sigmas is an error. All None: the sampler's
    default (one step for a consistency model, 18 Heun steps for an EDM denoiser)."""

    steps: int | None = None
    timesteps: tuple[int, ...] | None = None
    sigmas: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.timesteps is not None and self.sigmas is not None:
            raise InvalidInputError("timesteps/sigmas: give one of them, not both")
        for name, value in (("timesteps", self.timesteps), ("sigmas", self.sigmas)):
            if value is not None and (isinstance(value, (str, bytes)) or not hasattr(value, "__iter__")
                                      or getattr(value, "ndim", 1) != 1):
                raise InvalidInputError(f"{name}: {value!r} is not allowed; give a list, e.g. [22, 0] or [80.0, 1.0]")
        steps = self.steps
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, numbers.Integral)):
            raise InvalidInputError(f"num_inference_steps: {steps!r} is not allowed; use a positive integer")
        if self.timesteps is not None:
            object.__setattr__(self, "timesteps", tuple(self.timesteps))
            object.__setattr__(self, "steps", None)
        if self.sigmas is not None:
            object.__setattr__(self, "sigmas", tuple(self.sigmas))
            object.__setattr__(self, "steps", None)

    @classmethod
    def of(
        cls,
        num_inference_steps: int | None = None,
        timesteps: Sequence[int] | None = None,
        sigmas: Sequence[float] | None = None,
    ) -> "NoiseLevels":
        """From diffusers' three keywords."""
        return cls(num_inference_steps, timesteps, sigmas)

    @classmethod
    def from_keywords(cls, levels: "NoiseLevels | None", keywords: dict[str, Any]) -> "NoiseLevels":
        """`levels`, or the same given as diffusers' keywords: the spelling that functions taking
        `levels` accept too (their older signature)."""
        unknown = set(keywords) - {"num_inference_steps", "timesteps", "sigmas"}
        if unknown:
            raise TypeError(f"unexpected keyword argument(s): {', '.join(sorted(unknown))} (noise levels are given "
                            "as num_inference_steps, timesteps or sigmas)")
        given = {k: v for k, v in keywords.items() if v is not None}
        if levels is not None and given:
            raise InvalidInputError(f"levels: give levels or {'/'.join(given)}, not both")
        return levels if levels is not None else cls.of(**given)

    @property
    def is_default(self) -> bool:
        return self.steps is None and self.timesteps is None and self.sigmas is None

    def as_dict(self) -> dict[str, Any]:
        """diffusers' keywords (what `cm sample --num` records in run.json)."""
        return {"num_inference_steps": self.steps,
                "timesteps": None if self.timesteps is None else list(self.timesteps),
                "sigmas": None if self.sigmas is None else list(self.sigmas)}

    def resolve(self, config: SchedulerConfig, default_steps: int = 1) -> list[float]:
        """The σ list of consistency sampling: the evaluation levels followed by σ_min."""
        if self.sigmas is not None:
            return check_sigmas(self.sigmas, config.sigma_min, config.sigma_max)
        timesteps = self.timesteps
        if timesteps is None:
            steps = default_steps if self.steps is None else int(self.steps)
            timesteps = timesteps_for_steps(steps, config.num_train_timesteps)
        return sigmas_from_timesteps(timesteps, config.num_train_timesteps, config.sigma_min, config.sigma_max,
                                     config.rho)


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
    levels = NoiseLevels.of(num_inference_steps, timesteps, sigmas)
    if levels.is_default:
        raise InvalidInputError("num_inference_steps: give a number of steps, timesteps or sigmas")
    config = SchedulerConfig(num_train_timesteps=num_train_timesteps, sigma_min=sigma_min, sigma_max=sigma_max,
                             rho=rho)
    return levels.resolve(config)
