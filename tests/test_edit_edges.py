"""What a new user meets with `cm edit`, `cm new` and `cm tune-timesteps` in the first hour: stroke
levels that follow --sigma, masks drawn with alpha or colour, outputs and inputs named wrongly,
an interrupted `cm new`, errors that name the option typed, the timestep search's early checks and
its progress, and a local folder that hides an embedded model. Refusals are one line, exit 2."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from consistency_models import ConsistencyModelPipeline, editing
from conftest import one_line

from consistency_models.cli import main
from consistency_models.errors import InvalidInputError
from consistency_models.parametrization import karras_sigmas


@pytest.fixture(scope="module")
def pipe() -> ConsistencyModelPipeline:
    p = ConsistencyModelPipeline.from_pretrained("digits")
    p.set_progress_bar_config(disable=True)
    return p


def digit(tmp_path: Path, name: str = "digit.png", value: int = 0) -> Path:
    array = np.full((16, 16), value, dtype=np.uint8)
    array[3:13, 6:10] = 255
    Image.fromarray(array).save(tmp_path / name)
    return tmp_path / name


def test_stroke_steps_start_at_sigma(pipe):
    """--steps used to restart at sigma_max = 80 and drop --sigma without a word (the strokes were lost)."""
    grid = [float(s) for s in karras_sigmas(40, 0.002, 80.0, 7.0)[:-1]]      # the 40-point editing grid
    below = [s for s in grid if s <= 0.5]
    assert editing._stroke_levels(pipe, 0.5, None) == below
    # N levels from the start down, as `cm sample --steps` picks grid points: the smallest σ (≈ 0.004,
    # a step that changes nothing) is not one of them.
    assert editing._stroke_levels(pipe, 0.5, 2) == [below[0], below[len(below) // 2]]
    assert editing._stroke_levels(pipe, 0.5, 1) == [max(below)]
    assert editing._stroke_levels(pipe, 0.5, len(below)) == below
    strokes = torch.zeros(1, 1, 16, 16)
    low = editing.stroke_guided(pipe, strokes, sigma_start=0.5, num_inference_steps=2,
                                generator=torch.Generator().manual_seed(0))
    high = editing.stroke_guided(pipe, strokes, sigma_start=40.0, num_inference_steps=2,
                                 generator=torch.Generator().manual_seed(0))
    assert (low - high).abs().max() > 0.1
    with pytest.raises(InvalidInputError, match=r"^sigma_start: the given timesteps/sigmas carry their own start"):
        editing.stroke_guided(pipe, strokes, sigma_start=0.5, sigmas=[0.5, 0.1])
    with pytest.raises(InvalidInputError, match=rf"^num_inference_steps: 99 must be from 1 to {len(below)}"):
        editing.stroke_guided(pipe, strokes, sigma_start=0.5, num_inference_steps=99)
    assert torch.equal(editing.stroke_guided(pipe, strokes, sigma_start="0.5", generator=torch.Generator().manual_seed(0)),
                       editing.stroke_guided(pipe, strokes, sigma_start=0.5, generator=torch.Generator().manual_seed(0)))


def test_masks_drawn_with_alpha_or_colour_and_a_mask_that_selects_nothing(tmp_path, capsys):
    image = digit(tmp_path)
    centre = np.zeros((16, 16), dtype=bool)
    centre[4:12, 4:12] = True
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)
    rgba[..., :3] = 255                      # white everywhere, opaque only on the centre: strokes on a layer
    rgba[..., 3] = np.where(centre, 255, 0)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "alpha.png")
    red = np.zeros((16, 16, 3), dtype=np.uint8)
    red[centre] = (255, 0, 0)                # luminance 76: it used to select nothing
    Image.fromarray(red).save(tmp_path / "red.png")
    source = np.asarray(Image.open(image)).astype(int)
    for mask in ("alpha.png", "red.png"):
        out = tmp_path / f"out-{mask}"
        assert main(["edit", "inpaint", "--image", str(image), "--mask", str(tmp_path / mask), "--out", str(out)]) == 0
        changed = np.asarray(Image.open(out)).astype(int) != source
        assert not changed[~centre].any() and changed[centre].sum() > 10, mask
    from consistency_models.io.images import read_mask

    right = np.zeros((16, 16), dtype=bool)
    right[:, 8:] = True
    bw = np.zeros((16, 16, 4), dtype=np.uint8)
    bw[right, :3] = 255
    bw[..., 3] = 255
    bw[0, 0, 3] = 254                        # one pixel not quite opaque: the white half still decides
    Image.fromarray(bw, mode="RGBA").save(tmp_path / "bw.png")
    white_clear = Image.fromarray(np.where(right, 255, 0).astype(np.uint8), mode="L")
    white_clear.save(tmp_path / "white-transparent.png", transparency=255)   # a tRNS that hides the white
    assert np.array_equal(np.asarray(read_mask(tmp_path / "bw.png", 16)) > 127, right)
    assert not (np.asarray(read_mask(tmp_path / "white-transparent.png", 16)) > 127).any()
    Image.fromarray(np.full((16, 16), 100, dtype=np.uint8)).save(tmp_path / "grey.png")
    assert one_line(["edit", "inpaint", "--image", str(image), "--mask", str(tmp_path / "grey.png"), "--out",
                     str(tmp_path / "g.png")], capsys).startswith("mask: no pixel is white (above 50 %)")
    assert not (tmp_path / "g.png").exists()


def test_edit_outputs_and_inputs_named_wrongly(tmp_path, capsys, monkeypatch):
    image = digit(tmp_path)
    monkeypatch.chdir(tmp_path)
    edit = ["edit", "denoise", "--sigma", "0.3"]
    assert one_line([*edit, "--image", str(image), "--out", "x.jpg"], capsys) == (
        "out: 'x.jpg' must be a .png file (cm edit writes one image or one strip)")
    assert one_line([*edit, "--image", str(image), "--out", "x.npz"], capsys).startswith("out: 'x.npz' must be a .png")
    assert one_line([*edit, "--image", str(image), "--out", ".png"], capsys) == (
        "out: '.png' has no name before its .png; give e.g. samples.png")
    assert one_line([*edit, "--image", "", "--out", "o.png"], capsys) == "image: '' is empty; give a PNG/JPEG file"
    (tmp_path / "folder").mkdir()
    assert one_line([*edit, "--image", "folder", "--out", "o.png"], capsys) == "image: folder is a folder, not an image file"
    # the folder, not "out: o.png lies inside the --image folder ." (moving the output would not help)
    assert one_line([*edit, "--image", ".", "--out", "o.png"], capsys) == "image: . is a folder, not an image file"
    assert one_line([*edit, "--image", "/dev/null", "--out", "o.png"], capsys) == "image: /dev/null is not a regular file"


def test_errors_name_the_option_typed(tmp_path, capsys):
    image = digit(tmp_path)
    assert one_line(["edit", "stroke", "--image", str(image), "--sigma", "100", "--out", str(tmp_path / "s.png")],
                    capsys) == "sigma: 100.0 must lie in (0.002, 80.0]"
    assert one_line(["sample", "--steps", "40", "--out", str(tmp_path / "s.png")], capsys) == (
        "steps: 40 must be from 1 to 18 (the model's grid has num_train_timesteps=18 points)")
    assert one_line(["edit", "superres", "--image", str(image), "--factor", "1", "--out", str(tmp_path / "s.png")],
                    capsys) == "factor: 1 does not upsample; use one of 2, 4, 8, 16"
    with pytest.raises(InvalidInputError, match=r"^factor: 4\.0 is not an integer; use one of 2, 4, 8, 16$"):
        editing.check_factor(4.0, 16)


def test_python_editing_mistakes_are_one_line(pipe):
    image = torch.rand(1, 1, 16, 16)
    for call in (lambda: editing.inpaint(pipe, image, torch.ones(1, 1, 16, 16), generator=0),
                 lambda: editing.interpolate(pipe, generator=0), lambda: pipe(generator=0)):
        with pytest.raises(InvalidInputError, match=r"^generator: 0 is not a torch\.Generator .*\.manual_seed\(seed\)$"):
            call()
    with pytest.raises(TypeError, match=r"steps \(noise levels are given as num_inference_steps, timesteps or sigmas\)"):
        editing.inpaint(pipe, image, torch.ones(1, 1, 16, 16), steps=1)
    with pytest.raises(InvalidInputError, match=r"^noisy: 16 channels, but 1 are needed here; channels come first"):
        editing.denoise(pipe, np.zeros((16, 16, 1), dtype=np.float32), 0.4)


def test_an_interrupted_cm_new_leaves_no_folder(tmp_path, monkeypatch):
    """Ctrl-C while the weights were written left `big/unet/`, which the same command then refused;
    into an existing empty folder it left a part of the model there."""
    from consistency_models.io import pipeline_folder

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline_folder, "write_model_index", interrupted)   # after unet/ is written
    assert main(["new", str(tmp_path / "big"), "--preset", "tiny16"]) == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    monkeypatch.undo()
    assert main(["new", str(tmp_path / "big"), "--preset", "tiny16"]) == 0
    assert (tmp_path / "big" / "model_index.json").is_file()
    (tmp_path / "made").mkdir()              # an empty folder made for it (or a mount point) is written in place
    monkeypatch.chdir(tmp_path / "made")
    monkeypatch.setattr(pipeline_folder, "write_model_index", interrupted)
    assert main(["new", ".", "--preset", "tiny16"]) == 130           # ... and left as empty as it was
    assert sorted(p.name for p in (tmp_path / "made").iterdir()) == []
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path / "made")
    (tmp_path / "made" / ".cm-partial.killed.tmp" / "unet").mkdir(parents=True)   # what SIGKILL would leave
    from consistency_models.io.lock import hold_folder

    with hold_folder(tmp_path / "made", "test", name=".cm-partial.lock"):      # another writer at work
        assert main(["new", ".", "--preset", "tiny16"]) == 2
    assert main(["new", ".", "--preset", "tiny16"]) == 0
    assert sorted(p.name for p in (tmp_path / "made").iterdir()) == ["model_index.json", "scheduler", "unet"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big", "made"]


def test_a_folder_named_like_an_embedded_model_says_that_it_hides_it(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["new", "digits", "--preset", "tiny16"]) == 0
    note = "model: digits is the folder ./digits here, not the embedded model of that name"
    assert note in capsys.readouterr().err
    assert main(["sample", "--model", "digits", "--out", "q.png", "--batch-size", "2", "--no-progress"]) == 0
    assert note in capsys.readouterr().err
    # Without --model the user named no folder: the embedded default model, whatever is here.
    from consistency_models.io.hub import embedded_folder

    for argv in (["sample", "--out", "d.png"], ["sample", "--model", str(embedded_folder("digits")), "--out", "e.png"]):
        assert main([*argv, "--batch-size", "2", "--no-progress"]) == 0
        assert "model:" not in capsys.readouterr().err
    assert (tmp_path / "d.png").read_bytes() == (tmp_path / "e.png").read_bytes() != (tmp_path / "q.png").read_bytes()


def test_the_timestep_search_refuses_early_and_counts_images(tmp_path, capsys):
    from consistency_models.evaluation.timestep_search import most_candidates, ternary_search

    assert main(["new", str(tmp_path / "two"), "--preset", "tiny16", "--grid", "2"]) == 0
    assert one_line(["tune-timesteps", "--model", str(tmp_path / "two"), "--ref", "digits:test", "--features",
                     "digits"], capsys) == ("model: its grid has 2 points, so two-step sampling has no middle timestep "
                                            "to search (3 points or more are needed)")
    assert one_line(["tune-timesteps", "--ref", "digits:test", "--features", "digits", "--num", "1"], capsys) == (
        "num: 1 must be a number of images from 2 to 100000000")
    assert main(["new", str(tmp_path / "big"), "--preset", "test"]) == 0   # 32×32: not for the digits classifier
    err = one_line(["tune-timesteps", "--model", str(tmp_path / "big"), "--ref", "digits:test", "--features", "digits",
                    "--num", "4"], capsys)
    assert err.startswith("images: 32×32 px; the digits classifier takes 16×16 images")
    capsys.readouterr()
    assert main(["tune-timesteps", "--ref", "digits:test", "--features", "digits", "--num", "4", "--lo", "8",
                 "--hi", "9"]) == 0
    assert re.search(r"timestep search: 100%.*\b8/8 ", capsys.readouterr().err)   # 2 candidates × 4 images
    rng = np.random.default_rng(0)
    for lo, hi in [(1, 1), (1, 3), (1, 16), (1, 38), (3, 150)]:
        most = 0
        for _ in range(30):
            values = rng.random(hi + 1)
            most = max(most, len(ternary_search(lambda i: values[i], lo, hi)[1]))
        assert most <= most_candidates(lo, hi) <= most + 4, (lo, hi)   # a bound, near what random scores reach


def test_interpolation_of_a_diffusion_model_shows_progress_and_superres_help_says_the_size(tmp_path, capsys):
    assert main(["edit", "interpolate", "--model", "digits-teacher", "--frames", "2", "--out",
                 str(tmp_path / "i.png")]) == 0
    assert re.search(r"interpolating: .*/18 ", capsys.readouterr().err)      # Heun's 18 steps
    with pytest.raises(SystemExit):
        main(["edit", "superres", "--help"])
    assert "the model's size divided by --factor" in " ".join(capsys.readouterr().out.split())


def gradient_digit() -> Image.Image:
    """A 16 × 16 grayscale image with 256 different levels (every 8-bit value once)."""
    return Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16), mode="L")


@pytest.mark.parametrize("make, expected", [
    (lambda im: im.convert("1"), lambda made: np.asarray(made, np.float64)),                   # bilevel: 0 or 1
    (lambda im: im.convert("LA"), lambda made: np.asarray(made.convert("L"), np.float64) / 255),  # alpha dropped
    (lambda im: im.convert("RGB").quantize(16),                                                 # adaptive palette
     lambda made: np.asarray(made.convert("L"), np.float64) / 255),
    (lambda im: Image.fromarray(np.asarray(im).astype(np.uint16) * 257),                       # 16-bit: same levels
     lambda made: np.asarray(made, np.float64) / 65535),
], ids=["bilevel", "gray+alpha", "palette", "16-bit"])
def test_pil_images_of_every_common_mode_are_kept_at_their_levels(pipe, make, expected):
    """Editing read every PIL image as bytes / 255: a bilevel image's white became 1/255, a palette
    image's indices became gray levels, 16-bit values reached 257. The kept region shows it."""
    image = gradient_digit()
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 6:10, 6:10] = 1                                        # regenerate the middle only
    made = make(image)
    out = editing.inpaint(pipe, made, mask, num_inference_steps=1, generator=torch.Generator().manual_seed(0))
    kept = (mask == 0).expand_as(out)
    reference = torch.from_numpy(expected(made)).float()[None, None].expand_as(out)
    assert reference.max() > 0.9  # white stays white (bytes / 255 gave 1/255 or 0.06 here)
    assert (out[kept] - reference[kept]).abs().max() < 1e-6


def test_pil_and_tensor_inputs_out_of_range_or_with_alpha_are_one_line(pipe):
    color = ConsistencyModelPipeline.from_pretrained("digits-color")
    with pytest.raises(InvalidInputError, match=r"^gray: 4 channels; give 1 \(gray\) or 3") as error:
        editing.colorize(color, torch.rand(1, 4, 16, 16))
    assert "\n" not in str(error.value)
    assert editing.colorize(color, gradient_digit().convert("RGBA"), num_inference_steps=1).shape == (1, 3, 16, 16)
    with pytest.raises(InvalidInputError, match=r"^image: a PIL image of mode 'F' whose values span \[0, 255\]"):
        editing.inpaint(pipe, gradient_digit().convert("F"), torch.ones(1, 1, 16, 16))


def test_interpolation_takes_one_label_for_all_its_frames(pipe):
    """It said "got 2 labels for a batch of 1; give one or one per sample" to two labels for two frames."""
    with pytest.raises(InvalidInputError, match=r"^class_labels: the 2 frames of one interpolation share one class; "
                                                r"give one label, not 2$"):
        editing.interpolate(pipe, num=2, class_labels=[3, 4])
    frames = editing.interpolate(pipe, num=2, class_labels=[3], generator=torch.Generator().manual_seed(0))
    assert torch.equal(frames, editing.interpolate(pipe, num=2, class_labels=3, generator=torch.Generator().manual_seed(0)))
