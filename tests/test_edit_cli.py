"""`cm edit`: every edit from the command line on the embedded model, the same pixels as the API,
and one-line errors with exit code 2."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import build_unet
from PIL import Image
from test_cli import run_cli

import consistency_models as cm
from consistency_models import editing
from consistency_models.data import load_dataset
from consistency_models.io.images import to_uint8


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A held-out digit, a centre mask, its 4× downsampled version, a 32-px copy, an RGB model."""
    d = tmp_path_factory.mktemp("edit")
    digit = to_uint8(load_dataset("digits:test").x[0, 0].numpy() / 2 + 0.5)
    Image.fromarray(digit).save(d / "digit.png")
    Image.fromarray(np.stack([digit] * 3, -1)).save(d / "digit_rgb.png")
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 255
    Image.fromarray(mask).save(d / "mask.png")
    Image.fromarray(digit).resize((4, 4), Image.BOX).save(d / "low.png")
    Image.fromarray(digit).resize((32, 32)).save(d / "big.png")
    Image.fromarray(mask).resize((8, 8)).save(d / "mask8.png")
    cfg = cm.preset("tiny16", in_channels=3, out_channels=3, num_classes=None)
    cm.ConsistencyModelPipeline(build_unet(cfg, seed=1)).save_pretrained(d / "rgb")
    return d


def read(path) -> np.ndarray:
    return np.asarray(Image.open(path))


@pytest.mark.parametrize(
    "argv, size",
    [
        (["inpaint", "--image", "digit.png", "--mask", "mask.png"], (16, 16)),
        (["superres", "--image", "low.png", "--factor", "4"], (16, 16)),
        (["stroke", "--image", "digit.png", "--sigma", "3"], (16, 16)),
        (["denoise", "--image", "digit.png", "--sigma", "0.2"], (16, 16)),
        (["interpolate", "--num", "5"], (20, 92)),  # a strip of 5 frames, 2-px padding
        (["colorize", "--image", "digit.png", "--model", "rgb"], (16, 16, 3)),
        (["colorize", "--image", "digit_rgb.png"], (16, 16, 3)),  # the embedded digits-color model
    ],
)
def test_every_edit_writes_a_png(files, tmp_path, capsys, monkeypatch, argv, size):
    monkeypatch.chdir(files)
    out = tmp_path / "out.png"
    code, stdout, err = run_cli(capsys, "edit", *argv, "--out", str(out))
    assert code == 0, err
    assert read(out).shape == size
    assert f"wrote {out}" in stdout


def test_cli_inpaint_equals_the_api(files, tmp_path, capsys):
    out = tmp_path / "out.png"
    code, _, err = run_cli(capsys, "edit", "inpaint", "--image", str(files / "digit.png"), "--mask",
                           str(files / "mask.png"), "--class-label", "4", "--seed", "3", "--out", str(out))
    assert code == 0, err
    pipe = cm.ConsistencyModelPipeline.from_pretrained("digits")
    image = torch.from_numpy(read(files / "digit.png").copy()).float()[None, None] / 255
    mask = torch.from_numpy(read(files / "mask.png").copy()).float()[None, None] / 255
    api = editing.inpaint(pipe, image, mask, generator=torch.Generator().manual_seed(3), class_labels=4)
    np.testing.assert_array_equal(read(out), to_uint8(api[0, 0].numpy()))
    np.testing.assert_array_equal(read(out)[:4], read(files / "digit.png")[:4])  # the kept rows


def test_rgb_input_is_converted_for_a_gray_model(files, tmp_path, capsys):
    """An RGB file whose channels are equal gives the same result as its grayscale twin."""
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    for image, out in (("digit.png", a), ("digit_rgb.png", b)):
        code, _, err = run_cli(capsys, "edit", "denoise", "--image", str(files / image), "--sigma", "0.3",
                               "--class-label", "1", "--out", str(out))
        assert code == 0, err
    np.testing.assert_array_equal(read(a), read(b))


def test_resize_makes_another_size_acceptable(files, tmp_path, capsys):
    out = tmp_path / "out.png"
    code, _, err = run_cli(capsys, "edit", "inpaint", "--image", str(files / "big.png"), "--mask",
                           str(files / "mask8.png"), "--resize", "--out", str(out))
    assert code == 0, err
    assert read(out).shape == (16, 16)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["inpaint", "--image", "big.png", "--mask", "mask.png"], "big.png is 32×32 but 16×16 is needed; give --resize"),
        (["inpaint", "--image", "digit.png", "--mask", "mask8.png"], "mask8.png is 8×8 but 16×16 is needed"),
        (["superres", "--image", "low.png", "--factor", "3"], "factor: 3 must divide the model's image size 16"),
        (["superres", "--image", "digit.png", "--factor", "4"], "digit.png is 16×16 but 4×4 is needed"),
        (["colorize", "--image", "digit.png", "--model", "digits"], "colorization needs an RGB model"),
        (["denoise", "--image", "digit.png", "--sigma", "-1"], "sigma: -1.0 must lie in"),
        (["denoise", "--image", "missing.png", "--sigma", "1"], "image: no such file 'missing.png'"),
        (["inpaint", "--image", "digit.png", "--mask", "mask.png", "--class-label", "12"], "class-label: 12 must be integers in [0, 9]"),
        (["inpaint", "--image", "digit.png"], "--mask"),
    ],
)
def test_errors_are_one_line(files, tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(files)
    out = tmp_path / "out.png"
    code, _, err = run_cli(capsys, "edit", *argv, "--out", str(out))
    assert code == 2
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_variant_reads_the_weights_of_that_variant(tmp_path, capsys):
    """--variant, as from_pretrained(variant=...): a folder that holds only fp16-named weights (as
    many Hub repositories do) samples and edits with it, and without it says which variant is there."""
    folder = tmp_path / "model"
    cm.ConsistencyModelPipeline.from_pretrained("digits").save_pretrained(folder, variant="fp16")
    for command, name in ((["sample", "--batch-size", "4", "--seed", "3"], "s.png"),
                          (["edit", "interpolate", "--num", "3", "--seed", "3"], "e.png")):
        code, _, err = run_cli(capsys, *command, "--model", str(folder), "--variant", "fp16",
                               "--out", str(tmp_path / name))
        assert code == 0, err
        code, _, err = run_cli(capsys, *command, "--out", str(tmp_path / f"embedded-{name}"))
        assert code == 0, err
        np.testing.assert_array_equal(read(tmp_path / name), read(tmp_path / f"embedded-{name}"))
    code, _, err = run_cli(capsys, "sample", "--model", str(folder), "--out", str(tmp_path / "x.png"))
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("cm: error: weights: missing file ") and err.rstrip().endswith(
        "(cm sample, edit, tune-timesteps: --variant fp16)")
