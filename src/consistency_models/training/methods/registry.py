"""The registry of training methods: each method declares, in one place, everything the rest of
the package needs to know about it.

A `Method` names its parametrization (an EDM denoiser D or a consistency function f), its own
options (a `MethodOptions` class: fields, defaults, help, checks), whether it needs a teacher
and a target network θ⁻, how it builds its loss and which sampling grid the exported model
records. The config check, the training loop, the export and `cm train` read this registry;
nothing else in the package branches on a method's name. Adding a method is one module that
calls `register` (see `cd.py`), imported in `methods/__init__.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

from ...registry import Registry
from ...kinds import KINDS, ModelKind, get_kind
from ...parametrization import Preconditioned
from ..distances import Distance, get_distance
from ..lpips import LPIPS
from ..settings import BudgetDefault, MethodOptions, RunSettings
from .options import LPIPS_DISTANCES, DistanceOptions

if TYPE_CHECKING:
    from .loss import Loss

DEFAULT_GRID = 40       # the sampling grid N recorded by methods without a grid of their own
TEACHER_USES = ("required", "optional", "unused")


@dataclass(frozen=True)
class LossInputs:
    """What a method builds its loss from."""

    student: nn.Module                  # the trained network as the optimizer sees it (DDP-wrapped when distributed)
    network: nn.Module                  # the same network, unwrapped (stop-gradient targets evaluate it)
    target: nn.Module | None            # the EMA target θ⁻ (methods with target_network=True), else None
    teacher: Preconditioned | None      # the teacher's denoiser D (σ-space) of distillation and tuning methods
    config: RunSettings                 # the run's settings; the method's own in config.options
    device: torch.device
    distributed: bool = False           # torchrun: trainable parts of a loss are wrapped in DDP
    teacher_kind: ModelKind | None = None  # the teacher's kind (EDM or TrigFlow diffusion): its network's time

    def trainable(self, module: nn.Module) -> nn.Module:
        """A loss's own trained module (e.g. sCM's w_φ) on the run's device; DDP-wrapped when
        distributed, so its gradients are averaged over the processes as the network's are."""
        module = module.to(self.device)
        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            return nn.parallel.DistributedDataParallel(module, device_ids=ids)
        return module

    def wrap(self, network: nn.Module, parametrization: str = "consistency") -> Preconditioned:
        """`network` preconditioned with the run's σ_data and σ_min (f for "consistency", D for "edm")."""
        return get_kind(parametrization).wrapper(network, self.config.sigma_data, self.config.sigma_min)

    @property
    def options(self) -> MethodOptions:
        """The method's own settings (an instance of its `Method.options` class)."""
        return self.config.options

    def distance(self) -> Distance:
        """The run's consistency distance; LPIPS is built from the user's weight files."""
        options = self.options
        if not isinstance(options, DistanceOptions):
            raise TypeError(f"distance: {type(options).__name__} declares no distance (derive it from DistanceOptions)")
        if options.distance in LPIPS_DISTANCES:
            variant = LPIPS_DISTANCES[options.distance]
            return LPIPS.from_files(options.lpips_vgg, options.lpips_lin, variant=variant).to(self.device)
        return get_distance(options.distance)

    @property
    def sigma_range(self) -> dict[str, float]:
        cfg = self.config
        return {"sigma_min": cfg.sigma_min, "sigma_max": cfg.sigma_max, "rho": cfg.rho}


def fixed_grid(run: RunSettings) -> int:
    return DEFAULT_GRID


def constant_lr(run: RunSettings, step: int) -> float:
    return 1.0


@dataclass(frozen=True)
class Method:
    """One training method, as the rest of the package sees it."""

    name: str                                            # the value of --method
    summary: str                                         # one line for --help
    parametrization: str | Callable[[RunSettings], str]  # what the exported model is: "consistency", "edm",
                                                         # "trigflow"…, or a function of the run's settings
    build_loss: Callable[[LossInputs], "Loss"]
    options: type[MethodOptions] = MethodOptions         # its own settings (none by default)
    teacher: str = "unused"                              # "required", "optional" (to start from) or "unused"
    init_from_teacher: bool | BudgetDefault = False      # start the student from the teacher by default (or a
                                                         # function of the run with its --help text: sCD's)
    teacher_in_loss: bool = True                         # the loss reads the teacher (False: it is only the
                                                         # network to start from: a run that does not is refused)
    target_network: bool = False                         # keeps an EMA target θ⁻ (saved in checkpoints)
    student_dropout: float | None = None                 # dropout of a student started from the teacher
                                                         # (None: the teacher's), unless --dropout is given
    grid_size: Callable[[RunSettings], int] = fixed_grid  # N of the sampling grid the export records
    lr_factor: Callable[[RunSettings, int], float] = constant_lr  # --lr times this at a step (0-based)

    def __post_init__(self) -> None:
        if isinstance(self.parametrization, str) and self.parametrization not in KINDS:
            raise ValueError(f"parametrization: {self.parametrization!r} is not one of {', '.join(KINDS)}")
        shared = set(self.options.names()) & {f.name for f in fields(RunSettings)}
        if shared:
            raise ValueError(f"options: {', '.join(sorted(shared))} are settings of every run, not of one method")
        if self.teacher not in TEACHER_USES:
            raise ValueError(f"teacher: {self.teacher!r} is not one of {', '.join(TEACHER_USES)}")

    @property
    def takes_jvp(self) -> bool:
        """Whether the loss takes a JVP of the network (forward-mode AD): the methods with a --jvp option."""
        return "jvp" in self.options.names()

    def starts_from_teacher(self, run: RunSettings) -> bool:
        """Whether a run with a --teacher starts the student from it when --init-from-teacher is not given."""
        return self.init_from_teacher(run) if callable(self.init_from_teacher) else self.init_from_teacher

    def parametrization_of(self, run: RunSettings) -> str:
        """The exported model's parametrization for this run."""
        return self.parametrization(run) if callable(self.parametrization) else self.parametrization


METHODS: Registry[Method] = Registry("method")


def register(method: Method) -> Method:
    """Add `method` to the registry (a name can be registered once); returns it."""
    return METHODS.add(method.name, method)


def unregister(name: str) -> None:
    """Remove a method (for tests that register a throw-away one)."""
    METHODS.remove(name)


def get_method(name: str) -> Method:
    return METHODS.lookup(name)


def method_options() -> set[str]:
    """Every setting that belongs to some method (the others apply to every method)."""
    return {name for method in METHODS.values() for name in method.options.names()}
