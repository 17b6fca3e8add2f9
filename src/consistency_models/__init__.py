"""consistency_models: one-step and few-step image generation with consistency models.

Song, Dhariwal, Chen, Sutskever (2023), "Consistency Models", arXiv 2303.01469; continuous-time
consistency models (sCT, sCD; TrigFlow) after Lu & Song (2024), arXiv 2410.11081.
"""

from .errors import InvalidInputError
from .networks import PRESETS, UNetConfig, UNetModel, preset
from .parametrization import (
    ConsistencyFunction,
    Denoiser,
    TrigFlowFunction,
    consistency_scalings,
    edm_scalings,
    karras_sigmas,
    noise_conditioning,
)
from .pipeline import ConsistencyModelPipeline, ImagePipelineOutput, create_model_folder
from .sampling import sample_consistency, sample_heun, sample_trigflow
from .schedule import NoiseLevels, SchedulerConfig, resolve_sigmas
from .scheduler import CMStochasticIterativeScheduler
from .trigflow import TrigFlow

__version__ = "0.1.0"

__all__ = [
    "CMStochasticIterativeScheduler",
    "ConsistencyFunction",
    "ConsistencyModelPipeline",
    "Denoiser",
    "ImagePipelineOutput",
    "InvalidInputError",
    "NoiseLevels",
    "PRESETS",
    "SchedulerConfig",
    "TrigFlow",
    "TrigFlowFunction",
    "UNetConfig",
    "UNetModel",
    "consistency_scalings",
    "create_model_folder",
    "edm_scalings",
    "karras_sigmas",
    "noise_conditioning",
    "preset",
    "resolve_sigmas",
    "sample_consistency",
    "sample_heun",
    "sample_trigflow",
]
