"""A folder (or zip) that mixes grayscale, RGB and RGBA files: RGB unless every image is gray
(nothing is lost: a gray image becomes three equal channels), or forced to one mode, or refused
naming the file that differs — the user's choice (`--image-mode`)."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
from PIL import Image

from consistency_models import InvalidInputError
from consistency_models.cli import main
from consistency_models.data import load_dataset


def mixed_folder(root, gray_only: bool = False):
    rng = np.random.default_rng(0)
    root.mkdir()
    gray = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    Image.fromarray(gray, "L").save(root / "a_gray.png")
    if not gray_only:
        rgb = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(rgb, "RGB").save(root / "b_rgb.png")
        rgba = rng.integers(0, 256, (16, 16, 4), dtype=np.uint8)
        Image.fromarray(rgba, "RGBA").save(root / "c_rgba.png")
        return gray, rgb, rgba
    return gray, None, None


def as_uint8(dataset) -> np.ndarray:
    x = dataset.tensors()[0]  # float32 in [−1, 1], NCHW
    return np.rint((x.numpy() + 1) * 127.5).astype(np.uint8).transpose(0, 2, 3, 1)


def test_auto_makes_a_mix_rgb_and_keeps_every_value(tmp_path):
    gray, rgb, rgba = mixed_folder(tmp_path / "mix")
    images = as_uint8(load_dataset(tmp_path / "mix"))
    assert images.shape == (3, 16, 16, 3)
    assert all(np.array_equal(images[0][..., c], gray) for c in range(3))  # gray replicated
    assert np.array_equal(images[1], rgb) and np.array_equal(images[2], rgba[..., :3])  # alpha dropped


def test_auto_keeps_an_all_gray_folder_gray_and_rgb_forces_color(tmp_path):
    gray, _, _ = mixed_folder(tmp_path / "gray", gray_only=True)
    assert as_uint8(load_dataset(tmp_path / "gray")).shape == (1, 16, 16, 1)
    forced = as_uint8(load_dataset(tmp_path / "gray", image_mode="rgb"))
    assert forced.shape == (1, 16, 16, 3) and np.array_equal(forced[0][..., 2], gray)


def test_gray_converts_every_image_with_the_luma_weights(tmp_path):
    _, rgb, _ = mixed_folder(tmp_path / "mix")
    images = as_uint8(load_dataset(tmp_path / "mix", image_mode="gray"))
    assert images.shape == (3, 16, 16, 1)
    luma = (rgb.astype(np.float64) @ [0.299, 0.587, 0.114])  # PIL's L = R·299/1000 + G·587/1000 + B·114/1000
    assert np.abs(images[1][..., 0].astype(np.float64) - luma).max() <= 1


def test_same_refuses_a_mix_naming_the_file(tmp_path):
    mixed_folder(tmp_path / "mix")
    with pytest.raises(InvalidInputError, match=r"^path: .*b_rgb\.png is color \(RGB\) but .*a_gray\.png is "
                                                r"grayscale; use --image-mode auto"):
        load_dataset(tmp_path / "mix", image_mode="same")


def test_a_zip_follows_the_same_rules(tmp_path):
    mixed_folder(tmp_path / "mix")
    with zipfile.ZipFile(tmp_path / "mix.zip", "w") as z:
        for f in sorted((tmp_path / "mix").iterdir()):
            z.write(f, f.name)
    assert as_uint8(load_dataset(tmp_path / "mix.zip")).shape == (3, 16, 16, 3)
    with pytest.raises(InvalidInputError, match=r"c_rgba\.png is color \(RGBA\)|b_rgb\.png is color"):
        load_dataset(tmp_path / "mix.zip", image_mode="same")


@pytest.mark.parametrize("argv, message", [
    (["--image-mode", "same"], r"b_rgb\.png is color \(RGB\) but .*a_gray\.png is grayscale"),
    (["--image-mode", "rgb", "--data", "toy:mog8"], r"^image_mode: 'rgb' applies to image folders and zips"),
])
def test_cm_train_says_it_in_one_line(tmp_path, capsys, argv, message):
    import re

    mixed_folder(tmp_path / "mix")
    code = main(["train", "--method", "ict", "--data", str(tmp_path / "mix"), "--out", str(tmp_path / "run"),
                 "--steps", "1", "--batch-size", "2", "--no-progress", *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and re.search(message, err.removeprefix("cm: error: data: ")), err


def test_auto_says_once_that_it_made_a_mix_rgb(tmp_path):
    mixed_folder(tmp_path / "mix")
    [note] = load_dataset(tmp_path / "mix").notes
    assert note.startswith("3 images mix grayscale (") and "a_gray.png) and color (" in note and "b_rgb.png)" in note
    assert "--image-mode gray keeps one channel" in note
    assert load_dataset(tmp_path / "mix", image_mode="rgb").notes == []   # the user chose: nothing to say
    mixed_folder(tmp_path / "gray", gray_only=True)
    assert load_dataset(tmp_path / "gray").notes == []                    # no mix


def test_cm_train_prints_the_mix_note(tmp_path, capsys):
    mixed_folder(tmp_path / "mix")
    code = main(["train", "--method", "ict", "--data", str(tmp_path / "mix"), "--out", str(tmp_path / "run"),
                 "--steps", "1", "--batch-size", "2", "--no-progress", "--preset", "test"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert [line for line in err.splitlines() if line.startswith("data:")] == [
        f"data: {tmp_path / 'mix'}: " + load_dataset(tmp_path / "mix").notes[0]]
