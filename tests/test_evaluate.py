"""The evaluation API behind `cm eval`: reading sets, statistics files, and the metrics of two sets.

All with the local "digits" extractor (no downloads). The same images given as a folder of
PNGs, an ADM .npz, an array or a saved statistics file must give the same numbers.
"""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from consistency_models import InvalidInputError
from consistency_models.data.decode import decode_images
from consistency_models.io.images import save_images
from consistency_models.metrics import (
    feature_extractor,
    frechet_distance,
    gaussian_statistics,
    kernel_inception_distance,
)
from consistency_models.metrics.scores import (
    SetStatistics,
    compute_statistics,
    evaluate,
    format_table,
    load_statistics,
    save_statistics,
    write_results_json,
)
from consistency_models.metrics.sample_sets import open_image_set

# The module itself, whatever the package later exports under the name `evaluate`.
evaluate_module = sys.modules[evaluate.__module__]


@pytest.fixture(scope="module")
def extractor():
    return feature_extractor("digits")


@pytest.fixture(scope="module")
def test_images() -> np.ndarray:
    """digits:test as uint8 (300, 1, 16, 16)."""
    return next(open_image_set("digits:test").chunks(10_000))


@pytest.fixture(scope="module")
def test_stats(extractor) -> SetStatistics:
    return compute_statistics("digits:test", extractor, progress=False)


def raises(pattern: str):
    return pytest.raises(InvalidInputError, match=pattern)


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def write_pngs(folder, images: np.ndarray) -> None:
    """uint8 (N, 1, H, W) or (N, 3, H, W) images as real PNG files 0000.png, 0001.png, …"""
    folder.mkdir(exist_ok=True)
    for i, image in enumerate(images):
        hwc = image.transpose(1, 2, 0)
        Image.fromarray(hwc[..., 0] if hwc.shape[-1] == 1 else hwc).save(folder / f"{i:04d}.png")


def test_statistics_of_digits_test(test_stats, test_images, extractor):
    assert test_stats.count == 300 and test_stats.extractor == "digits" and test_stats.source == "digits:test"
    assert test_stats.features.shape == (300, 128) and test_stats.features.dtype == np.float32
    assert test_stats.logits.shape == (300, 10)
    assert test_stats.mu.dtype == np.float64 and test_stats.sigma.shape == (128, 128)
    features, _ = extractor.features_and_logits(test_images)
    mu, sigma = gaussian_statistics(features)
    np.testing.assert_allclose(test_stats.mu, mu.numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(test_stats.sigma, sigma.numpy(), rtol=0, atol=1e-10)


def test_fid_of_a_set_against_itself_is_zero(test_stats, test_images, extractor):
    results = evaluate(test_images, test_stats, extractor, progress=False)
    assert results["fid"] == pytest.approx(0.0, abs=1e-6)
    assert results["precision"] == 1.0 and results["recall"] == 1.0
    assert results["num_samples"] == results["num_reference"] == 300


def test_folder_npz_array_and_saved_statistics_agree(tmp_path, test_images, extractor, monkeypatch):
    monkeypatch.setattr(evaluate_module, "CHUNK_SIZE", 64)       # 300 images: five chunks of a folder
    write_pngs(tmp_path / "pngs", test_images)
    save_images(test_images.transpose(0, 2, 3, 1), tmp_path / "samples.npz")
    from_folder = compute_statistics(tmp_path / "pngs", extractor, progress=False)
    from_npz = compute_statistics(str(tmp_path / "samples.npz"), extractor, progress=False)
    from_array = compute_statistics(torch.from_numpy(test_images), extractor, progress=False)
    for stats in (from_folder, from_npz):                         # the same pixels in the same batches
        np.testing.assert_array_equal(stats.features, from_array.features)
        np.testing.assert_array_equal(stats.logits, from_array.logits)
    save_statistics(from_folder, tmp_path / "samples_stats.npz")

    ways = [tmp_path / "pngs", tmp_path / "samples.npz", test_images, tmp_path / "samples_stats.npz"]
    results = [evaluate(way, "digits", extractor, progress=False) for way in ways]
    for r in results[1:]:
        assert r.keys() == results[0].keys()
        for key, value in results[0].items():
            assert r[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key
    assert results[0]["fid"] > 0 and results[0]["num_reference"] == 1497


def test_statistics_round_trip(tmp_path, test_stats):
    save_statistics(test_stats, tmp_path / "ref.npz")
    loaded = load_statistics(tmp_path / "ref.npz")
    for name in ("mu", "sigma", "features", "logits"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(test_stats, name))
    assert (loaded.extractor, loaded.count, loaded.source) == ("digits", 300, str(tmp_path / "ref.npz"))
    with np.load(tmp_path / "ref.npz") as data:                 # what pytorch-fid reads of a stats file
        np.testing.assert_array_equal(data["mu"], test_stats.mu)
        assert data["sigma"].dtype == np.float64
    assert [p.name for p in tmp_path.iterdir()] == ["ref.npz"]   # no temporary file left behind

    fid_only = SetStatistics(test_stats.mu, test_stats.sigma, None, None, None, None)
    save_statistics(fid_only, tmp_path / "bare.npz")
    loaded = load_statistics(tmp_path / "bare.npz")
    assert (loaded.features, loaded.logits, loaded.extractor, loaded.count) == (None, None, None, None)


def test_pytorch_fid_style_statistics_give_fid_only(tmp_path, test_stats, extractor):
    train = compute_statistics("digits", extractor, progress=False)
    np.savez(tmp_path / "fid_stats.npz", mu=train.mu, sigma=train.sigma)
    expected = frechet_distance(train.mu, train.sigma, test_stats.mu, test_stats.sigma)

    results = evaluate(test_stats, tmp_path / "fid_stats.npz", "digits", progress=False)
    assert results["fid"] == pytest.approx(expected, rel=1e-12)
    assert results["is_mean"] > 1                                 # IS needs only the samples
    assert [results[k] for k in ("kid_mean", "kid_std", "precision", "recall")] == [None] * 4
    assert results["num_reference"] is None

    results = evaluate(tmp_path / "fid_stats.npz", test_stats, "digits", progress=False)
    assert results["fid"] == pytest.approx(expected, rel=1e-9)    # the sets swapped: equal up to rounding
    assert results["is_mean"] is None and results["is_std"] is None and results["kid_mean"] is None
    table = format_table(results)
    print("\n" + table)
    assert re.search(r"^IS \(samples\) +n/a$", table, re.MULTILINE) and re.search(r"^FID +\d", table, re.MULTILINE)


def test_openai_reference_batch_uses_its_stored_mu_sigma(tmp_path, test_images, test_stats, extractor):
    """arr_0 images plus mu/sigma of a larger set: FID from the stored Gaussian, KID from the images."""
    train = compute_statistics("digits", extractor, progress=False)
    np.savez(tmp_path / "ref_batch.npz", test_images.transpose(0, 2, 3, 1), mu=train.mu, sigma=train.sigma)
    ref = compute_statistics(tmp_path / "ref_batch.npz", extractor, progress=False)
    np.testing.assert_array_equal(ref.mu, train.mu)
    np.testing.assert_array_equal(ref.features, test_stats.features)
    results = evaluate(test_stats, ref, extractor, metrics=("fid", "kid"), kid_subsets=3, progress=False)
    assert results["fid"] == pytest.approx(frechet_distance(train.mu, train.sigma, test_stats.mu, test_stats.sigma))
    kid = kernel_inception_distance(test_stats.features, test_stats.features, 3)
    assert results["kid_mean"] == pytest.approx(kid.mean, rel=1e-12)
    assert set(results) == {"num_samples", "num_reference", "fid", "kid_mean", "kid_std"}


def test_extractor_mismatch_is_an_error(tmp_path, test_stats):
    save_statistics(test_stats, tmp_path / "digits_stats.npz")
    # Both sets are statistics: the Inception network is never built, the names are compared.
    with raises(r"^reference: .*digits_stats\.npz holds 'digits' statistics, but 'inception' features were asked "
                r"for; compute both sets with one extractor$"):
        evaluate(tmp_path / "digits_stats.npz", tmp_path / "digits_stats.npz", "inception", progress=False)
    test_as_inception = SetStatistics(**{**vars(test_stats), "extractor": "inception"})
    with raises(r"^reference: digits:test holds 'inception' statistics, but 'digits' features"):
        evaluate(tmp_path / "digits_stats.npz", test_as_inception, "digits", progress=False)
    np.savez(tmp_path / "other.npz", mu=np.zeros(5), sigma=np.eye(5))
    with raises(r"^samples: .*other\.npz holds 5-d statistics, but the 'digits' extractor gives 128-d features"):
        evaluate(tmp_path / "other.npz", test_stats, "digits", progress=False)
    with raises(r"^extractor: 'clip' is not a feature extractor; use one of inception, digits$"):
        evaluate(test_stats, test_stats, "clip")
    with raises(r"^metrics: fd given; choose from fid, is, kid, pr$"):
        evaluate(test_stats, test_stats, "digits", metrics=("fid", "fd"))


def test_bad_sources_are_one_line_errors_naming_the_argument_and_the_path(tmp_path, extractor):
    def check(source, pattern):
        with raises(pattern) as error:
            compute_statistics(source, extractor, progress=False)
        one_line(error)

    check(tmp_path / "missing", r"^source: '.*missing' is not a set of images \(no such file or folder\); use a folder")
    (tmp_path / "empty").mkdir()
    check(tmp_path / "empty", r"^source: the folder .*empty holds no PNG/JPEG images$")
    (tmp_path / "notes.txt").write_text("x")
    check(tmp_path / "notes.txt", r"^source: '.*notes\.txt' is not a set of images \(not a folder or \.npz\)")
    np.savez(tmp_path / "k.npz", images=np.zeros((2, 16, 16, 1), dtype=np.uint8))
    check(tmp_path / "k.npz", r"^source: .*k\.npz has no arr_0 \(found images\)$")
    np.savez(tmp_path / "f.npz", np.zeros((2, 16, 16, 1), dtype=np.float32))
    check(tmp_path / "f.npz", r"^source: .*f\.npz arr_0 is float32 \(2, 16, 16, 1\); need uint8")
    (tmp_path / "x.npz").write_bytes(b"nope")
    check(tmp_path / "x.npz", r"^source: .*x\.npz is not a readable \.npz file")
    np.savez(tmp_path / "s.npz", mu=np.zeros(128), sigma=np.zeros((128, 7)))
    check(tmp_path / "s.npz", r"^source: .*s\.npz has mu \(128,\) and sigma \(128, 7\); need \(D,\) and \(D, D\)$")
    np.savez(tmp_path / "v.npz", format="consistency-models/set-statistics/9", mu=np.zeros(2), sigma=np.eye(2))
    check(tmp_path / "v.npz", r"^source: .*v\.npz has format 'consistency-models/set-statistics/9'; this version reads")
    write_pngs(tmp_path / "one", np.zeros((1, 1, 16, 16), dtype=np.uint8))
    check(tmp_path / "one", r"^source: .*one holds 1 image; statistics need at least 2$")
    check(np.zeros((4, 16, 16, 1), dtype=np.uint8), r"^images: uint8 array of shape \(4, 16, 16, 1\); need uint8 \(N, C")

    with raises(r"^path: .*fid\.npz is not a statistics file: it has no mu and sigma \(found arr_0\)$"):
        np.savez(tmp_path / "fid.npz", np.zeros((2, 16, 16, 1), dtype=np.uint8))
        load_statistics(tmp_path / "fid.npz")
    with raises(r"^path: '.*stats\.json' must end in \.npz for a statistics file$"):
        save_statistics(SetStatistics(np.zeros(2), np.eye(2), None, None, None, None), tmp_path / "stats.json")


def test_folder_chunks_keep_the_first_images_size_and_channels(tmp_path, monkeypatch):
    monkeypatch.setattr(evaluate_module, "CHUNK_SIZE", 2)
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (3, 1, 16, 16), dtype=np.uint8)
    rgb = rng.integers(0, 256, (2, 3, 16, 16), dtype=np.uint8)
    write_pngs(tmp_path / "mixed", gray)
    for i, image in enumerate(rgb):                               # files 0003, 0004: RGB, in the second chunk
        Image.fromarray(image.transpose(1, 2, 0)).save(tmp_path / "mixed" / f"{i + 3:04d}.png")
    images = np.concatenate(list(open_image_set(tmp_path / "mixed").chunks(2)))
    files = [(str(p), lambda p=p: open(p, "rb")) for p in sorted((tmp_path / "mixed").iterdir())]
    np.testing.assert_array_equal(images, decode_images(files, image_mode="gray").transpose(0, 3, 1, 2))  # all gray
    assert images.shape == (5, 1, 16, 16)

    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "mixed" / "0005.png")
    with raises(r"^source: .*0005\.png is 8×8 but .*0000\.png is 16×16; the images must have one size"):
        compute_statistics(tmp_path / "mixed", "digits", progress=False)


def test_results_json_and_table(tmp_path, test_stats):
    results = evaluate(test_stats, test_stats, "digits", metrics=["fid", "pr"], progress=False)
    assert abs(results["fid"]) < 1e-9                 # identical sets; the matrix square root leaves ~1e-12 on some CPUs
    results["fid"] = 0.0
    write_results_json(results, tmp_path / "eval.json")
    assert json.loads((tmp_path / "eval.json").read_text()) == results
    assert format_table(results).splitlines() == [
        "images (samples)    300", "images (reference)  300", "FID                 0",
        "precision           1", "recall              1",
    ]
    results["recall"] = None
    write_results_json(results, tmp_path / "eval.json")
    assert json.loads((tmp_path / "eval.json").read_text())["recall"] is None
    with raises(r"^path: the folder .*nowhere does not exist$"):
        write_results_json(results, tmp_path / "nowhere" / "eval.json")


def test_digits_train_is_close_to_test_and_noise_is_far(test_stats, extractor):
    train = evaluate("digits", test_stats, extractor, metrics=("fid", "kid"), kid_subsets=10, progress=False)
    noise = np.random.default_rng(0).integers(0, 256, (300, 1, 16, 16), dtype=np.uint8)
    far = evaluate(noise, "digits:test", extractor, metrics=("fid", "kid"), kid_subsets=10, progress=False)
    print(f"\nFID digits train vs test {train['fid']:.4f}, noise vs test {far['fid']:.4f}; "
          f"KID {train['kid_mean']:.5f} vs {far['kid_mean']:.5f}")
    assert 0 < train["fid"] < 5
    assert far["fid"] > 20 * train["fid"] and far["kid_mean"] > 20 * train["kid_mean"]


def test_inception_score_of_fewer_images_than_splits(tmp_path, test_images, test_stats, extractor):
    """Six samples get an IS over six splits (one image each, the score then is exactly 1) instead of
    an error about a setting cm eval does not even expose; the table says how many splits."""
    np.savez(tmp_path / "six.npz", test_images[:6].transpose(0, 2, 3, 1))
    results = evaluate(tmp_path / "six.npz", test_stats, "digits", metrics=["is"], progress=False)
    assert results["is_splits"] == 6
    assert results["is_mean"] == pytest.approx(1.0, abs=1e-6) and results["is_std"] == pytest.approx(0.0, abs=1e-6)
    assert "(6 splits: fewer images than the usual 10)" in format_table(results)
    eleven = evaluate(np.asarray(test_images[:11]), test_stats, "digits", metrics=["is"], progress=False)
    assert eleven["is_splits"] == 10 and "splits" not in format_table(eleven)
