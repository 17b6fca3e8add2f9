"""Choosing the intermediate noise level of two-step sampling by ternary search on FID.

OpenAI's consistency-model release picks the middle point of `ts = 0, t, N−1` by a ternary
search over the grid index t (its `ternary_search.sh`), assuming the FID of two-step samples
is unimodal in t. Here every candidate is scored on the same `num` images (image i always
starts from the noise of its own seed, so candidates differ only in t), with the Fréchet
distance of the chosen features against reference statistics.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..errors import InvalidInputError, is_integer
from ..metrics.features import FeatureExtractor
from ..metrics.frechet import RunningStatistics, frechet_distance
from ..parametrization import karras_sigmas
from ..pipeline import ConsistencyModelPipeline
from ..schedule import NoiseLevels
from .generation import MAX_IMAGES, sample_batches


@dataclass
class TimestepSearch:
    """The best grid index t of `ts = 0, t, N−1` (diffusers: `timesteps=[t, 0]`), its σ and score."""

    index: int
    sigma: float
    score: float
    scores: dict[int, float] = field(default_factory=dict)  # every index evaluated → its score
    sigmas: dict[int, float] = field(default_factory=dict)  # every index evaluated → its σ


def ternary_search(score: Callable[[int], float], lo: int, hi: int) -> tuple[int, dict[int, float]]:
    """The integer in [lo, hi] minimising a unimodal `score`, each point evaluated at most once.

    Shrinks [lo, hi] by thirds while more than three points remain, then tries what is left.
    """
    if lo > hi:
        raise InvalidInputError(f"search range: [{lo}, {hi}] is empty")
    cache: dict[int, float] = {}

    def f(i: int) -> float:
        if i not in cache:
            cache[i] = float(score(i))
        return cache[i]

    while hi - lo > 2:
        m1, m2 = lo + (hi - lo) // 3, hi - (hi - lo) // 3
        if f(m1) < f(m2):
            hi = m2 - 1
        else:
            lo = m1 + 1
    best = min(range(lo, hi + 1), key=f)
    return best, cache


def most_candidates(lo: int, hi: int) -> int:
    """The most points `ternary_search` evaluates on [lo, hi]: two per shrinking round (the range
    shrinks by the same amount whichever side is cut), then those left."""
    count = 0
    while hi - lo > 2:
        hi -= (hi - lo) // 3 + 1
        count += 2
    return count + hi - lo + 1


def frechet_distance_of_samples(
    pipe: ConsistencyModelPipeline,
    extractor: FeatureExtractor,
    reference: tuple[torch.Tensor, torch.Tensor],   # (μ, Σ) of the reference features
    num: int,
    timesteps: list[int],
    batch_size: int = 64,
    seed: int = 0,
    class_labels: int | None = None,
    progress: Callable[[int], object] | None = None,   # called with each batch's number of images
) -> float:
    """FD between the features of `num` samples (images 0 … num−1 of `seed`) and the reference."""
    stats = RunningStatistics()
    for _, images, _ in sample_batches(pipe, range(num), batch_size, seed, class_labels,
                                     NoiseLevels(timesteps=tuple(timesteps))):
        stats.update(extractor.features(torch.from_numpy(images).permute(0, 3, 1, 2)))
        if progress is not None:
            progress(len(images))
    mu, sigma = stats.finalize()
    value = frechet_distance(mu, sigma, *reference)
    if not math.isfinite(value):
        raise InvalidInputError(f"ref: the Fréchet distance of t = {timesteps[0]} is {value}; the reference "
                                "statistics or the samples hold non-finite values")
    return value


def search_range(pipe: ConsistencyModelPipeline, lo: int = 1, hi: int | None = None) -> tuple[int, int]:
    """Check a search range against the model's grid; hi defaults to N − 2 (N − 1 is σ_min itself)."""
    if pipe.kind.grid_search is not None:
        raise InvalidInputError(f"model: the timestep search is over the grid of consistency models; this is "
                                f"{pipe.kind.grid_search}")
    if not pipe.is_image_model:
        raise InvalidInputError("model: the timestep search scores images by their features; this model makes points")
    n = pipe.sampling_config.num_train_timesteps
    if n < 3:
        raise InvalidInputError(f"model: its grid has {n} points, so two-step sampling has no middle timestep to "
                                "search (3 points or more are needed)")
    hi = n - 2 if hi is None else hi
    if not (1 <= lo <= n - 2 and 1 <= hi <= n - 2):
        raise InvalidInputError(f"search range: [{lo}, {hi}] must lie within [1, {n - 2}] for the model's "
                                f"{n}-point grid")
    if lo > hi:
        raise InvalidInputError(f"search range: lo {lo} is above hi {hi}; give lo <= hi")
    return lo, hi


def tune_timesteps(
    pipe: ConsistencyModelPipeline,
    extractor: FeatureExtractor,
    reference: tuple[torch.Tensor, torch.Tensor],
    num: int = 5000,
    batch_size: int = 64,
    seed: int = 0,
    class_labels: int | None = None,
    lo: int = 1,
    hi: int | None = None,                           # default: N − 2 (N − 1 is σ_min itself)
    progress: bool = True,
) -> TimestepSearch:
    """Ternary search of the two-step middle index t ∈ [lo, hi] on the model's N-point grid."""
    lo, hi = search_range(pipe, lo, hi)
    cfg = pipe.sampling_config
    n = cfg.num_train_timesteps
    if not is_integer(num) or not 2 <= num <= MAX_IMAGES:
        raise InvalidInputError(f"num: {num!r} must be a number of images from 2 to {MAX_IMAGES}")
    num = int(num)
    extractor.check_size(*pipe.sample_shape[1:])
    # Counted in images, candidates × num (the search's most: cached points end it early).
    bar = tqdm(total=most_candidates(lo, hi) * num, desc="timestep search", unit="img", disable=not progress)

    def score(t: int) -> float:
        bar.set_postfix(t=t)
        value = frechet_distance_of_samples(pipe, extractor, reference, num, [t, 0], batch_size, seed, class_labels,
                                            progress=bar.update)
        bar.set_postfix(t=t, score=f"{value:.4g}")
        return value

    with bar:
        best, scores = ternary_search(score, lo, hi)
        bar.total = bar.n
        bar.refresh()
    grid = karras_sigmas(n, cfg.sigma_min, cfg.sigma_max, cfg.rho)
    return TimestepSearch(best, float(grid[best]), scores[best], dict(sorted(scores.items())),
                          {i: float(grid[i]) for i in sorted(scores)})
