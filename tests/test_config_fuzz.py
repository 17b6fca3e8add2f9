"""A fuzz pass over the config readers: every field of a model folder's `unet/config.json`,
`scheduler/scheduler_config.json` and `model_index.json` set to values of every JSON type (and
a few crafted ones); reading the folder gives a valid model or an `InvalidInputError` — never
another exception. Seeded, so a failure reproduces."""

from __future__ import annotations

import json
import random
import shutil

import pytest

from consistency_models import ConsistencyModelPipeline, InvalidInputError

CASES = 100
VALUES = [None, True, False, -1, 0, 1, 2, 3, 8, 16, 32, 40, 2.5, -0.5, 1e9, 10**12, float("nan"), float("inf"),
          "", "x", "40", [], [1], [32, 64], ["AttnDownBlock2D"], {}, {"a": 1}]


def fuzzed(data: dict, rng: random.Random, fields: int) -> dict:
    data = dict(data)
    for key in rng.sample(sorted(data), min(fields, len(data))):
        data[key] = rng.choice(VALUES)
    if rng.random() < 0.2:
        data[rng.choice(["extra", "_class_name", "sample_size"])] = rng.choice(VALUES)
    return data


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "model"
    ConsistencyModelPipeline.from_pretrained("digits").save_pretrained(path)
    return path


@pytest.mark.parametrize("part", ["unet/config.json", "scheduler/scheduler_config.json", "model_index.json"])
def test_config_readers_give_a_model_or_a_clean_error(tmp_path, folder, part):
    rng = random.Random(f"fuzz-{part}")
    original = json.loads((folder / part).read_text())
    outcomes = {"loaded": 0, "refused": 0}
    for case in range(CASES):
        copy = tmp_path / f"case{case}"
        shutil.copytree(folder, copy)
        (copy / part).write_text(json.dumps(fuzzed(original, rng, rng.randint(1, 3))))
        try:
            ConsistencyModelPipeline.from_pretrained(copy)
            outcomes["loaded"] += 1
        except InvalidInputError as exc:
            assert "\n" not in str(exc) and str(exc), exc
            outcomes["refused"] += 1
        shutil.rmtree(copy)
    print(f"\n{part}: {outcomes}")
    assert sum(outcomes.values()) == CASES  # and no other exception escaped
