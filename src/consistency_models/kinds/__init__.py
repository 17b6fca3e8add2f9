"""Model kinds: what a network's output means, and everything that follows from it.

A kind is one record (`ModelKind`): how a raw network becomes a consistency function f or a
denoiser D (its `Preconditioned` wrapper), how it samples (its `Sampler`: σ schedule, loop and
re-noising), which diffusers scheduler its folders carry, its TrigFlow time input, whether it
can teach a distillation, which OpenAI checkpoints convert to it, how many time inputs its
network takes and which tools do not apply to it. The pipeline, the folder
reader and writer, the converter, the timestep search, training and the CLI read this registry;
nothing else compares a kind's name. Adding a kind is one module that calls `register`, imported
below (MeanFlow's average velocity, `meanflow.py`, was the latest).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from ..errors import InvalidInputError
from ..registry import Registry
from ..sampling import Sampler

SCHEDULER_CLASS = "CMStochasticIterativeScheduler"   # diffusers' consistency-model scheduler
TRIGFLOW_SCHEDULER_CLASS = "SCMScheduler"           # diffusers' sCM scheduler (prediction_type "trigflow")


@dataclass(frozen=True)
class ModelKind:
    """One kind of model, declared in one place."""

    name: str                               # the `parametrization` of pipelines and folders
    summary: str                            # what it is, for messages: "a diffusion (EDM) model"
    wrapper: Callable[..., nn.Module]       # wrapper(network, sigma_data, sigma_min): f or D in σ-space (a
                                            # `Preconditioned`), or what its sampler evaluates (MeanFlow's u)
    sampler: Sampler
    scheduler_class: str = SCHEDULER_CLASS  # the diffusers scheduler its folders read and write
    scheduler_library: str = "diffusers"    # the library model_index.json names for it
    time_input: str | None = None           # a TrigFlow network's time input: "t" or "log_sigma"
    teacher: bool = False                   # a denoiser distillation (CD, sCD) and tuning (ECT) learn from
    openai_prefix: str | None = None        # OpenAI checkpoints named so convert to it (None: no conversion)
    grid_search: str | None = None          # why `cm tune-timesteps` does not apply (None: it does)
    editing: str | None = None              # why zero-shot editing does not apply (None: it does)
    time_inputs: int = 1                    # time inputs of its network (MeanFlow's: t and t − r)
    network_time: str = "log_sigma"         # what its network's time input measures: EDM's c_noise of σ,
                                            # TrigFlow's "t" or MeanFlow's "flow_t" (--init-from must match)
    uses_sigmas: bool = True                # its settings include the noise levels' σ range, σ_data and ρ
                                            # (MeanFlow: no, its times run from 0 to 1)


KINDS: Registry[ModelKind] = Registry("parametrization")


def register(kind: ModelKind) -> ModelKind:
    return KINDS.add(kind.name, kind)


def unregister(name: str) -> None:
    KINDS.remove(name)


def get_kind(name: object) -> ModelKind:
    """The kind called `name`, or a one-line error naming the allowed ones."""
    return KINDS.lookup(name)


def kind_of_scheduler(scheduler_class: str) -> ModelKind:
    """The kind a folder or pipeline with this scheduler is when it says nothing else: the first
    registered with it (the default kind for a scheduler no kind names)."""
    return next((kind for kind in KINDS.values() if kind.scheduler_class == scheduler_class), default_kind())


def kinds_of_scheduler(scheduler_class: str) -> list[str]:
    return [kind.name for kind in KINDS.values() if kind.scheduler_class == scheduler_class]


def kind_with_time_input(time_input: str) -> ModelKind:
    """The TrigFlow kind whose network takes `time_input`."""
    for kind in KINDS.values():
        if kind.time_input == time_input:
            return kind
    raise InvalidInputError(f"time_input: {time_input!r} is not one of {', '.join(time_inputs())}")


def time_inputs() -> tuple[str, ...]:
    return tuple(kind.time_input for kind in KINDS.values() if kind.time_input is not None)


def teacher_kind(network_time: str = "log_sigma") -> ModelKind:
    """The kind of a distillation teacher whose network takes `network_time`: the EDM denoiser
    (log_sigma) or the TrigFlow diffusion model (t)."""
    for kind in KINDS.values():
        if kind.teacher and kind.network_time == network_time:
            return kind
    teachers = [f"{kind.network_time} ({kind.name})" for kind in KINDS.values() if kind.teacher]
    raise InvalidInputError(f"time_input: {network_time!r} is not one of {', '.join(teachers)}")


def openai_kinds() -> list[str]:
    return [kind.name for kind in KINDS.values() if kind.openai_prefix is not None]


def kind_of_openai_file(file_name: str) -> ModelKind:
    """The kind an OpenAI checkpoint converts to by its file name: the longest matching prefix, in
    any case (edm_* or EDM_* → the EDM denoiser, anything else → a consistency function)."""
    matches = [kind for kind in KINDS.values() if kind.openai_prefix is not None
               and file_name.lower().startswith(kind.openai_prefix.lower())]
    return max(matches, key=lambda kind: len(kind.openai_prefix))


def default_kind() -> ModelKind:
    """The kind a folder is when model_index.json names none: the first registered."""
    return next(iter(KINDS.values()))


from . import consistency, edm, trigflow, meanflow  # noqa: E402,F401  (the built-in kinds register themselves, in this order)

__all__ = ["KINDS", "ModelKind", "SCHEDULER_CLASS", "TRIGFLOW_SCHEDULER_CLASS", "default_kind", "get_kind",
           "kind_of_openai_file", "kind_of_scheduler", "kind_with_time_input", "kinds_of_scheduler", "openai_kinds",
           "register", "teacher_kind", "time_inputs", "unregister"]
