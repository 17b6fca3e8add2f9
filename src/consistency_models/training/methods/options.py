"""The options several training methods share, declared once each (help, check), with the
default given by each method's `MethodOptions` class (`settings.py`); and the consistency
distance's options with their check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...errors import InvalidInputError, about
from ...io.pipeline_folder import folder_kind
from ...trigflow import TIME_INPUTS
from ..distances import DISTANCES
from ..jvp import JVP_MODES
from ..settings import FINITE, BudgetDefault, MethodOptions, RunSettings, integer_range, positive_number, setting

MAX_SCALES = 100_000  # discretisation steps N (s0, s1): the papers use at most 1,281; each level is a float
LPIPS_DISTANCES = {"lpips": "openai", "lpips_standard": "standard"}  # --distance → LPIPS variant


# -- options shared by several methods: one help text and one check each, the default per method --

def s0_option(default: int) -> Any:
    return setting(default, "curriculum start (initial grid size term)", check=integer_range(1, MAX_SCALES))


def s1_option(default: int | None, budget: BudgetDefault | None = None) -> Any:
    return setting(default, "curriculum end (final grid size term)", check=integer_range(1, MAX_SCALES),
                   budget=budget)


def p_mean_option(default: float | None, budget: BudgetDefault | None = None) -> Any:
    return setting(default, "mean of the log-sigma proposal ln sigma ~ N(P_mean, P_std^2) (sCM: t = arctan(sigma/sigma_data); "
                            "TCM's stage 2: truncated to [t', sigma_max])",
                   check=FINITE, budget=budget)


def p_std_option(default: float | None, budget: BudgetDefault | None = None) -> Any:
    return setting(default, "std of the log-sigma proposal", check=positive_number("a number > 0"), budget=budget)


def time_input_option(default: str | None, budget: BudgetDefault | None = None) -> Any:
    return setting(default, "the network's time input: log_sigma (EDM's c_noise = 250 ln sigma; in sCM's time "
                            "250 ln(sigma_d tan t)) or t (TrigFlow's c_noise(t) = t, the sCM paper's). --method edm "
                            "--time-input t trains a TrigFlow diffusion model, the teacher scd starts its student from",
                   choices=TIME_INPUTS, budget=budget)


def teacher_time(run: RunSettings) -> str:
    """What the network of the run's --teacher takes as its time (read from its model_index.json)."""
    try:
        return folder_kind(run.teacher).network_time
    except InvalidInputError as exc:
        raise about("teacher", exc) from None


def jvp_option(default: str) -> Any:
    return setting(default, "how the time derivative is computed: exact (forward-mode AD) or fd (float64 finite "
                            "difference, a reference)", choices=JVP_MODES)


def distance_option(default: str) -> Any:
    return setting(default, "consistency distance; lpips (as OpenAI trains: average pools, resize to 224 below "
                            "256 px) and lpips_standard (the lpips package: max pools, always 224) need "
                            "--lpips-vgg and --lpips-lin", choices=(*DISTANCES, *LPIPS_DISTANCES))


@dataclass
class DistanceOptions(MethodOptions):
    """A consistency distance between student and target outputs, LPIPS from the user's weight files."""

    distance: str = distance_option("l2")
    lpips_vgg: str | None = setting(None, "VGG-16 weights file (torchvision layout) for lpips")
    lpips_lin: str | None = setting(None, "LPIPS linear-layer weights file (vgg.pth v0.1) for lpips")

    def check(self, run: RunSettings) -> None:
        if (self.lpips_vgg or self.lpips_lin) and self.distance not in LPIPS_DISTANCES:
            given = "lpips_vgg" if self.lpips_vgg else "lpips_lin"
            raise InvalidInputError(f"{given}: given, but --distance is not lpips or lpips_standard")
        if self.distance in LPIPS_DISTANCES and not (self.lpips_vgg and self.lpips_lin):
            raise InvalidInputError(f"distance: {self.distance} needs --lpips-vgg and --lpips-lin weight files "
                                    "(nothing is downloaded)")


@dataclass
class CurriculumOptions(DistanceOptions):
    """A consistency distance and a grid that a curriculum grows from s0 to s1 (CT, iCT); the
    method declares `s0` and `s1` with its defaults."""

    def check(self, run: RunSettings) -> None:
        super().check(run)
        s0, s1 = getattr(self, "s0"), getattr(self, "s1")
        if s1 < s0:
            raise InvalidInputError(f"s1: {s1} is below --s0 {s0}; the curriculum grows the grid from s0 to s1 points")
