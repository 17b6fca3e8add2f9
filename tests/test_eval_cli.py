"""`cm sample --num` + `cm eval` + `cm tune-timesteps` end to end on the embedded model, offline."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_cli import run_cli


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    """120 one-step digits written twice: in batches of 120 and of 7 (the same images)."""
    d = tmp_path_factory.mktemp("eval")
    for name, batch in (("a.npz", "120"), ("b.npz", "7")):
        from consistency_models.cli import main

        assert main(["sample", "--num", "120", "--batch-size", batch, "--seed", "3", "--out", str(d / name)]) == 0
    return d


def test_fid_of_the_embedded_model_against_held_out_digits(samples, capsys):
    out = samples / "results.json"
    code, stdout, err = run_cli(capsys, "eval", "--samples", str(samples / "a.npz"), "--ref", "digits:test",
                                "--features", "digits", "--json", str(out))
    assert code == 0, err
    results = json.loads(out.read_text())
    print(f"\nembedded model, 120 one-step samples vs 300 held-out digits: {results}")
    assert results["num_samples"] == 120 and results["num_reference"] == 300
    assert 0 < results["fid"] < 5  # the data floor (train vs test digits) is about 0.7 with 300 vs 1200
    assert 0 <= results["precision"] <= 1 and 0 <= results["recall"] <= 1
    assert "FD " in stdout and "FID" not in stdout and "KID" in stdout  # digits features: a Fréchet distance, not FID


def test_same_fid_for_every_batch_size_and_through_saved_statistics(samples, capsys):
    fids = []
    for name in ("a.npz", "b.npz"):
        code, _, err = run_cli(capsys, "eval", "--samples", str(samples / name), "--ref", "digits:test",
                               "--features", "digits", "--metrics", "fid", "--json", str(samples / f"{name}.json"))
        assert code == 0, err
        fids.append(json.loads((samples / f"{name}.json").read_text())["fid"])
    code, _, err = run_cli(capsys, "eval", "--samples", "digits:test", "--features", "digits",
                           "--save-stats", str(samples / "ref.npz"))
    assert code == 0, err
    # No --features: the statistics file records its extractor (digits), which is used (not Inception).
    code, _, err = run_cli(capsys, "eval", "--samples", str(samples / "a.npz"), "--ref", str(samples / "ref.npz"),
                           "--metrics", "fid", "--json", str(samples / "s.json"))
    assert code == 0, err
    saved = json.loads((samples / "s.json").read_text())
    fids.append(saved["fid"])
    assert fids[0] == fids[1] and saved["features"] == "digits"
    assert fids[2] == pytest.approx(fids[0], rel=1e-9)
    code, stdout, err = run_cli(capsys, "tune-timesteps", "--ref", str(samples / "ref.npz"), "--num", "8",
                                "--lo", "9", "--hi", "10")
    assert code == 0 and "), FD " in stdout, err   # FD of digits features; FID would be Inception's
    from consistency_models.metrics.scores import SetStatistics, save_statistics
    other = samples / "inception.npz"   # statistics of another extractor: which one to use is not guessed
    save_statistics(SetStatistics(np.zeros(2048), np.eye(2048), None, None, "inception", 10), other)
    code, _, err = run_cli(capsys, "eval", "--samples", str(samples / "ref.npz"), "--ref", str(other))
    assert code == 2 and err == ("cm: error: features: the statistics files hold features of two extractors (--samples "
                                 "'digits' and --ref 'inception'); compute both sets with one\n"), err


def test_tune_timesteps_prints_the_best_index(samples, capsys):
    code, stdout, err = run_cli(capsys, "tune-timesteps", "--ref", "digits:test", "--features", "digits",
                                "--num", "32", "--lo", "7", "--hi", "10")
    assert code == 0, err
    assert "best: --timesteps" in stdout and stdout.count("t = ") >= 3
    assert err.startswith("num: fewer images (32) than the 128 digits feature dimensions: far above the many-image "
                          "value; compare only scores of equal image counts (each candidate's score is of --num "
                          "samples)\n"), err


def test_the_table_says_when_the_distance_comes_from_fewer_images_than_dimensions():
    """The covariance of N < D features is singular: e.g. 100 digits images (128 dimensions)."""
    from consistency_models.metrics.scores import format_table

    def fid_row(features: str, samples: int, reference: int = 10_000) -> str:
        table = format_table({"features": features, "num_samples": samples, "num_reference": reference, "fid": 3.0})
        return next(line for line in table.splitlines() if line.startswith("F"))

    assert fid_row("digits", 100).endswith("3 (fewer images (100) than the 128 digits feature dimensions: far above the "
                                           "many-image value; compare only scores of equal image counts)")
    assert fid_row("digits", 128).endswith("  3") and fid_row("digits", 500, 64).startswith("FD ")
    assert "(64)" in fid_row("digits", 500, 64) and "2048 inception" in fid_row("inception", 2047)
    assert fid_row("inception", 2048).endswith("  3")


@pytest.mark.parametrize("argv, message", [
    (["eval", "--samples", "digits:test", "--ref", "digits"], "put it at"),  # offline, no weights file
    (["eval", "--samples", "digits:test", "--ref", "digits", "--features", "digits", "--inception-weights", "x"],
     "inception-weights: given, but --features is not inception"),
    (["eval", "--samples", "missing", "--ref", "digits", "--features", "digits"], "'missing' is not a set of images"),
    (["eval", "--samples", "digits:test", "--features", "digits"], "ref: give the reference set"),
    # said before the samples' features are made (no progress bar of that pass before the line)
    (["eval", "--samples", "digits:test", "--ref", "nosuch", "--features", "digits"],
     "cm: error: ref: 'nosuch' is not a set of images (no such file or folder)"),
    (["tune-timesteps", "--ref", "digits:test", "--features", "digits", "--lo", "20"], "search range: [20, 16]"),
])
def test_eval_errors_are_one_line(capsys, monkeypatch, tmp_path, no_network, argv, message):
    monkeypatch.setenv("HOME", str(tmp_path))  # no cached Inception weights
    monkeypatch.delenv("CM_INCEPTION_WEIGHTS", raising=False)
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    assert message in err and err.count("\n") == 1 and "features" not in err.split("error:")[0], err
