"""Sample-quality metrics."""

from .frechet import RunningStatistics, frechet_distance, gaussian_statistics
from .sliced_wasserstein import sliced_wasserstein

__all__ = ["RunningStatistics", "frechet_distance", "gaussian_statistics", "sliced_wasserstein"]
