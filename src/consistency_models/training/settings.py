"""How a setting is declared, and the settings every training run has whatever its method.

A setting is a dataclass field carrying what `cm train --help` shows (help, choices) and the
check its value must pass, declared once beside its default (`setting`). `RunSettings` holds the
settings every method shares; a method's own settings are a `MethodOptions` class in its module
(`methods/`; the options several methods share are declared once in `methods/options.py`), found
in the run's `options`. An option's default is stated in its class only: the loss constructors
read it from there (`CDOptions.num_scales`). `config.TrainConfig` puts the two together
from the method registry; this module sits below the methods so that they can read a run's
settings by type without importing the config that reads their registry.
"""

from __future__ import annotations

import functools
import math
import os
import types
import typing
from dataclasses import MISSING, Field, asdict, dataclass, field, fields
from typing import Any, Callable, Sequence

from ..data.decode import IMAGE_MODES
from ..errors import InvalidInputError
from .optimizer import OPTIMIZERS

PRECISIONS = ("float32", "bfloat16", "float16")
MAX_STEPS = 10**9     # 1,250 times OpenAI's 800k-step runs; beyond it a step counter is an overflow, not a plan

# A check: (test of a given value, what is allowed, for the one-line error).
Check = tuple[Callable[[Any], bool], str]


def at_least(low: int | float, what: str) -> Check:
    return (lambda v: v >= low, what)


def integer_range(low: int, high: int, what: str = "an integer") -> Check:
    return (lambda v: low <= v <= high, f"{what} from {low} to {high}")


def positive_number(what: str = "a positive number") -> Check:
    return (lambda v: math.isfinite(v) and v > 0, what)


POSITIVE_INTEGER = at_least(1, "a positive integer")
RATE = (lambda v: 0 <= v < 1, "a rate in [0, 1)")
FINITE = (lambda v: math.isfinite(v), "a finite number")


def setting(
    default: Any = MISSING,
    help: str = "",
    *,
    choices: Sequence[str] | Callable[[], Sequence[str]] | None = None,
    check: Check | None = None,
    cli: bool = True,
    aliases: dict[str, Any] | None = None,
    default_factory: Callable[[], Any] | Any = MISSING,
    budget: Any = None,
) -> Field:
    """A settings field with what `cm train --help` shows: help, choices (or a function giving them),
    `check` for values that are not a choice, `cli=False` for settings without an option, `aliases`
    = {"--flag": value stored} for old spellings, `budget` = a default computed from the run
    (`BudgetDefault`, for a field whose plain default is None)."""
    metadata = {"help": help, "choices": choices, "check": check, "cli": cli, "aliases": aliases or {},
                "budget": budget}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def choices_of(f: Field) -> Sequence[str] | None:
    choices = f.metadata.get("choices")
    return choices() if callable(choices) else choices


@functools.cache
def _field_types(cls: type) -> dict[str, tuple[type, ...]]:
    """Each field's allowed types (the members of its annotation other than None); {} where the
    annotations cannot be resolved."""
    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError):
        return {}
    allowed = {}
    for name, hint in hints.items():
        members = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        allowed[name] = tuple(m for m in members if m is not type(None))
    return allowed


_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "a dict",
               tuple: "a list of numbers"}


def _of_type(value: Any, kind: Any) -> bool:
    """Whether `value` may stand for a `kind` setting (an int for a float; a list for a tuple of numbers)."""
    origin = typing.get_origin(kind) or kind
    if origin is bool:
        return isinstance(value, bool)
    if origin is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is tuple:
        return isinstance(value, (tuple, list)) and all(_of_type(v, float) for v in value)
    if origin in (str, dict):
        return isinstance(value, origin)
    return True  # other annotations (an options class, …) are checked where they are used


def check_types(settings: Any) -> None:
    """Each given value has its field's type (a path may stand for a string, as `out=Path(...)`)."""
    allowed = _field_types(type(settings))
    for f in fields(settings):
        value, kinds = getattr(settings, f.name), allowed.get(f.name, ())
        if value is None or not kinds:
            continue
        if str in kinds and isinstance(value, os.PathLike):
            value = os.fspath(value)
            setattr(settings, f.name, value)
        if not any(_of_type(value, kind) for kind in kinds):
            words = " or ".join(dict.fromkeys(_TYPE_WORDS.get(typing.get_origin(k) or k, "a value of its kind")
                                              for k in kinds))
            raise InvalidInputError(f"{f.name}: {value!r} is not allowed; use {words}")


def check_fields(settings: Any) -> None:
    """Every field's type, then its own check (choices or `check`) on its value; None passes (not given)."""
    check_types(settings)
    for f in fields(settings):
        value = getattr(settings, f.name)
        if value is None:
            continue
        choices, check = choices_of(f), f.metadata.get("check")
        if choices is not None and value not in choices:
            allowed = " or ".join(choices) if len(choices) == 2 else f"one of {', '.join(choices)}"
        elif check is not None and not _passes(check[0], value):
            allowed = check[1]
        else:
            continue
        raise InvalidInputError(f"{f.name}: {value!r} is not allowed; use {allowed}")


def _passes(test: Callable[[Any], bool], value: Any) -> bool:
    try:
        return bool(test(value))
    except (TypeError, ValueError):  # e.g. a string where a number belongs
        return False


@dataclass(frozen=True)
class BudgetDefault:
    """A default computed from the run's other settings (e.g. a curriculum scaled with --steps);
    `text` is what `cm train --help` shows for it."""

    compute: Callable[["RunSettings"], Any]
    text: str

    def __call__(self, run: "RunSettings") -> Any:
        return self.compute(run)

    def __str__(self) -> str:
        return self.text


@dataclass
class MethodOptions:
    """The settings only one method (or a family of methods) reads; none by default."""

    def __post_init__(self) -> None:
        check_fields(self)

    def complete(self, run: "RunSettings") -> None:
        """Fill the defaults computed from the run (`run.options` is this object), then check."""
        for f in fields(self):
            budget = f.metadata.get("budget")
            if getattr(self, f.name) is None and budget is not None:
                setattr(self, f.name, budget(run))
        check_fields(self)
        self.check(run)

    def check(self, run: "RunSettings") -> None:
        """Checks across settings (e.g. an option that needs another); none by default."""

    @classmethod
    def saved(cls, settings: dict[str, Any]) -> dict[str, Any]:
        """A saved run's flat settings as this version reads them: a value an older version recorded
        where it changed nothing, and now refuses, goes back to its default. None by default."""
        return settings

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RunSettings:
    """A training run's settings shared by every method; `options` holds the method's own.
    `batch_size` is the global batch, whatever the number of processes."""

    method: str = setting(help="the training method")  # its choices: the registry's (config.TrainConfig)
    data: str = setting(help="digits, digits:test, toy:mog8|moons|checkerboard, an image folder (class = "
                             "first-level subfolder), an EDM .zip, an ADM .npz (uint8 images) or an .npz of float "
                             "points (arr_0: (N, D), arr_1: optional labels); needed unless --resume reads "
                             "the run folder's settings")
    out: str = setting(help="run folder (created; must be new unless --resume); also a pipeline folder")
    preset: str | None = setting(None, "network preset (default: from the data: tiny16, small32, mlp2d; a "
                                       "network copied with --init-from or from the teacher keeps its own)")
    resolution: int | None = setting(None, "resize images to this size", check=POSITIVE_INTEGER)
    use_labels: bool = setting(True, "class-conditional when the data has labels",
                               aliases={"--unconditional": False})
    xflip: bool = setting(False, "random horizontal flips")
    image_mode: str = setting("auto", "channels of an image folder or zip that mixes gray and color files: auto (RGB "
                                      "unless all are gray), rgb, gray, or same (refuse a mix)", choices=IMAGE_MODES)
    teacher: str | None = setting(None, "diffusion model folder: an EDM denoiser (--method edm, or a converted "
                                        "edm_* checkpoint) or a TrigFlow one (--method edm --time-input t)")
    init_from_teacher: bool | None = setting(None, "start the student from the teacher's weights")
    init_from: str | None = setting(None, "start from this pipeline folder's network (fine-tuning; same shape "
                                          "and classes)")
    batch_size: int = setting(64, "global batch size", check=POSITIVE_INTEGER)
    steps: int = setting(10_000, "optimizer steps K", check=integer_range(1, MAX_STEPS))
    lr: float = setting(2e-4, "learning rate", check=positive_number())
    optimizer: str = setting("radam", "optimizer", choices=OPTIMIZERS)
    weight_decay: float = setting(0.0, "weight decay (decoupled for adamw)",
                                  check=(lambda v: math.isfinite(v) and v >= 0, "a number >= 0"))
    warmup_steps: int = setting(0, "linear learning-rate warm-up steps",
                                check=integer_range(0, MAX_STEPS, "a number of steps"))
    grad_clip: float | None = setting(1.0, "max global gradient norm (0: off)",
                                      check=(lambda v: math.isfinite(v) and v >= 0, "a norm >= 0 (0: off)"))
    accumulation: int = setting(1, "micro-batches per optimizer step", check=POSITIVE_INTEGER)
    ema_rates: tuple[float, ...] = setting(help="EMA rates of the weights, e.g. 0.999,0.9999 (the first is "
                                                "exported); at step n each is at most (1 + n)/(10 + n), "
                                                "so 0.999 takes effect from step 8,990", default_factory=lambda: (0.999,),
                                           check=(lambda v: len(v) > 0 and all(0 <= r < 1 for r in v),
                                                  "one or more rates in [0, 1)"))
    precision: str = setting("float32", "autocast dtype of the forward", choices=PRECISIONS)
    dropout: float | None = setting(None, "override the preset's dropout",
                                    check=(lambda v: 0 <= v < 1, "a probability in [0, 1)"))
    compile: bool | None = setting(None, "torch.compile the networks (the fast step; default: on CUDA yes, on the "
                                         "CPU no); the first step then compiles, minutes on a CPU")
    seed: int = setting(0, "seed of the weights, the data order and every noise draw",
                        check=(lambda v: 0 <= v < 2**32, "an integer from 0 to 4294967295"))
    sigma_min: float = setting(0.002, "sigma_min (epsilon) of the noise levels", check=positive_number("a number > 0"))
    sigma_max: float = setting(80.0, "sigma_max (T) of the noise levels",
                               check=positive_number("a number > sigma_min"))
    sigma_data: float = setting(0.5, "sigma_data of the preconditioning", check=positive_number("a number > 0"))
    rho: float = setting(7.0, "rho of the Karras grid", check=positive_number("a number > 0"))
    # bookkeeping
    log_every: int = setting(50, "steps between lines of metrics.jsonl", check=POSITIVE_INTEGER)
    save_every: int = setting(1000, "steps between checkpoints", check=POSITIVE_INTEGER)
    sample_every: int = setting(1000, "steps between sample grids in samples/", check=POSITIVE_INTEGER)
    keep: int = setting(3, "checkpoints kept", check=at_least(1, "at least 1"))
    resume: bool = setting(False, "continue from the newest complete checkpoint; given with --out alone, with "
                                  "the settings the run folder recorded")
    device: str | None = setting(None, "cpu, cuda or cuda:N (default: cuda when available)")
    tensorboard: bool = setting(False, "also log to RUN_DIR/tensorboard")
    progress: bool = setting(True, "show a progress bar")
    extra: dict = setting(help="free-form: the recipe a run came from", cli=False, default_factory=dict)
    options: MethodOptions | dict = setting(help="the method's own settings (its MethodOptions class; a dict "
                                                   "of them is checked and completed by TrainConfig)",
                                              cli=False, default_factory=dict)

    def check(self) -> None:
        """Each field's own check, then the ones across fields."""
        check_fields(self)
        self.ema_rates = tuple(float(r) for r in self.ema_rates)
        if not self.sigma_max > self.sigma_min:
            raise InvalidInputError(f"sigma_max: {self.sigma_max!r} is not allowed; use a number > sigma_min "
                                    f"({self.sigma_min})")
        if self.batch_size % self.accumulation:
            raise InvalidInputError(f"accumulation: {self.accumulation!r} is not allowed; use a positive divisor "
                                    "of batch_size")

    def notes(self) -> list[str]:
        """What the run says before it starts about settings that are allowed but seldom meant."""
        if self.warmup_steps > self.steps:
            return [f"warmup-steps: {self.warmup_steps} is more than --steps {self.steps}: the learning rate rises "
                    f"over the whole run and ends at {self.steps / self.warmup_steps:.0%} of --lr"]
        return []

    def general_dict(self) -> dict:
        """The shared settings as plain values (without the method's options)."""
        d = {f.name: getattr(self, f.name) for f in fields(RunSettings) if f.name != "options"}
        d["ema_rates"] = list(self.ema_rates)
        d["extra"] = dict(self.extra)
        return d
