"""Evaluation of a model: sharded, resumable sample generation (`cm sample --num`) and the search
of the two-step middle timestep. The metrics themselves (FID, IS, KID, precision/recall) are
`consistency_models.metrics`, which knows nothing of models."""

from .generation import generate_samples, image_generators, image_seed, sample_batches
from .timestep_search import TimestepSearch, ternary_search, tune_timesteps

__all__ = ["TimestepSearch", "generate_samples", "image_generators", "image_seed", "sample_batches",
           "ternary_search", "tune_timesteps"]
