"""The FID Inception-v3: published key layout, weight-file resolution and checks, TF1 resize, forward shapes.

No real weights are available offline: a seeded random state dict built from the fixture's key
list stands in for the published file (saved in the same legacy torch format). One 299-px
forward of a batch of 2 runs in the whole file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from consistency_models import InvalidInputError
from consistency_models.metrics import (
    InceptionFeatures,
    InceptionV3FID,
    load_inception,
    resize_bilinear_tf1,
)
from consistency_models.metrics import inception as inception_module

FIXTURE = Path(__file__).parent / "fixtures" / "pt_inception_2015_12_05_keys.json"


def published_keys() -> dict[str, list[int]]:
    return json.loads(FIXTURE.read_text())["keys"]


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A stand-in for pt_inception-2015-12-05-6726825d.pth: every published key, seeded random values."""
    gen = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in published_keys().items():
        value = torch.randn(shape, generator=gen) * 0.05
        state[key] = value.abs() + 0.5 if key.endswith("running_var") else value
    path = tmp_path_factory.mktemp("inception") / "weights.pth"
    torch.save(state, path, _use_new_zipfile_serialization=False)  # the 2019 file predates the zip format
    return path, state


@pytest.fixture
def no_weights_anywhere(tmp_path, monkeypatch):
    """An empty home folder (so an empty cache) and no $CM_INCEPTION_WEIGHTS."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(inception_module.WEIGHTS_ENV, raising=False)
    return tmp_path / "home" / ".cache" / "consistency_models" / inception_module.INCEPTION_FILENAME


# -- architecture ------------------------------------------------------------------------------
def test_state_dict_has_exactly_the_published_keys_and_shapes():
    data = json.loads(FIXTURE.read_text())
    ours = {k: list(v.shape) for k, v in InceptionV3FID().state_dict().items()}
    assert ours == data["keys"]
    assert len(ours) == data["num_keys"] == 94 * 5 + 2
    assert data["sha256"] == inception_module.INCEPTION_SHA256
    assert data["sha256"].startswith("6726825d") and data["url"] == inception_module.INCEPTION_URL


def test_batch_norm_epsilon_and_bias_free_convolutions():
    model = InceptionV3FID()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in model.modules() if isinstance(m, inception_module.FrozenBatchNorm2d)]
    assert len(convs) == len(norms) == 94
    assert all(c.bias is None for c in convs) and all(n.eps == 0.001 for n in norms)


def _pool_branch_input(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    seen = []
    handle = block.branch_pool.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    with torch.no_grad():
        block(x)
    handle.remove()
    return seen[0]


@pytest.mark.parametrize("block_name", ["Mixed_5b", "Mixed_6b", "Mixed_7b", "Mixed_7c"])
def test_pool_branches_are_the_fid_graphs(block_name):
    # TF's SAME average pool divides by the valid pixels only: a corner averages 4 pixels;
    # the graph's last block max-pools instead.
    model = InceptionV3FID()
    block = getattr(model, block_name)
    channels = block.branch1x1.conv.in_channels
    x = torch.randn(1, channels, 4, 5, generator=torch.Generator().manual_seed(1))
    pooled = _pool_branch_input(block, x)
    if block_name == "Mixed_7c":
        expected_corner = x[0, :, :2, :2].amax(dim=(1, 2))
        expected_inner = x[0, :, 0:3, 1:4].amax(dim=(1, 2))
    else:
        expected_corner = x[0, :, :2, :2].mean(dim=(1, 2))
        expected_inner = x[0, :, 0:3, 1:4].mean(dim=(1, 2))
    torch.testing.assert_close(pooled[0, :, 0, 0], expected_corner)
    torch.testing.assert_close(pooled[0, :, 1, 2], expected_inner)


# -- TF1 bilinear resize -----------------------------------------------------------------------
def tf1_resize_reference(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """TF1 resize_bilinear, align_corners=False, half_pixel_centers=False: src = dst·in/out (float32)."""
    in_h, in_w = image.shape
    out = np.zeros((out_h, out_w), dtype=np.float64)
    scale_y, scale_x = np.float32(in_h) / np.float32(out_h), np.float32(in_w) / np.float32(out_w)
    for i in range(out_h):
        sy = np.float32(i) * scale_y
        y0 = int(np.floor(sy))
        y1, fy = min(y0 + 1, in_h - 1), float(sy - np.floor(sy))
        for j in range(out_w):
            sx = np.float32(j) * scale_x
            x0 = int(np.floor(sx))
            x1, fx = min(x0 + 1, in_w - 1), float(sx - np.floor(sx))
            top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
            bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
            out[i, j] = top * (1 - fy) + bottom * fy
    return out


@pytest.mark.parametrize(("size_in", "size_out"), [((8, 8), (29, 29)), ((37, 23), (19, 31)), ((5, 7), (11, 3))])
def test_resize_matches_a_loop_over_tf1_sampling_positions(size_in, size_out):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(2, 3, *size_in)).astype(np.float32)
    got = resize_bilinear_tf1(torch.from_numpy(images), size_out).numpy()
    for n in range(2):
        for c in range(3):
            np.testing.assert_allclose(got[n, c], tf1_resize_reference(images[n, c], *size_out), rtol=0, atol=2e-4)


def test_resize_by_hand_and_unlike_half_pixel_interpolation():
    # 2 → 4 px: positions 0, 0.5, 1, 1.5 → a, (a+b)/2, b, b (the last clamps at the edge).
    x = torch.tensor([[[[10.0, 30.0]]]])
    assert resize_bilinear_tf1(x, (1, 4)).flatten().tolist() == [10.0, 20.0, 30.0, 30.0]
    # torch's align_corners=False uses half-pixel centres: 10, 15, 25, 30.
    assert F.interpolate(x, size=(1, 4), mode="bilinear", align_corners=False).flatten().tolist() == [
        10.0, 15.0, 25.0, 30.0]


def test_preprocess_normalizes_and_replicates_gray():
    gen = torch.Generator().manual_seed(2)
    gray = torch.randint(0, 256, (1, 1, 299, 299), generator=gen, dtype=torch.uint8)
    x = InceptionV3FID.preprocess(gray)
    assert x.shape == (1, 3, 299, 299)
    torch.testing.assert_close(x, InceptionV3FID.preprocess(gray.repeat(1, 3, 1, 1)))
    torch.testing.assert_close(x[:, 0], (gray[:, 0].double() - 128).div(128).float())
    assert x.min() >= -1 and x.max() < 1


@pytest.mark.parametrize("images", [torch.zeros(1, 3, 8, 8), torch.zeros(3, 8, 8, dtype=torch.uint8),
                                    torch.zeros(1, 4, 8, 8, dtype=torch.uint8), [[0]]])
def test_preprocess_refuses_what_is_not_uint8_nchw(images):
    with pytest.raises(InvalidInputError, match="images: .*uint8 \\(N, C, H, W\\)"):
        InceptionV3FID.preprocess(images)


def he_init_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Seeded He-normal convolutions (activations keep their scale through the 94 layers)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2 / fan_in) ** 0.5)
    return model


def test_one_forward_gives_pool3_features_and_bias_free_logits():
    torch.manual_seed(3)
    model = he_init_(InceptionV3FID(), seed=3)
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    extractor = InceptionFeatures(model, batch_size=1)          # two batches of one image
    features, logits = extractor.features_and_logits(images)
    assert features.shape == (2, 2048) and logits.shape == (2, 1008)
    assert features.dtype == logits.dtype == torch.float32
    assert torch.isfinite(features).all() and (features >= 0).all()   # the mean of ReLU outputs
    assert not torch.allclose(features[0], features[1])
    torch.testing.assert_close(logits, features @ model.fc.weight.T)


# -- weights -----------------------------------------------------------------------------------
def test_strict_load_with_the_files_hash(random_weights):
    path, state = random_weights
    model = load_inception(path, sha256=sha256_of(path), download=False)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_env_var_and_cache_folder_are_found(random_weights, no_weights_anywhere, monkeypatch, no_network):
    path, _ = random_weights
    digest = sha256_of(path)
    monkeypatch.setenv(inception_module.WEIGHTS_ENV, str(path))
    assert inception_module.resolve_inception_weights(sha256=digest) == path
    monkeypatch.delenv(inception_module.WEIGHTS_ENV)
    cached = no_weights_anywhere
    cached.parent.mkdir(parents=True)
    cached.symlink_to(path)
    assert inception_module.resolve_inception_weights(sha256=digest) == cached
    assert not no_network


def test_a_truncated_or_foreign_file_is_refused_naming_both_hashes(random_weights, tmp_path):
    path, _ = random_weights
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(InvalidInputError) as info:
        load_inception(truncated, sha256=sha256_of(path), download=False)
    message = str(info.value)
    assert sha256_of(path) in message and sha256_of(truncated) in message and "\n" not in message
    with pytest.raises(InvalidInputError, match=inception_module.INCEPTION_SHA256):
        load_inception(path, download=False)                  # our stand-in is not the published file


def test_a_file_with_other_keys_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(1008, 2048)}, path)
    with pytest.raises(InvalidInputError, match="other.pth .* does not fit .*missing keys: Conv2d_1a_3x3"):
        load_inception(path, sha256=sha256_of(path), download=False)


def test_batch_norm_counters_of_a_resaved_copy_are_ignored(random_weights, tmp_path):
    _, state = random_weights
    resaved = dict(state, **{"Conv2d_1a_3x3.bn.num_batches_tracked": torch.tensor(0)})
    path = tmp_path / "resaved.pth"
    torch.save(resaved, path)
    model = load_inception(path, sha256=None, download=False)
    assert torch.equal(model.fc.bias, state["fc.bias"])


def test_missing_weights_offline_say_where_to_put_them(no_weights_anywhere, no_network):
    with pytest.raises(InvalidInputError) as info:
        load_inception()
    message = str(info.value)
    assert no_network, "a download should have been tried"
    for part in (str(no_weights_anywhere), inception_module.WEIGHTS_ENV, inception_module.INCEPTION_URL, "path="):
        assert part in message
    assert "\n" not in message and not no_weights_anywhere.exists()
    no_network.clear()
    with pytest.raises(InvalidInputError, match="downloads are off"):
        load_inception(download=False)
    assert not no_network


def test_a_missing_path_or_env_file_is_named(tmp_path, monkeypatch):
    with pytest.raises(InvalidInputError, match="path: no file at .*nothing.pth"):
        load_inception(tmp_path / "nothing.pth")
    monkeypatch.setenv(inception_module.WEIGHTS_ENV, str(tmp_path / "gone.pth"))
    with pytest.raises(InvalidInputError, match=r"\$CM_INCEPTION_WEIGHTS: no file at .*gone.pth"):
        load_inception()
