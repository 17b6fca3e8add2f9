"""The `cm` command line: outputs on disk, one-line errors with exit code 2, no tracebacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import consistency_models as cm
from consistency_models.cli import main

from openai_reference_unet import OpenAIUNet, randomize_


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A 'test'-preset model with every weight perturbed, so its images depend on everything."""
    folder = tmp_path_factory.mktemp("cli") / "model"
    unet = cm.UNetModel(cm.preset("test"))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    cm.ConsistencyModelPipeline(unet).save_pretrained(folder)
    return folder


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        sys.exit(main(list(argv)))
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def test_png_grid_npz_and_folder(model_dir, tmp_path, capsys):
    """Each output kind lands on disk with the right shape; the npz matches the API's images."""
    code, out, _ = run_cli(capsys, "sample", "--model", str(model_dir), "--out", str(tmp_path / "g.png"),
                           "--batch-size", "4", "--timesteps", "22,0", "--class-labels", "3")
    assert code == 0 and "g.png" in out
    grid = Image.open(tmp_path / "g.png")
    assert grid.size == (2 + 2 * 34, 2 + 2 * 34) and grid.mode == "RGB"

    code, _, _ = run_cli(capsys, "sample", "--model", str(model_dir), "--out", str(tmp_path / "s.npz"),
                         "--batch-size", "3", "--seed", "5")
    assert code == 0
    data = np.load(tmp_path / "s.npz")
    assert data["arr_0"].std() > 10  # not a constant image
    assert data["arr_0"].shape == (3, 32, 32, 3) and data["arr_0"].dtype == np.uint8
    pipe = cm.ConsistencyModelPipeline.from_pretrained(model_dir)
    ref = pipe(batch_size=3, generator=torch.Generator().manual_seed(5), output_type="np")
    np.testing.assert_array_equal(data["arr_1"], ref.class_labels.numpy())
    np.testing.assert_array_equal(data["arr_0"], np.rint(ref.images * 255).astype(np.uint8))

    code, _, _ = run_cli(capsys, "sample", "--model", str(model_dir), "--out", str(tmp_path / "imgs") + "/",
                         "--batch-size", "2", "--sigmas", "80,1.38")
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "imgs").iterdir()) == [".cm-output", "000000.png", "000001.png"]


def test_sigmas_and_timesteps_agree_from_cli(model_dir, tmp_path, capsys):
    """--timesteps 22,0 on the 40-point grid is --sigmas 80,<grid[22]>."""
    grid = cm.karras_sigmas(40)
    run_cli(capsys, "sample", "--model", str(model_dir), "--out", str(tmp_path / "a.npz"), "--batch-size", "2",
            "--timesteps", "22,0", "--class-labels", "1")
    run_cli(capsys, "sample", "--model", str(model_dir), "--out", str(tmp_path / "b.npz"), "--batch-size", "2",
            "--sigmas", f"80,{float(grid[22])!r}", "--class-labels", "1")
    np.testing.assert_array_equal(np.load(tmp_path / "a.npz")["arr_0"], np.load(tmp_path / "b.npz")["arr_0"])


BAD_SAMPLE_ARGS = [
    (["--timesteps", "0,22"], "timesteps: .* descending"),
    (["--timesteps", "40,0"], r"timesteps: .* \[0, 39\]"),
    (["--timesteps", "5,-1"], r"timesteps: .* \[0, 39\]"),
    (["--sigmas", "81,1"], "sigmas: .*sigma_max"),
    (["--sigmas", "1,2"], "sigmas: .* descending"),
    (["--class-labels", "1000"], r"class-labels: .*\[0, 999\]"),
    (["--class-labels", "1,2,3"], "class-labels: got 3 labels for a batch of 2"),
    (["--out", "/no/such/folder/x.png"], "out: the folder /no/such/folder does not exist"),
    (["--out", "x.jpg"], r"out: .*\.png"),
    (["--model", "/no/such/model"], "model: no such folder"),
]


@pytest.mark.parametrize("extra,message", BAD_SAMPLE_ARGS)
def test_bad_sample_input_is_one_line_exit_2(model_dir, tmp_path, capsys, extra, message):
    argv = ["sample", "--model", str(model_dir), "--out", str(tmp_path / "o.png"), "--batch-size", "2", *extra]
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cm: error: "), err
    import re
    assert re.search(message, lines[0]), lines[0]
    assert "Traceback" not in err and not list(tmp_path.iterdir())


def test_parse_errors_exit_2(model_dir, tmp_path, capsys):
    for extra in (["--timesteps", "2,1", "--sigmas", "3,1"], ["--batch-size", "0"], ["--timesteps", "a,b"]):
        with pytest.raises(SystemExit) as exc:
            main(["sample", "--model", str(model_dir), "--out", str(tmp_path / "o.png"), *extra])
        assert exc.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


def test_unconditional_model_refuses_labels(tmp_path, capsys):
    folder = tmp_path / "uncond"
    cm.ConsistencyModelPipeline(cm.UNetModel(cm.preset("test", num_classes=None))).save_pretrained(folder)
    code, _, err = run_cli(capsys, "sample", "--model", str(folder), "--out", str(tmp_path / "o.png"),
                           "--batch-size", "1", "--class-labels", "3")
    assert code == 2 and "class-labels: this model is unconditional" in err


def test_corrupt_weights_and_config(model_dir, tmp_path, capsys):
    import shutil
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    code, _, err = run_cli(capsys, "sample", "--model", str(broken), "--out", str(tmp_path / "o.png"))
    assert code == 2 and "weights: corrupt or unreadable" in err and str(weights) in err
    (broken / "unet" / "config.json").write_text("{not json")
    code, _, err = run_cli(capsys, "sample", "--model", str(broken), "--out", str(tmp_path / "o.png"))
    assert code == 2 and "corrupt JSON" in err


def test_convert_openai_cli(tmp_path, capsys):
    """`cm convert openai` on an OpenAI-layout file: the folder reproduces the reference network."""
    ref = OpenAIUNet(32, 3, 32, 3, 2, (2,), (1, 2), num_classes=1000, num_head_channels=8)
    randomize_(ref, torch.Generator().manual_seed(1))
    ckpt = tmp_path / "cd_test.pt"
    torch.save(ref.state_dict(), ckpt)
    code, out, _ = run_cli(capsys, "convert", "openai", str(ckpt), str(tmp_path / "conv"), "--preset", "test")
    assert code == 0 and "consistency" in out
    unet = cm.ConsistencyModelPipeline.from_pretrained(tmp_path / "conv").unet
    x, t, y = torch.randn(2, 3, 32, 32), torch.tensor([1095.5, 3.0]), torch.tensor([0, 999])
    with torch.no_grad():
        torch.testing.assert_close(unet(x, t, y), ref(x, t, y), atol=1e-5, rtol=0)

    code, _, err = run_cli(capsys, "convert", "openai", str(ckpt), str(tmp_path / "conv2"), "--preset", "imagenet64")
    assert code == 2 and "'imagenet64' preset" in err and len(err.strip().splitlines()) == 1
    assert err.strip().endswith("; it fits the 'test' preset")   # the .pt's own architecture is named

    import argparse
    torch.save({"state": argparse.Namespace(payload=1)}, tmp_path / "evil.pt")
    code, _, err = run_cli(capsys, "convert", "openai", str(tmp_path / "evil.pt"), str(tmp_path / "c3"),
                           "--preset", "test")
    assert code == 2 and "pickle" in err


def test_python_dash_m_and_help(capsys):
    """The `cm` script and `python -m consistency_models` are the same program, and say nothing more
    than asked (no import-time warning); every subcommand explains itself."""
    proc = subprocess.run([str(Path(sys.executable).with_name("cm")), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: cm") and proc.stderr == "", proc.stderr
    for argv in (["sample", "--help"], ["convert", "openai", "--help"]):   # the same parser, in this process
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 0 and capsys.readouterr().out.startswith(f"usage: cm {' '.join(argv[:-1])}")
    proc = subprocess.run([sys.executable, "-m", "consistency_models", "sample", "--model", "/no/such",
                           "--out", "x.png"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip() == "cm: error: model: no such folder '/no/such', and it is " \
        "neither a Hub id like owner/name nor an embedded model (digits, digits-teacher, digits-teacher-trigflow, " \
        "digits-color)"


@pytest.mark.parametrize("argv", [
    ["sample", "--model", "digits", "--steps", "3", "--batch-size", "2", "--out", "{tmp}/grid.png"],
    ["sample", "--model", "digits", "--num", "4", "--batch-size", "2", "--out", "{tmp}/many.npz"],
    ["edit", "interpolate", "--model", "digits-teacher", "--frames", "2", "--out", "{tmp}/strip.png"],
    ["eval", "--samples", "digits:test", "--ref", "digits", "--features", "digits", "--metrics", "fid"],
    ["tune-timesteps", "--ref", "digits:test", "--features", "digits", "--num", "8", "--lo", "9", "--hi", "10"],
], ids=["sample", "sample-num", "edit", "eval", "tune-timesteps"])
def test_no_progress_turns_every_bar_off(argv, tmp_path, capsys):
    """Each command that shows progress bars takes --no-progress (batch jobs' logs), as cm train does."""
    argv = [a.format(tmp=tmp_path) for a in argv]
    code, _, err = run_cli(capsys, *argv)
    assert code == 0 and "%|" in err, err   # the bars are there by default (tqdm writes to a pipe too)
    for path in tmp_path.iterdir():
        path.unlink()
    code, _, err = run_cli(capsys, *argv, "--no-progress")
    assert code == 0 and "%|" not in err and "it/s" not in err and "img/s" not in err, err
