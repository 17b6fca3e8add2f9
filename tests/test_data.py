"""The data layer on real files: PNG/JPEG folders, EDM zips, ADM npz files, digits and 2-D toys.

Every image source is written into tmp_path with Pillow / zipfile / numpy and read back through
`load_dataset`; the expected tensors are computed from the written pixels (v/127.5 − 1).
"""

from __future__ import annotations

import json
import math
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from consistency_models import InvalidInputError
from consistency_models.data import (
    ImageDataset,
    PointDataset,
    load_dataset,
    mog8_denoiser,
    mog8_mixture,
)
from consistency_models.data.digits import raw_digits, split_indices


def rgb(seed: int, size=(6, 6)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def gray(seed: int, size=(6, 6)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0]), dtype=np.uint8)


def save(path, array: np.ndarray, fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)


def as_x(array: np.ndarray) -> torch.Tensor:
    """HWC or HW uint8 → CHW float32 in [−1, 1], as the datasets convert."""
    a = np.array(array[..., None] if array.ndim == 2 else array)
    return torch.from_numpy(a).permute(2, 0, 1).float() / 127.5 - 1


def raises(match: str):
    return pytest.raises(InvalidInputError, match=match)


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


# -- digits ------------------------------------------------------------------------------------
def test_digits_raw_file_is_sklearn_digits():
    images, labels = raw_digits()
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8
    assert labels.shape == (1797,) and labels.dtype == np.int64
    assert images.min() == 0 and images.max() == 16
    # scikit-learn's published per-class counts of load_digits().
    assert np.bincount(labels).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def test_digits_split_sizes_disjoint_and_documented():
    train, test = split_indices("train"), split_indices("test")
    assert len(train) == 1497 and len(test) == 300
    assert not set(train.tolist()) & set(test.tolist())
    assert sorted(train.tolist() + test.tolist()) == list(range(1797))
    perm = np.random.default_rng(0).permutation(1797)
    np.testing.assert_array_equal(train, perm[:1497])
    np.testing.assert_array_equal(test, perm[1497:])

    ds_train, ds_test = load_dataset("digits"), load_dataset("digits:test")
    assert len(ds_train) == 1497 and len(ds_test) == 300
    images, labels = raw_digits()
    np.testing.assert_array_equal(ds_test.tensors()[1].numpy(), labels[perm[1497:]])


@pytest.mark.parametrize("resolution, side", [(None, 16), (16, 16), (32, 32), (8, 8)])
def test_digits_images(resolution, side):
    ds = load_dataset("digits:test", resolution=resolution)
    x, y = ds.tensors()
    assert isinstance(ds, ImageDataset) and ds.kind == "image"
    assert ds.shape == (1, side, side) and x.shape == (300, 1, side, side) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1 and x.min() == -1
    assert ds.num_classes == 10 and y.dtype == torch.int64 and 0 <= y.min() and y.max() <= 9
    images, _ = raw_digits()
    raw = torch.from_numpy(images[split_indices("test")].astype(np.float32))[:, None] / 8 - 1
    expected = raw if side == 8 else F.interpolate(raw, size=(side, side), mode="bilinear", align_corners=False)
    torch.testing.assert_close(x, expected, rtol=0, atol=0)
    item, label = ds[3]
    assert torch.equal(item, x[3]) and label == int(y[3]) and isinstance(label, int)


def test_digits_unlabelled_and_bad_resolution():
    ds = load_dataset("digits", use_labels=False)
    assert ds.num_classes is None and bool((ds.tensors()[1] == -1).all())
    with raises(r"^resolution: 24 is not available for digits; use 8, 16 or 32$") as exc:
        load_dataset("digits", resolution=24)
    one_line(exc)


# -- toys ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mog8", "moons", "checkerboard"])
def test_toy_points(name):
    ds = load_dataset(f"toy:{name}")
    x, y = ds.tensors()
    assert isinstance(ds, PointDataset) and ds.kind == "points" and ds.shape == (2,)
    assert x.shape == (20_000, 2) and x.dtype == torch.float32
    assert ds.num_classes is None and bool((y == -1).all())
    torch.testing.assert_close(x.std(0), torch.full((2,), 0.5), atol=0.01, rtol=0)
    torch.testing.assert_close(x.mean(0), torch.zeros(2), atol=0.02, rtol=0)
    assert torch.equal(x, load_dataset(f"toy:{name}").tensors()[0])  # a fixed set
    batch = x[:5]
    assert ds.augment(batch, torch.Generator().manual_seed(0)) is batch  # points are never augmented


def test_mog8_points_lie_on_the_modes():
    mix = mog8_mixture()
    x = load_dataset("toy:mog8").tensors()[0].double()
    dist = torch.cdist(x, mix.means).min(1).values
    assert dist.max() < 6 * mix.std  # every point within 6 std of a mean
    assert mix.means.norm(dim=1).allclose(torch.full((8,), math.sqrt(2 * (0.25 - 0.05**2)), dtype=torch.float64))
    # exact per-coordinate variance of the mixture: r²/2 + s² = σ_data² = 0.25
    var = (mix.weights[:, None] * mix.means**2).sum(0) + mix.std**2
    torch.testing.assert_close(var, torch.full((2,), 0.25, dtype=torch.float64))
    assert float(mix.weights.sum()) == pytest.approx(1.0)


def test_toy_errors():
    with raises(r"^spec: 'toy:spiral' is not a toy distribution; use one of toy:mog8, toy:moons, toy:checkerboard$"):
        load_dataset("toy:spiral")
    with raises(r"^resolution: 16 was given, but toy:moons is a set of 2-D points$"):
        load_dataset("toy:moons", resolution=16)
    with raises(r"^xflip: only image datasets can be flipped; toy:mog8 is a set of 2-D points$"):
        load_dataset("toy:mog8", xflip=True)


# -- the exact mog8 denoiser ---------------------------------------------------------------------
def test_mog8_denoiser_matches_monte_carlo():
    """E[x0 | x_σ] ≈ Σ x0_i N(x_σ; x0_i, σ²) / Σ N(x_σ; x0_i, σ²) over 400k prior samples."""
    mix = mog8_mixture()
    gen = torch.Generator().manual_seed(0)
    n = 400_000
    comp = torch.multinomial(mix.weights, n, replacement=True, generator=gen)
    x0 = mix.means[comp] + mix.std * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    queries = torch.tensor([[0.3, 0.1], [-0.5, 0.6], [0.0, 0.0], [1.2, -0.4]], dtype=torch.float64)
    for sigma in (0.2, 0.5, 1.5):
        logw = -((queries[:, None] - x0[None]) ** 2).sum(-1) / (2 * sigma**2)
        w = torch.softmax(logw, dim=1)
        mc = w @ x0
        exact = mog8_denoiser(queries, torch.full((4,), sigma, dtype=torch.float64))
        torch.testing.assert_close(exact, mc, atol=0.005, rtol=0)


def test_mog8_denoiser_limits():
    mix = mog8_mixture()
    # σ → 0: identity near a mode.
    x = mix.means[[0, 3, 5]] + torch.tensor([[0.02, -0.01], [0.0, 0.03], [-0.04, 0.01]], dtype=torch.float64)
    torch.testing.assert_close(mog8_denoiser(x, torch.full((3,), 1e-5, dtype=torch.float64)), x, atol=1e-6, rtol=0)
    # σ → ∞: the mixture mean (0) whatever x is.
    x = torch.tensor([[100.0, -50.0], [0.3, 0.2], [-7.0, 2.0]], dtype=torch.float64)
    mean = (mix.weights[:, None] * mix.means).sum(0)
    out = mog8_denoiser(x, torch.full((3,), 1e5, dtype=torch.float64))
    torch.testing.assert_close(out, mean.expand(3, 2), atol=1e-6, rtol=0)
    # far from all modes with small σ (every likelihood underflows without logsumexp):
    # the nearest mode takes all the weight, E = μ_0 + s²/(s² + σ²)·(x − μ_0).
    x = torch.tensor([[300.0, 1.0]])
    for sigma in (1e-3, 1.0):
        out = mog8_denoiser(x, torch.tensor([sigma]))
        assert out.dtype == torch.float32 and bool(torch.isfinite(out).all())
        shrink = mix.std**2 / (mix.std**2 + sigma**2)
        torch.testing.assert_close(out.double(), mix.means[:1] + shrink * (x.double() - mix.means[:1]))


# -- image folders -------------------------------------------------------------------------------
def test_folder_png_subfolders_are_classes(tmp_path):
    root = tmp_path / "imgs"
    arrays = {"dog/a.png": rgb(1), "cat/b.png": rgb(2), "cat/deep/c.png": rgb(3), "bird/d.png": rgb(4)}
    for name, a in arrays.items():
        save(root / name, a)
    (root / "notes.txt").write_text("ignored")
    ds = load_dataset(root)
    names = sorted(arrays)  # bird/d, cat/b, cat/deep/c, dog/a
    x, y = ds.tensors()
    assert ds.kind == "image" and ds.shape == (3, 6, 6) and len(ds) == 4
    assert ds.num_classes == 3 and y.tolist() == [0, 1, 1, 2]
    for i, name in enumerate(names):
        assert torch.equal(x[i], as_x(arrays[name]))
    assert x.min() >= -1 and x.max() <= 1

    unlabelled = load_dataset(root, use_labels=False)
    assert unlabelled.num_classes is None and unlabelled.tensors()[1].tolist() == [-1] * 4


def test_folder_flat_jpeg_grayscale_and_channels(tmp_path):
    save(tmp_path / "jpg" / "a.jpg", rgb(1, (8, 8)), "JPEG")
    save(tmp_path / "jpg" / "b.JPEG", rgb(2, (8, 8)), "JPEG")
    ds = load_dataset(tmp_path / "jpg")
    assert ds.shape == (3, 8, 8) and ds.num_classes is None and len(ds) == 2
    decoded = np.asarray(Image.open(tmp_path / "jpg" / "a.jpg").convert("RGB"))
    assert torch.equal(ds.tensors()[0][0], as_x(decoded))

    # a mix is RGB whatever comes first (--image-mode gray converts every image to 1 channel)
    save(tmp_path / "g" / "a.png", gray(1))
    save(tmp_path / "g" / "b.png", rgb(2))
    ds = load_dataset(tmp_path / "g")
    assert ds.shape == (3, 6, 6)
    assert torch.equal(ds.tensors()[0][0], as_x(np.repeat(gray(1)[..., None], 3, axis=2)))
    ds = load_dataset(tmp_path / "g", image_mode="gray")
    assert ds.shape == (1, 6, 6)
    assert torch.equal(ds.tensors()[0][0], as_x(gray(1)))
    assert torch.equal(ds.tensors()[0][1], as_x(np.asarray(Image.fromarray(rgb(2)).convert("L"))))
    save(tmp_path / "c" / "a.png", rgb(1))
    save(tmp_path / "c" / "b.png", gray(2))
    ds = load_dataset(tmp_path / "c")
    assert ds.shape == (3, 6, 6)
    assert torch.equal(ds.tensors()[0][1], as_x(np.repeat(gray(2)[..., None], 3, axis=2)))


def test_folder_resolution_center_crops_and_resizes(tmp_path):
    save(tmp_path / "a.png", rgb(1, (12, 8)))   # 12 wide, 8 high
    save(tmp_path / "b.png", rgb(2, (4, 4)))
    with raises(r"^path: .*b\.png is 4×4 but .*a\.png is 12×8; the images must have one size") as exc:
        load_dataset(tmp_path)
    one_line(exc)
    ds = load_dataset(tmp_path, resolution=8)
    assert ds.shape == (3, 8, 8)
    # 12×8 → the centered 8×8 square (columns 2..9), already at the resolution
    assert torch.equal(ds.tensors()[0][0], as_x(rgb(1, (12, 8))[:, 2:10]))
    expected = np.asarray(Image.fromarray(rgb(2, (4, 4))).resize((8, 8), Image.LANCZOS))
    assert torch.equal(ds.tensors()[0][1], as_x(expected))


def test_folder_dataset_json_labels(tmp_path):
    save(tmp_path / "00000" / "img0.png", rgb(1))
    save(tmp_path / "00000" / "img1.png", rgb(2))
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": [["00000/img1.png", 7], ["00000/img0.png", 2]]}))
    ds = load_dataset(tmp_path)
    assert ds.tensors()[1].tolist() == [2, 7] and ds.num_classes == 8


def test_folder_errors(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with raises(r"^path: the folder .*empty holds no PNG/JPEG images$") as exc:
        load_dataset(tmp_path / "empty")
    one_line(exc)

    (tmp_path / "bad").mkdir()
    save(tmp_path / "bad" / "a.png", rgb(1))
    (tmp_path / "bad" / "b.png").write_bytes(b"not a png at all")
    with raises(r"^path: .*b\.png is not a readable PNG/JPEG image \(UnidentifiedImageError\)$") as exc:
        load_dataset(tmp_path / "bad")
    one_line(exc)

    save(tmp_path / "mixed" / "top.png", rgb(1))
    save(tmp_path / "mixed" / "cls" / "a.png", rgb(2))
    with raises(r"^path: .*top\.png is not in a class subfolder of .*mixed; put every image in one, "
                r"or train without labels \(--unconditional; use_labels=False\)$"):
        load_dataset(tmp_path / "mixed")
    assert len(load_dataset(tmp_path / "mixed", use_labels=False)) == 2

    (tmp_path / "mixed" / "dataset.json").write_text(json.dumps({"labels": [["top.png", 1]]}))
    with raises(r"^path: .*dataset\.json has no label for the image cls/a\.png$"):
        load_dataset(tmp_path / "mixed")

    with raises(r"^resolution: 0 must be a positive number of pixels or None$"):
        load_dataset(tmp_path / "bad", resolution=0)


# -- archives ------------------------------------------------------------------------------------
def write_zip(path, files: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)


def png_bytes(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def test_edm_zip_with_and_without_labels(tmp_path):
    images = {"00000/img00000001.png": rgb(2), "00000/img00000000.png": rgb(1)}
    labels = {"labels": [["00000/img00000000.png", 3], ["00000/img00000001.png", 0]]}
    files = {name: png_bytes(a) for name, a in images.items()}
    write_zip(tmp_path / "d.zip", {**files, "dataset.json": json.dumps(labels).encode()})
    ds = load_dataset(tmp_path / "d.zip")
    x, y = ds.tensors()
    assert ds.shape == (3, 6, 6) and y.tolist() == [3, 0] and ds.num_classes == 4
    assert torch.equal(x[0], as_x(rgb(1))) and torch.equal(x[1], as_x(rgb(2)))
    assert load_dataset(tmp_path / "d.zip", use_labels=False).num_classes is None

    write_zip(tmp_path / "plain.zip", files)
    assert load_dataset(tmp_path / "plain.zip").num_classes is None
    write_zip(tmp_path / "null.zip", {**files, "dataset.json": b'{"labels": null}'})
    assert load_dataset(tmp_path / "null.zip").num_classes is None

    ds = load_dataset(tmp_path / "plain.zip", resolution=3, xflip=True)
    assert ds.shape == (3, 3, 3) and ds.xflip


def test_zip_errors(tmp_path):
    write_zip(tmp_path / "noimg.zip", {"readme.txt": b"hi"})
    with raises(r"^path: the zip .*noimg\.zip holds no PNG/JPEG images$"):
        load_dataset(tmp_path / "noimg.zip")
    (tmp_path / "broken.zip").write_bytes(b"PK but not really")
    with raises(r"^path: .*broken\.zip is not a readable zip file \(BadZipFile\)$"):
        load_dataset(tmp_path / "broken.zip")
    write_zip(tmp_path / "badimg.zip", {"a.png": png_bytes(rgb(1)), "b.png": b"garbage"})
    with raises(r"^path: .*badimg\.zip:b\.png is not a readable PNG/JPEG image"):
        load_dataset(tmp_path / "badimg.zip")
    write_zip(tmp_path / "badlabel.zip", {"a.png": png_bytes(rgb(1)), "dataset.json": b'{"labels": [["a.png", -1]]}'})
    with raises(r"^path: .*dataset\.json gives a\.png the label -1; labels must be integers ≥ 0$"):
        load_dataset(tmp_path / "badlabel.zip")
    write_zip(tmp_path / "badjson.zip", {"a.png": png_bytes(rgb(1)), "dataset.json": b"[1, 2]"})
    with raises(r'^path: .*dataset\.json is not of the form \{"labels": \[\["path", label\], \.\.\.\]\}$'):
        load_dataset(tmp_path / "badjson.zip")


def test_adm_npz(tmp_path):
    images = np.stack([rgb(i, (5, 5)) for i in range(4)])
    np.savez(tmp_path / "s.npz", images, np.array([1, 0, 2, 1]))
    ds = load_dataset(tmp_path / "s.npz")
    x, y = ds.tensors()
    assert ds.shape == (3, 5, 5) and ds.num_classes == 3 and y.tolist() == [1, 0, 2, 1]
    assert torch.equal(x, torch.stack([as_x(a) for a in images]))
    assert load_dataset(tmp_path / "s.npz", use_labels=False).num_classes is None

    np.savez(tmp_path / "g.npz", images[..., 0])  # (N, H, W) grayscale, no labels
    ds = load_dataset(tmp_path / "g.npz", resolution=10)
    assert ds.shape == (1, 10, 10) and ds.num_classes is None
    expected = np.asarray(Image.fromarray(images[2, ..., 0]).resize((10, 10), Image.LANCZOS))
    assert torch.equal(ds.tensors()[0][2], as_x(expected))


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "f.npz", np.zeros((2, 4, 4, 3), dtype=np.float32))
    with raises(r"^path: .*f\.npz arr_0 is float32 \(2, 4, 4, 3\); need float points \(N, D\) with N, D ≥ 1, "
                r"or uint8 images \(N, H, W, C\)$"):
        load_dataset(tmp_path / "f.npz")
    np.savez(tmp_path / "i.npz", np.zeros((2, 4, 4, 2), dtype=np.uint8))
    with raises(r"^path: .*i\.npz arr_0 is uint8 \(2, 4, 4, 2\); need uint8 \(N, H, W, C\), N ≥ 1, C = 1 or 3$"):
        load_dataset(tmp_path / "i.npz")
    np.savez(tmp_path / "k.npz", images=np.zeros((2, 4, 4, 3), dtype=np.uint8))
    with raises(r"^path: .*k\.npz has no arr_0 \(found images\)$"):
        load_dataset(tmp_path / "k.npz")
    np.savez(tmp_path / "l.npz", np.zeros((2, 4, 4, 3), dtype=np.uint8), np.array([0, 1, 2]))
    with raises(r"^path: .*l\.npz arr_1 is int64 \(3,\); need 2 integer labels ≥ 0$"):
        load_dataset(tmp_path / "l.npz")
    (tmp_path / "x.npz").write_bytes(b"nope")
    with raises(r"^path: .*x\.npz is not a readable \.npz file"):
        load_dataset(tmp_path / "x.npz")


def test_points_npz(tmp_path):
    """Float arr_0 (N, D) is a point set, as the built-in toys; arr_1 gives labels."""
    points = np.random.default_rng(0).standard_normal((50, 3))
    np.savez(tmp_path / "p.npz", points, np.arange(50) % 4)
    ds = load_dataset(tmp_path / "p.npz")
    x, y = ds.tensors()
    assert ds.kind == "points" and ds.shape == (3,) and ds.num_classes == 4
    assert x.dtype == torch.float32 and torch.equal(x, torch.from_numpy(points.astype(np.float32)))
    assert y.tolist() == (np.arange(50) % 4).tolist()
    assert load_dataset(tmp_path / "p.npz", use_labels=False).num_classes is None
    np.savez(tmp_path / "q.npz", points[:, :2].astype(np.float32))
    assert load_dataset(tmp_path / "q.npz").shape == (2,) and load_dataset(tmp_path / "q.npz").num_classes is None


@pytest.mark.parametrize("array, message", [
    (np.array([[0.0, np.nan], [1.0, 2.0], [np.inf, 0.0]]), r"arr_0 has 2 point\(s\) with NaN or infinite coordinates$"),
    (np.zeros((0, 2)), r"arr_0 is float64 \(0, 2\); need float points \(N, D\) with N, D ≥ 1"),
    (np.zeros((5, 0)), r"arr_0 is float64 \(5, 0\); need float points"),
    (np.zeros(5), r"arr_0 is float64 \(5,\); need float points"),
    (np.zeros((2, 2, 2)), r"arr_0 is float64 \(2, 2, 2\); need float points"),
])
def test_points_npz_refuses_bad_arrays(tmp_path, array, message):
    np.savez(tmp_path / "p.npz", array)
    with raises(r"^path: .*p\.npz " + message) as exc:
        load_dataset(tmp_path / "p.npz")
    one_line(exc)


def test_points_npz_refuses_bad_labels_and_image_options(tmp_path):
    np.savez(tmp_path / "p.npz", np.zeros((3, 2), dtype=np.float32), np.array([0.5, 1.0, 2.0]))
    with raises(r"^path: .*p\.npz arr_1 is float64 \(3,\); need 3 integer labels ≥ 0$"):
        load_dataset(tmp_path / "p.npz")
    np.savez(tmp_path / "r.npz", np.zeros((3, 2), dtype=np.float32))
    with raises(r"^resolution: 8 was given, but .*r\.npz holds points, not images$"):
        load_dataset(tmp_path / "r.npz", resolution=8)
    with raises(r"^xflip: only image datasets can be flipped; .*r\.npz holds points$"):
        load_dataset(tmp_path / "r.npz", xflip=True)


def test_unknown_spec(tmp_path):
    expected_forms = (r"use digits, digits:test, toy:mog8, toy:moons, toy:checkerboard, "
                      r"a folder of PNG/JPEG images, an EDM \.zip, an ADM \.npz of images or an \.npz of float "
                      r"points \(N, D\)$")
    with raises(r"^spec: 'cifar10' is not a dataset \(no such file or folder\); " + expected_forms) as exc:
        load_dataset("cifar10")
    one_line(exc)
    (tmp_path / "a.txt").write_text("x")
    with raises(r"^spec: '.*a\.txt' is not a dataset \(not a folder, \.zip or \.npz\); " + expected_forms):
        load_dataset(tmp_path / "a.txt")


# -- augmentation --------------------------------------------------------------------------------
def test_xflip_is_reproducible_from_the_generator():
    ds = load_dataset("digits:test", xflip=True)
    x = ds.tensors()[0][:64]
    a = ds.augment(x, torch.Generator().manual_seed(5))
    b = ds.augment(x, torch.Generator().manual_seed(5))
    c = ds.augment(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    flipped = torch.tensor([torch.equal(a[i], x[i].flip(-1)) and not torch.equal(a[i], x[i]) for i in range(64)])
    kept = torch.tensor([torch.equal(a[i], x[i]) for i in range(64)])
    assert bool((flipped | kept).all()) and 16 < int(flipped.sum()) < 48
    assert torch.equal(ds.tensors()[0][:64], x)  # the stored data are untouched

    plain = load_dataset("digits:test")
    assert plain.augment(x, torch.Generator().manual_seed(5)) is x
