"""A training run's settings put together from the method registry, checked once when made.

`TrainConfig` is `RunSettings` (every method's settings, `settings.py`) with `options`, the
method's own settings as its `MethodOptions` class declares them (`methods/`): a setting the
chosen method does not read is refused instead of ignored, and the method's defaults (some of
them computed from the run, e.g. a curriculum scaled with --steps) fill the rest. Saved runs
store both flat (`to_dict`); `from_settings` splits flat settings again. `cm train` builds its
options from the same fields (`cli/train.py`, `option_fields`).
"""

from __future__ import annotations

import typing
from dataclasses import Field, MISSING, dataclass, fields
from typing import Any

from ..errors import InvalidInputError
from ..kinds import get_kind
from .methods import METHODS, get_method, method_options
from .methods.options import MethodOptions
from .methods.registry import Method
from .settings import RunSettings, setting

GENERAL = tuple(f.name for f in fields(RunSettings) if f.name != "options")
SIGMA_SETTINGS = ("sigma_min", "sigma_max", "sigma_data", "rho")  # the noise levels' settings


class UnusedSigmaSetting(InvalidInputError):
    """A σ setting given to a run whose model kind has no noise levels σ (`TrainConfig._check_sigmas`)."""


@dataclass
class TrainConfig(RunSettings):
    """A training run: `TrainConfig(method="cd", data=..., out=..., options={"num_scales": 18})`,
    or the same flat with `TrainConfig.from_settings(..., num_scales=18)`."""

    method: str = setting(help="the training method", choices=lambda: tuple(METHODS))

    def __post_init__(self) -> None:
        self.check()
        method = get_method(self.method)
        if self.init_from_teacher is None:  # before the options' run-dependent defaults, which may read it
            self.init_from_teacher = bool(self.teacher) and not self.init_from and method.starts_from_teacher(self)
        self.options = self._method_options(method)
        self.options.complete(self)
        self._check_teacher(method)
        self._check_sigmas(method)

    def _check_sigmas(self, method: Method) -> None:
        """A model kind without noise levels σ (MeanFlow's times run from 0 to 1) refuses σ settings
        other than their defaults instead of recording values that change nothing."""
        kind = get_kind(method.parametrization_of(self))
        if kind.uses_sigmas:
            return
        for f in fields(RunSettings):
            if f.name in SIGMA_SETTINGS and getattr(self, f.name) != f.default:
                raise UnusedSigmaSetting(f"{f.name}: {getattr(self, f.name)!r} is not used by --method {self.method} "
                                         f"({kind.summary} has no noise levels sigma: its times run from 0 to 1)")

    def _method_options(self, method: Method) -> MethodOptions:
        """The method's options class filled with what was given (a dict or an instance of it)."""
        given = self.options
        if not isinstance(given, (dict, MethodOptions)):
            raise InvalidInputError(f"options: a {type(given).__name__} is not allowed; use a dict of the method's "
                                    "settings")
        if isinstance(given, MethodOptions):
            if type(given) is not method.options:
                raise InvalidInputError(f"options: a {type(given).__name__} is not --method {self.method}'s "
                                        f"settings (a {method.options.__name__})")
            given = given.to_dict()
        own = method.options.names()
        for name, value in sorted(given.items()):
            if name not in own and value is not None:  # None: not given (older runs saved every method's)
                if name not in method_options():
                    raise InvalidInputError(f"{name}: {value!r} is not a setting of cm train")
                raise InvalidInputError(f"{name}: {value!r} is not used by --method {self.method} (its own "
                                        f"options: {', '.join('--' + n.replace('_', '-') for n in own) or 'none'})")
        return method.options(**{name: value for name, value in given.items() if name in own})

    def _from_recipe(self, name: str, value: Any) -> bool:
        """Whether a setting holds the --recipe's value (said as the recipe's in an error)."""
        from .recipes import get_recipe

        recipe = self.extra.get("recipe")
        return recipe is not None and get_recipe(recipe).settings.get(name, MISSING) == value

    def _check_teacher(self, method: Method) -> None:
        if method.teacher == "unused" and (self.teacher or self.init_from_teacher):
            raise InvalidInputError(f"teacher: --method {self.method} uses no teacher; to start from a saved "
                                    "network use --init-from")
        if self.init_from_teacher and not self.teacher:
            if self._from_recipe("init_from_teacher", self.init_from_teacher):
                raise InvalidInputError(f"teacher: --recipe {self.extra['recipe']} starts the student from a teacher; "
                                        "give --teacher, a diffusion model folder")
            raise InvalidInputError("init_from_teacher: needs --teacher")
        if self.teacher and not method.teacher_in_loss and not self.init_from_teacher:
            way = "drop --teacher, or start from it" if method.teacher == "optional" else \
                "start from it (without --no-init-from-teacher and --init-from)"
            raise InvalidInputError(f"teacher: --method {self.method} uses a teacher only to start the student from "
                                    f"it, and this run does not; {way}")
        if self.init_from and self.init_from_teacher:
            raise InvalidInputError("init_from: give --init-from or --init-from-teacher, not both")
        if self.preset and (self.init_from or self.init_from_teacher) and self._from_recipe("preset", self.preset):
            self.preset = None  # a recipe's network, named for the record: the teacher's is the one copied
        if self.preset and (self.init_from or self.init_from_teacher):
            source = f"--init-from {self.init_from}" if self.init_from else f"the teacher {self.teacher}"
            fresh = " (or give --no-init-from-teacher for a fresh student of that preset)" \
                if not self.init_from and method.teacher_in_loss else ""
            raise InvalidInputError(f"preset: {self.preset!r} is not used: the network is copied from {source}, "
                                    f"architecture included; drop --preset{fresh}")
        if self.init_from_teacher and self.dropout is None and method.student_dropout is not None:
            self.dropout = method.student_dropout

    def to_dict(self) -> dict:
        """Every setting flat, the method's own beside the shared ones (as config.json and checkpoints keep them)."""
        return {**self.general_dict(), **self.options.to_dict()}

    @classmethod
    def from_settings(cls, **settings: Any) -> "TrainConfig":
        """A config from flat settings: those that are not shared go to the method's options."""
        general = {k: v for k, v in settings.items() if k in GENERAL}
        options = {k: v for k, v in settings.items() if k not in GENERAL and k != "options"}
        given = settings.get("options", {})
        if isinstance(given, MethodOptions):
            given = given.to_dict()
        # Anything else than a dict goes to the constructor as it is, which refuses it in one line.
        return cls(**general, options={**given, **options} if isinstance(given, dict) else given)

    @classmethod
    def from_recipe(cls, name: str, **settings: Any) -> "TrainConfig":
        """A published run's settings (`training/recipes.py`), with `settings` overriding them."""
        from .recipes import get_recipe

        recipe = get_recipe(name)
        method = recipe.settings["method"]
        if settings.get("method", method) != method:  # its values were chosen for its own method
            raise InvalidInputError(f"method: --recipe {name} is a recipe for --method {method}; to train "
                                    f"--method {settings['method']}, drop --recipe and give that method's settings "
                                    "(docs/recipes.md lists the recipe's values)")
        own = dict(recipe.settings)
        if settings.get("init_from") and "init_from_teacher" not in settings:
            own.pop("init_from_teacher", None)  # --init-from given: the student starts from it, not the teacher
        merged = {**own, **settings}
        merged["extra"] = {**merged.get("extra", {}), "recipe": name}
        return cls.from_settings(**merged)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """The config of a saved run (`to_dict`). Settings of other methods, which older versions
        saved with their global defaults, are dropped, and so are settings older versions recorded
        where they changed nothing (now refused): σ settings of a kind without σ, a teacher that
        was not started from, and what the method's options declare (`MethodOptions.saved`)."""
        method = get_method(data.get("method", ""))
        own = method.options.names()
        data = method.options.saved({k: v for k, v in data.items() if k in GENERAL or k in own})
        if data.get("teacher") and not method.teacher_in_loss and data.get("init_from_teacher") is False:
            data["teacher"] = None
        if data.get("init_from") or data.get("init_from_teacher"):
            data["preset"] = None
        try:
            return cls.from_settings(**data)
        except UnusedSigmaSetting:  # the run's kind has no σ (decided by `_check_sigmas` alone)
            return cls.from_settings(**{k: v for k, v in data.items() if k not in SIGMA_SETTINGS})

    @classmethod
    def of_stopped_run(cls, **settings: Any) -> "TrainConfig | None":
        """The settings the run folder `settings["out"]` recorded (as `from_dict` reads them), with
        `settings` over them: `cm train --out RUN --resume` continues RUN without its options typed
        again. None where the folder holds no recorded run. The device is not taken from the record
        (`MACHINE`): it is the machine's default unless given."""
        from .run_folder import saved_settings

        saved = saved_settings(settings["out"])
        if saved is None:
            return None
        if missing := [name for name in ("method", "data") if not isinstance(saved.get(name), str)]:
            if all(name in settings for name in ("method", "data")):
                return None   # the settings given are the run's (the trainer compares them with its checkpoint)
            raise InvalidInputError(f"resume: {settings['out']}'s train_config.json records no {missing[0]}; give the "
                                    "run's settings again")
        recorded = {k: v for k, v in cls.from_dict(saved).to_dict().items() if k not in cls.MACHINE}
        return cls.from_settings(**{**recorded, **settings})

    # Settings that may change between a run and its resumption.
    RESUMABLE = ("resume", "out", "progress", "log_every", "save_every", "sample_every", "keep", "device",
                 "tensorboard", "compile")
    # Settings of the machine, not of the run: a resume from the run folder alone decides them anew
    # (a run started with --device cuda:1 is requeued on a machine with one GPU, or none).
    MACHINE = ("device",)


def option_fields() -> dict[str, tuple[Field, Any]]:
    """Every registered method's options, name → (field, type hint), first declaration first
    (a name shared by several methods is one option: `methods/options.py` declares it once)."""
    found: dict[str, tuple[Field, Any]] = {}
    for entry in METHODS.values():
        hints = typing.get_type_hints(entry.options)
        for f in fields(entry.options):
            found.setdefault(f.name, (f, hints[f.name]))
    return found


def option_defaults_text(name: str) -> str:
    """'cd 40, ct 2': the defaults the registered methods give one of their options."""
    parts = []
    for entry in METHODS.values():
        for f in fields(entry.options):
            if f.name == name:
                default = f.metadata.get("budget") if f.default is None else f.default
                if default is not None and default is not MISSING:  # None: not set unless given
                    parts.append(f"{entry.name} {default}")
    return ", ".join(parts)
