"""Timestep search: ternary search against brute force on unimodal functions, and the FID search
on the embedded model scoring every candidate on the same images."""

from __future__ import annotations

import random

import pytest
import torch

import consistency_models as cm
import consistency_models.data  # noqa: F401  (cm.data below, whatever else the run imported)
from consistency_models.metrics import feature_extractor, gaussian_statistics
from consistency_models.evaluation.timestep_search import frechet_distance_of_samples, ternary_search, tune_timesteps


@pytest.mark.parametrize("trial", range(30))
def test_ternary_search_finds_the_minimum_of_unimodal_functions(trial):
    rng = random.Random(trial)
    lo, hi = rng.randint(0, 5), rng.randint(6, 60)
    target = rng.uniform(lo - 2, hi + 2)
    power = rng.choice([1.0, 2.0, 0.5])
    values = {i: abs(i - target) ** power for i in range(lo, hi + 1)}
    best, evaluated = ternary_search(values.__getitem__, lo, hi)
    assert values[best] == min(values.values())
    assert set(evaluated) <= set(values)
    if hi - lo > 20:
        assert len(evaluated) < (hi - lo + 1) / 2  # far fewer evaluations than trying every index


def test_ternary_search_single_point_and_empty_range():
    assert ternary_search(lambda i: 0.0, 4, 4)[0] == 4
    with pytest.raises(cm.InvalidInputError, match="empty"):
        ternary_search(lambda i: 0.0, 5, 4)


@pytest.fixture(scope="module")
def digits_setup():
    pipe = cm.ConsistencyModelPipeline.from_pretrained("digits")
    extractor = feature_extractor("digits")
    held_out = ((cm.data.load_dataset("digits:test").x / 2 + 0.5) * 255).round().to(torch.uint8)
    return pipe, extractor, gaussian_statistics(extractor.features(held_out))


def test_tune_timesteps_on_the_embedded_model(digits_setup):
    pipe, extractor, reference = digits_setup
    result = tune_timesteps(pipe, extractor, reference, num=64, batch_size=32, lo=2, hi=12, progress=False)
    print(f"\nbest middle index {result.index} (sigma {result.sigma:.4g}), FD {result.score:.4f}; tried {result.scores}")
    assert result.score == min(result.scores.values())
    assert result.sigma == pytest.approx(cm.karras_sigmas(18)[result.index].item())
    # the reported score is the FD of exactly those samples, recomputed independently
    again = frechet_distance_of_samples(pipe, extractor, reference, 64, [result.index, 0], batch_size=16)
    assert again == pytest.approx(result.score, rel=1e-6)  # features in other batches: float rounding only


@pytest.mark.parametrize("kwargs, message", [
    ({"lo": 0}, r"search range: \[0, 16\] must lie within \[1, 16\]"),
    ({"hi": 17}, r"search range: \[1, 17\]"),
    ({"lo": 10, "hi": 3}, r"^search range: lo 10 is above hi 3; give lo <= hi$"),  # both on the grid
    ({"num": 1}, "num: 1 must be a number of images from 2 to 100000000"),
    ({"num": 2**63}, "num: 9223372036854775808 must be a number of images from 2 to 100000000"),
])
def test_bad_search_arguments(digits_setup, kwargs, message):
    pipe, extractor, reference = digits_setup
    with pytest.raises(cm.InvalidInputError, match=message):
        tune_timesteps(pipe, extractor, reference, progress=False, **kwargs)


def test_edm_models_are_refused(digits_setup):
    _, extractor, reference = digits_setup
    teacher = cm.ConsistencyModelPipeline.from_pretrained("digits-teacher")
    with pytest.raises(cm.InvalidInputError, match="diffusion"):
        tune_timesteps(teacher, extractor, reference, num=4, progress=False)
