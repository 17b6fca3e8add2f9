"""Inputs a new user brings that the loaders used to take wrongly or refuse badly: symlinked class
folders, 16-bit PNGs, damaged zips, zips made with `zip -r`, `--out .`, a folder named like an
embedded model, statistics files without a feature network, and a few messages that named the
wrong argument. Refusals are one line `cm: error: ...`, exit code 2."""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import one_line

from consistency_models.cli import main
from consistency_models.data import load_dataset
from consistency_models.errors import InvalidInputError


def png(path: Path, value: int = 0, size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, dtype=np.uint8)).save(path)


def test_a_symlinked_class_folder_is_a_class_and_a_link_cycle_ends(tmp_path):
    png(tmp_path / "ds" / "a" / "0.png")
    for i in range(3):
        png(tmp_path / "elsewhere" / f"{i}.png", 100)
    os.symlink(tmp_path / "elsewhere", tmp_path / "ds" / "b")
    os.symlink(tmp_path / "ds", tmp_path / "ds" / "a" / "loop")   # back to the top: not walked again
    data = load_dataset(tmp_path / "ds")
    assert len(data) == 4 and data.num_classes == 2
    assert sorted(data.labels.tolist()) == [0, 1, 1, 1]


def test_16_bit_grayscale_pngs_are_scaled_to_8_bits(tmp_path):
    ramp = np.linspace(0, 65535, 256).reshape(16, 16).astype(np.uint16)
    for i in range(2):
        Image.fromarray(ramp).save(tmp_path / f"{i}.png")
    assert Image.open(tmp_path / "0.png").mode == "I;16"
    x = load_dataset(tmp_path).x                       # [-1, 1] from uint8 v: v / 127.5 - 1
    expected = np.rint(ramp * (255 / 65535)) / 127.5 - 1
    np.testing.assert_allclose(x[0, 0].numpy(), expected, atol=1e-6)


def test_a_damaged_zip_member_is_one_line_naming_it(tmp_path, capsys):
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(buffer, "PNG")
    with zipfile.ZipFile(tmp_path / "c.zip", "w") as archive:
        for i in range(4):
            archive.writestr(f"{i}.png", buffer.getvalue())
    data = bytearray((tmp_path / "c.zip").read_bytes())
    data[60] ^= 0xFF                                   # inside the first member's bytes: its CRC fails
    (tmp_path / "c.zip").write_bytes(bytes(data))
    err = one_line(["train", "--method", "ict", "--data", str(tmp_path / "c.zip"), "--out", str(tmp_path / "run"),
                    "--steps", "1", "--batch-size", "2", "--no-progress"], capsys)
    assert err == f"data: {tmp_path / 'c.zip'}:0.png is not a readable PNG/JPEG image (BadZipFile)"
    assert not (tmp_path / "run").exists()


def test_a_zip_made_with_zip_r_keeps_its_labels_and_an_unlabelled_zip_says_so(tmp_path):
    for i in range(4):
        png(tmp_path / "data" / "imgs" / f"{i}.png", 40 * i)
    (tmp_path / "data" / "dataset.json").write_text(json.dumps({"labels": [[f"imgs/{i}.png", i % 2] for i in range(4)]}))
    with zipfile.ZipFile(tmp_path / "d.zip", "w") as archive:   # as `zip -r d.zip data/` writes it
        for path in sorted((tmp_path / "data").rglob("*")):
            archive.write(path, path.relative_to(tmp_path).as_posix())
    labelled = load_dataset(tmp_path / "d.zip")
    assert labelled.num_classes == 2 and labelled.labels.tolist() == [0, 1, 0, 1] and labelled.notes == []
    with zipfile.ZipFile(tmp_path / "n.zip", "w") as archive:
        for i in range(4):
            archive.write(tmp_path / "data" / "imgs" / f"{i}.png", f"cls{i % 2}/{i}.png")
    unlabelled = load_dataset(tmp_path / "n.zip")
    assert unlabelled.num_classes is None and unlabelled.notes[0].startswith("no labels (a dataset.json")


def test_sample_into_the_working_folder_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for out in (".", "./", ".."):
        assert one_line(["sample", "--out", out, "--batch-size", "2"], capsys).startswith(
            f"out: '{out}' is the current folder or one above it")


def test_a_folder_named_like_an_embedded_model_does_not_hide_it(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["sample", "--out", "digits/", "--batch-size", "2"]) == 0     # the README's DIR/ form
    assert main(["sample", "--out", "grid.png", "--batch-size", "2"]) == 0    # --model digits: still embedded
    assert main(["sample", "--out", "digits/", "--batch-size", "2", "--overwrite"]) == 0
    assert sorted(p.name for p in (tmp_path / "digits").iterdir()) == [".cm-output", "000000.png", "000001.png"]


def test_fid_of_two_statistics_files_needs_no_feature_network(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CM_INCEPTION_WEIGHTS", str(tmp_path / "absent.pth"))   # building Inception would fail
    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, 2048))
    np.savez(tmp_path / "s.npz", mu=a.mean(0), sigma=np.cov(a, rowvar=False))
    capsys.readouterr()
    assert main(["eval", "--samples", str(tmp_path / "s.npz"), "--ref", str(tmp_path / "s.npz"), "--metrics", "fid"]) == 0
    fid = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("FID"))
    assert abs(float(fid.split()[-1])) < 1e-6
    assert one_line(["eval", "--samples", "digits:test", "--features", "digits", "--save-stats", str(tmp_path)],
                    capsys) == f"save-stats: {tmp_path} is a folder; give a file name (in it, or beside it)"
    assert one_line(["eval", "--samples", "digits:test", "--features", "digits", "--save-stats", str(tmp_path / "s.txt")],
                    capsys) == f"save-stats: '{tmp_path / 's.txt'}' must end in .npz for a statistics file"


def test_messages_name_the_argument(tmp_path, capsys):
    assert one_line(["new", str(tmp_path / "m"), "--grid", "1"], capsys) == \
        "grid: 1 is not allowed; use an integer from 2 to 1000000"
    assert one_line(["convert", "openai", str(tmp_path), str(tmp_path / "out")], capsys).startswith(
        f"checkpoint: {tmp_path} is not a regular file")
    (tmp_path / "k.pt").write_bytes(pickle.dumps(int, protocol=4))       # a pickle, no tensors
    err = one_line(["convert", "openai", str(tmp_path / "k.pt"), str(tmp_path / "out")], capsys)
    assert err.startswith("weights: ")
    (tmp_path / "t.pt").write_text("hello\n")
    assert "not a PyTorch or safetensors checkpoint" in one_line(
        ["convert", "openai", str(tmp_path / "t.pt"), str(tmp_path / "out")], capsys)
    assert not (tmp_path / "out").exists()


def test_the_timestep_search_refuses_a_model_of_points_before_any_work(tmp_path):
    from consistency_models import ConsistencyModelPipeline
    from consistency_models.evaluation.timestep_search import search_range

    assert main(["train", "--method", "ict", "--data", "toy:mog8", "--out", str(tmp_path / "p"), "--steps", "1",
                 "--batch-size", "8", "--no-progress"]) == 0
    with pytest.raises(InvalidInputError, match=r"^model: the timestep search scores images by their features; "
                                                r"this model makes points$"):
        search_range(ConsistencyModelPipeline.from_pretrained(tmp_path / "p"))


@pytest.mark.parametrize("given, message", [
    ({"steps": 2.5}, "steps: 2.5 is not allowed; use an integer"),
    ({"steps": True}, "steps: True is not allowed; use an integer"),
    ({"seed": 1.5}, "seed: 1.5 is not allowed; use an integer"),
    ({"rho": "7"}, "rho: '7' is not allowed; use a number"),
    ({"s0": 10.5}, "s0: 10.5 is not allowed; use an integer"),          # a method option
    ({"use_labels": "no"}, "use_labels: 'no' is not allowed; use true or false"),
    ({"ema_rates": 0.999}, "ema_rates: 0.999 is not allowed; use a list of numbers"),
    ({"ema_rates": ()}, "ema_rates: () is not allowed; use one or more rates in [0, 1)"),
    ({"sigma_max": 0.001}, "sigma_max: 0.001 is not allowed; use a number > sigma_min (0.002)"),
    ({"sigma_min": float("nan")}, "sigma_min: nan is not allowed; use a number > 0"),
    ({"sigma_data": float("inf")}, "sigma_data: inf is not allowed; use a number > 0"),
    ({"rho": 0}, "rho: 0 is not allowed; use a number > 0"),
    ({"options": [1, 2]}, "options: a list is not allowed; use a dict of the method's settings"),
])
def test_training_settings_of_another_type_or_range_are_refused_when_made(tmp_path, given, message):
    """They used to train (some the whole run) and fail at the export, or end in a traceback."""
    from consistency_models.training import TrainConfig

    with pytest.raises(InvalidInputError) as error:
        TrainConfig.from_settings(**{"method": "ict", "data": "toy:mog8", "out": str(tmp_path / "run"), "steps": 2,
                                     "batch_size": 8, **given})
    assert str(error.value) == message
    assert not (tmp_path / "run").exists()


def test_a_path_stands_for_a_string_setting(tmp_path):
    from consistency_models.training import TrainConfig

    cfg = TrainConfig(method="ict", data="toy:mog8", out=tmp_path / "run", steps=2, batch_size=8)
    assert cfg.out == str(tmp_path / "run")


def test_save_pretrained_into_a_file_or_nowhere_and_a_diffusers_unet_are_one_line(tmp_path, monkeypatch):
    from diffusers import UNet2DModel

    from consistency_models import ConsistencyModelPipeline

    pipe = ConsistencyModelPipeline.from_pretrained("digits")
    (tmp_path / "file.txt").write_text("mine")
    with pytest.raises(InvalidInputError, match=r"^path: .*file\.txt is a file; give a folder"):
        pipe.save_pretrained(tmp_path / "file.txt")
    assert (tmp_path / "file.txt").read_text() == "mine"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidInputError, match=r"^path: '' is empty"):
        pipe.save_pretrained("")
    with pytest.raises(InvalidInputError, match=r"^variant: '\.\./x' is not allowed"):
        pipe.save_pretrained(tmp_path / "out", variant="../x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]
    unet = UNet2DModel(sample_size=8, block_out_channels=(32, 32), norm_num_groups=8,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    with pytest.raises(InvalidInputError, match=r"^unet: a UNet2DModel is not a network of this package; save it"):
        ConsistencyModelPipeline(unet)


@pytest.mark.parametrize("given, message", [
    ({"timesteps": 9}, "timesteps: 9 is not allowed; give a list"),
    ({"sigmas": 80.0}, "sigmas: 80.0 is not allowed; give a list"),
    ({"num_inference_steps": True}, "num_inference_steps: True is not allowed; use a positive integer"),
    ({"num_inference_steps": 2.0}, "num_inference_steps: 2.0 is not allowed; use a positive integer"),
    ({"latents": np.zeros((1, 1, 16, 16), np.float32)},
     "latents: a ndarray is not a torch.Tensor; give torch.from_numpy(latents)"),
    ({"callback": 5}, "callback: 5 is not callable; give a function (step, timestep, sample)"),
])
def test_scalar_noise_levels_are_one_line(given, message):
    from consistency_models import ConsistencyModelPipeline

    with pytest.raises(InvalidInputError, match="^" + re.escape(message)):
        ConsistencyModelPipeline.from_pretrained("digits")(batch_size=1, output_type="np", **given)


def test_an_out_below_a_file_says_it_is_a_file(tmp_path, capsys):
    (tmp_path / "afile.txt").write_text("mine")
    assert one_line(["train", "--method", "ict", "--data", "toy:mog8", "--out", str(tmp_path / "afile.txt" / "sub"),
                     "--steps", "1"], capsys) == f"out: {tmp_path / 'afile.txt'} is a file, not a folder"


def test_a_compiled_run_says_that_its_first_step_compiles(tmp_path, capsys, monkeypatch):
    from consistency_models.training import loop

    monkeypatch.setattr(loop, "compiled", lambda module: module)   # the message, not inductor's minutes
    capsys.readouterr()
    assert main(["train", "--method", "ict", "--data", "toy:mog8", "--out", str(tmp_path / "run"), "--steps", "1",
                 "--batch-size", "8", "--no-progress", "--compile"]) == 0
    assert "compile: the first step compiles the networks" in capsys.readouterr().err
    assert main(["train", "--method", "ict", "--data", "toy:mog8", "--out", str(tmp_path / "plain"), "--steps", "1",
                 "--batch-size", "8", "--no-progress"]) == 0
    assert "compile:" not in capsys.readouterr().err


def test_numpy_integers_count_as_integers(tmp_path):
    """np.int64 comes out of arrays (a batch size from a config array); a bool or a float does not count."""
    from consistency_models import ConsistencyModelPipeline
    from consistency_models.evaluation.generation import generate_samples
    from consistency_models.schedule import NoiseLevels
    from consistency_models.trigflow import default_times

    pipe = ConsistencyModelPipeline.from_pretrained("digits")
    import torch

    given = pipe(batch_size=np.int64(2), num_inference_steps=np.int64(2), callback_steps=np.int32(1),
                 class_labels=3, generator=torch.Generator().manual_seed(0), output_type="pt").images
    same = pipe(batch_size=2, num_inference_steps=2, class_labels=3, generator=torch.Generator().manual_seed(0),
                output_type="pt").images
    assert given.shape == (2, 1, 16, 16) and given.equal(same)
    for bad in (True, 2.0, np.float64(2)):
        with pytest.raises(InvalidInputError, match="^batch_size: .* must be an integer"):
            pipe(batch_size=bad)
    for name in ("digits-teacher", "digits-teacher-trigflow"):   # Heun's steps (EDM, TrigFlow diffusion)
        other = ConsistencyModelPipeline.from_pretrained(name)
        assert other.noise_schedule(NoiseLevels.of(np.int64(3), None, None)) == \
            other.noise_schedule(NoiseLevels.of(3, None, None))
    assert default_times(np.int64(2)) == default_times(2)                  # sCM's times
    out = generate_samples(pipe, np.int64(3), tmp_path / "s.npz", batch_size=np.int64(2), compute_batch=np.int32(2),
                           progress=False)
    assert np.load(out)["arr_0"].shape == (3, 16, 16, 1)


def test_a_preset_beside_a_copied_network_is_refused_and_resume_knows_the_datas_preset(tmp_path, capsys):
    run = ["train", "--method", "ict", "--data", "toy:mog8", "--steps", "2", "--batch-size", "8", "--no-progress"]
    assert main([*run, "--out", str(tmp_path / "a")]) == 0            # no --preset: the data's, mlp2d
    assert one_line([*run, "--out", str(tmp_path / "b"), "--init-from", str(tmp_path / "a"), "--preset", "wide"],
                    capsys) == (f"preset: 'wide' is not used: the network is copied from --init-from "
                                f"{tmp_path / 'a'}, architecture included; drop --preset")
    assert not (tmp_path / "b").exists()
    capsys.readouterr()
    # It said "other settings: preset=None (now 'mlp2d')":
    assert main([*run, "--out", str(tmp_path / "a"), "--preset", "mlp2d", "--resume"]) == 0
    assert "resume: continuing from step 2 of 2" in capsys.readouterr().err
    assert one_line([*run, "--out", str(tmp_path / "a"), "--preset", "tiny16", "--resume"], capsys) == (
        "preset: 'tiny16' is not a point-data preset; use one of mlp2d")


def test_tensorboard_without_its_package_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    assert one_line(["train", "--method", "ict", "--data", "toy:mog8", "--out", str(tmp_path / "run"), "--steps", "1",
                     "--tensorboard"], capsys) == "tensorboard: the tensorboard package is not installed; pip install tensorboard"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
def test_half_precision_training_on_a_cpu_without_its_arithmetic_says_it_is_slow(tmp_path, capsys, monkeypatch,
                                                                                  precision):
    from consistency_models.training import loop

    monkeypatch.setattr(loop, "half_arithmetic", lambda dtype: dtype == torch.float32)  # an AVX2 CPU
    capsys.readouterr()
    assert main(["train", "--method", "ict", "--data", "toy:mog8", "--out", str(tmp_path / "run"), "--steps", "1",
                 "--batch-size", "8", "--no-progress", "--precision", precision]) == 0
    err = capsys.readouterr().err
    assert f"precision: this CPU has no {precision} arithmetic, so {precision} autocast runs at several times" in err
    assert "float32 is its fast precision" in err


def test_slow_precision_note_names_the_fast_precision_of_each_cpu(monkeypatch):
    from consistency_models.training import loop

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for bf16, fp16 in [(False, False), (True, False), (True, True)]:  # AVX2, AVX-512-BF16 or AMX, AMX-FP16
        native = {torch.bfloat16: bf16, torch.float16: fp16, torch.float32: True}
        monkeypatch.setattr(loop, "half_arithmetic", native.__getitem__)
        assert loop.slow_precision_note("float32", cpu) is None
        assert loop.slow_precision_note("float16", cuda) is None and loop.slow_precision_note("bfloat16", cuda) is None
        assert (loop.slow_precision_note("bfloat16", cpu) is None) == bf16
        assert (loop.slow_precision_note("float16", cpu) is None) == fp16
        if not fp16:
            assert loop.slow_precision_note("float16", cpu).endswith(
                f"{'bfloat16' if bf16 else 'float32'} is its fast precision")


def test_sample_compile_says_that_its_first_batch_compiles(tmp_path, capsys, monkeypatch):
    from consistency_models.fast_paths import FastPaths

    monkeypatch.setattr(FastPaths, "set_compile", lambda self, enabled, **options: None)   # the message, not inductor
    capsys.readouterr()
    assert main(["sample", "--out", str(tmp_path / "g.png"), "--batch-size", "1", "--compile"]) == 0
    assert "compile: the first batch compiles the network" in capsys.readouterr().err


@pytest.mark.parametrize("options, said", [
    (["--dtype", "bfloat16", "--no-fast-kernels"], "with --no-fast-kernels"),
    (["--dtype", "bfloat16"], None),        # the fast kernels compute in float32: nothing to say
    (["--no-fast-kernels"], None),          # float32
    (["--model", "digits-teacher", "--dtype", "bfloat16", "--compile"], None),  # Heun samples eagerly
])
def test_sample_in_half_precision_without_fast_kernels_on_a_cpu_without_its_arithmetic_says_so(
        tmp_path, capsys, monkeypatch, options, said):
    from consistency_models.cli import sample

    monkeypatch.setattr(sample, "half_arithmetic", lambda dtype: dtype == torch.float32)  # an AVX2 CPU
    capsys.readouterr()
    assert main(["sample", "--out", str(tmp_path / "g.png"), "--batch-size", "1", *options]) == 0
    err = capsys.readouterr().err
    if said:
        assert f"dtype: this CPU has no bfloat16 arithmetic, so {said} the network runs PyTorch's fallback" in err
    else:
        assert "fallback" not in err
    monkeypatch.setattr(sample, "half_arithmetic", lambda dtype: True)
    assert main(["sample", "--out", str(tmp_path / "h.png"), "--batch-size", "1", *options]) == 0
    assert "fallback" not in capsys.readouterr().err


def test_save_pretrained_refuses_the_packages_shipped_models(tmp_path, monkeypatch, capsys):
    """Saving into them would change the shipped models for every later run. (On a copy of the
    folder: a broken refusal must not overwrite the real weights.)"""
    import shutil

    from consistency_models import ConsistencyModelPipeline
    from consistency_models.io import hub

    root = tmp_path / "weights"
    shutil.copytree(hub.embedded_root() / "digits", root / "digits")
    monkeypatch.setattr(hub, "embedded_root", lambda: root)
    shipped = root / "digits" / "unet" / "diffusion_pytorch_model.safetensors"
    before = shipped.read_bytes()
    pipe = ConsistencyModelPipeline.from_pretrained("digits")
    for target in (root / "digits", root / "new-one"):
        with pytest.raises(InvalidInputError, match=r"^path: .* is inside the package's shipped models"):
            pipe.save_pretrained(target)
    assert shipped.read_bytes() == before and not (root / "new-one").exists()
    assert one_line(["train", "--method", "ict", "--data", "toy:mog8", "--out", str(root / "mine"), "--steps", "1"],
                    capsys).startswith(f"out: {root / 'mine'} is inside the package's shipped models")
    assert one_line(["new", str(root / "mine")], capsys).startswith(f"out_dir: {root / 'mine'} is inside the package's")
    assert not (root / "mine").exists()


def test_from_pretrained_takes_diffusers_loading_options(tmp_path, monkeypatch):
    """use_safetensors, device_map, low_cpu_mem_usage, unet=/scheduler= and the Hub's download options,
    as in diffusers' from_pretrained (they were TypeErrors). The Hub's download is huggingface_hub's
    own function, replaced by one that serves a folder written here and records what it was asked."""
    import shutil

    import huggingface_hub
    import torch

    from consistency_models import CMStochasticIterativeScheduler, ConsistencyModelPipeline
    from consistency_models.schedule import NoiseLevels

    base = ConsistencyModelPipeline.from_pretrained("digits")
    base.save_pretrained(tmp_path / "both")
    base.save_pretrained(tmp_path / "both", safe_serialization=False)    # removes the .safetensors: put it back
    base.save_pretrained(tmp_path / "st")
    (tmp_path / "both" / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(
        (tmp_path / "st" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes())
    asked = []

    def snapshot_download(repo_id, allow_patterns, **options):
        asked.append((repo_id, sorted(allow_patterns), options))
        served = tmp_path / f"served{len(asked)}"
        shutil.copytree(tmp_path / "both", served)
        for weights in (served / "unet").iterdir():   # only the files the patterns name come down
            if weights.suffix in (".bin", ".safetensors") and f"unet/*{weights.suffix}" not in allow_patterns:
                weights.unlink()
        return str(served)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    from_bin = ConsistencyModelPipeline.from_pretrained("owner/cm", use_safetensors=False, device_map="cpu",
                                                        low_cpu_mem_usage=False, revision="v1", token="t")
    assert asked[-1] == ("owner/cm", ["model_index.json", "scheduler/*.json", "unet/*.bin", "unet/*.json"],
                         {"revision": "v1", "token": "t", "local_files_only": False})
    assert sorted(p.name for p in (tmp_path / f"served{len(asked)}" / "unet").iterdir()) == [
        "config.json", "diffusion_pytorch_model.bin"]
    assert all(a.equal(b) for a, b in zip(from_bin.unet.state_dict().values(), base.unet.state_dict().values()))
    ConsistencyModelPipeline.from_pretrained("owner/cm", local_files_only=True, cache_dir=str(tmp_path / "c"))
    assert asked[-1][1] == ["model_index.json", "scheduler/*.json", "unet/*.json", "unet/*.safetensors"]
    assert asked[-1][2] == {"cache_dir": str(tmp_path / "c"), "local_files_only": True}
    balanced = ConsistencyModelPipeline.from_pretrained("digits", device_map="balanced")
    assert next(balanced.unet.parameters()).device.type == ("cuda" if torch.cuda.is_available() else "cpu")

    with pytest.raises(InvalidInputError, match=r"^use_safetensors: True asks for diffusion_pytorch_model\.safetensors \(or its shards\), "
                                                r"which .* does not have \(found: diffusion_pytorch_model\.bin\)"):
        ConsistencyModelPipeline.from_pretrained(tmp_path / f"served{len(asked) - 1}", use_safetensors=True)
    with pytest.raises(InvalidInputError, match=r"^device_map: give device='cpu' or device_map='cpu', not both"):
        ConsistencyModelPipeline.from_pretrained("digits", device="cpu", device_map="cpu")
    with pytest.raises(InvalidInputError, match=r"^device_map: \{'unet': 0\} is not allowed; this pipeline has one"):
        ConsistencyModelPipeline.from_pretrained("digits", device_map={"unet": 0})
    with pytest.raises(TypeError, match="unexpected keyword argument 'resume'"):
        ConsistencyModelPipeline.from_pretrained("digits", resume=True)
    with pytest.raises(InvalidInputError, match=r"^unet: a given unet is used as it is"):
        ConsistencyModelPipeline.from_pretrained("digits", unet=base.unet, dtype=torch.float16)
    assert base.dtype == torch.float32
    scheduler = CMStochasticIterativeScheduler(num_train_timesteps=40)
    swapped = ConsistencyModelPipeline.from_pretrained("digits", scheduler=scheduler, unet=base.unet)
    assert swapped.scheduler is scheduler and swapped.unet is base.unet
    two = NoiseLevels.of(2, None, None)
    assert swapped.noise_schedule(two) == ConsistencyModelPipeline(base.unet, scheduler).noise_schedule(two)
    assert swapped.noise_schedule(two) != base.noise_schedule(two)     # 40 grid points, not the folder's 18


def test_a_batch_that_does_not_split_over_the_processes_is_one_line_before_anything_is_written(tmp_path):
    """Under torchrun it was a ValueError traceback on every rank (a context of 2 processes; the
    check comes before any collective call)."""
    from consistency_models.distributed import DistributedContext
    from consistency_models.training import TrainConfig
    from consistency_models.training.loop import Trainer

    cfg = TrainConfig(method="ict", data="toy:mog8", out=str(tmp_path / "run"), steps=1, batch_size=7)
    with pytest.raises(InvalidInputError, match=r"^batch_size: 7 does not split into 2 processes; use a multiple of 2$"):
        Trainer(cfg, DistributedContext(rank=1, world_size=2))
    cfg = TrainConfig(method="ict", data="toy:mog8", out=str(tmp_path / "run"), steps=1, batch_size=12, accumulation=2)
    with pytest.raises(InvalidInputError, match=r"^batch_size: 12 does not split into --accumulation 2 micro-batches "
                                                r"over 4 processes; use a multiple of 8$"):
        Trainer(cfg, DistributedContext(rank=1, world_size=4))
    assert not (tmp_path / "run").exists()


def test_a_very_large_image_loads_without_pillows_two_line_warning(tmp_path, recwarn):
    """89-179 Mpixel: Pillow warns in two lines (DecompressionBombWarning) and decodes; such data is
    asked for, so it loads quietly (past 179 Mpixel it is one line, test_adversarial.py)."""
    from consistency_models.data.decode import open_image

    big = tmp_path / "big.png"
    Image.new("1", (10000, 9500)).save(big)   # 95 M pixels, a few kB on disk
    assert open_image(lambda: open(big, "rb"), str(big)).size == (10000, 9500)
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_devices_and_dtypes_that_cannot_be_are_one_line_naming_the_argument():
    """torch's own errors named neither `device` nor `dtype` ("Expected one of cpu, cuda, ipu, xpu, ...
    device type at start of device string: gpu"; an AssertionError "Torch not compiled with CUDA")."""
    from consistency_models import ConsistencyModelPipeline

    pipe = ConsistencyModelPipeline.from_pretrained("digits")
    with pytest.raises(InvalidInputError, match=r"^device: 'gpu' is not a device name \(cpu, cuda"):
        pipe.to("gpu")
    with pytest.raises(InvalidInputError, match=r"^device: 'gpu' is not a device name"):
        ConsistencyModelPipeline.from_pretrained("digits", device="gpu")
    with pytest.raises(InvalidInputError, match=r"^dtype: torch.int64 is not allowed; use torch.float32"):
        pipe.to(torch.int64)
    if not torch.cuda.is_available():
        with pytest.raises(InvalidInputError, match=r"^device: 'cuda' was asked for, but CUDA is not available here"):
            pipe.to("cuda")
    assert pipe.to("cpu", torch.float32).unet.conv_in.weight.dtype == torch.float32


def test_numpy_scalars_in_a_scheduler_config_become_python_numbers_and_save(tmp_path):
    """from_config(sigma_max=np.float32(80)) was kept as a NumPy scalar: save_pretrained then
    raised a raw TypeError after writing the new weights over an existing folder's (a folder whose
    network and scheduler came from two models)."""
    from consistency_models import CMStochasticIterativeScheduler, ConsistencyModelPipeline
    from consistency_models.io.atomic import write_json
    from consistency_models.schedule import SchedulerConfig

    config = SchedulerConfig(num_train_timesteps=np.int64(18), sigma_max=np.float32(80.0), rho=np.float64(7.0))
    assert [type(config[k]) for k in ("num_train_timesteps", "sigma_max", "rho")] == [int, float, float]
    pipe = ConsistencyModelPipeline.from_pretrained("digits")
    pipe.scheduler = CMStochasticIterativeScheduler.from_config(pipe.scheduler.config, sigma_max=np.float32(40.0))
    pipe.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "scheduler" / "scheduler_config.json").read_text())["sigma_max"] == 40.0
    assert ConsistencyModelPipeline.from_pretrained(tmp_path / "m").scheduler.config.sigma_max == 40.0
    write_json(tmp_path / "n.json", {"a": np.int64(3), "b": [np.float32(0.5)]})
    assert json.loads((tmp_path / "n.json").read_text()) == {"a": 3, "b": [0.5]}
    with pytest.raises(InvalidInputError, match=r"^path: .*o\.json: a object value cannot be written as JSON$"):
        write_json(tmp_path / "o.json", {"a": object()})
    assert not (tmp_path / "o.json").exists()


def test_switches_and_empty_names_are_refused_in_one_line(tmp_path, capsys, monkeypatch):
    """enable_fast_kernels("no") turned the kernels on; from_pretrained(None) was pathlib's
    TypeError and from_pretrained("") read the working folder; `cm new ''` named '.'."""
    from consistency_models import ConsistencyModelPipeline

    pipe = ConsistencyModelPipeline.from_pretrained("digits")
    for method in (pipe.enable_fast_kernels, pipe.compile, pipe.enable_cuda_graph):
        with pytest.raises(InvalidInputError, match=r"^enabled: 'no' is not allowed; use True or False$"):
            method("no")
    with pytest.raises(InvalidInputError, match=r"^fast_kernels: 'x' is not allowed; use True or False$"):
        ConsistencyModelPipeline.from_pretrained("digits", fast_kernels="x")
    monkeypatch.chdir(tmp_path)
    for name in (None, "", "  "):
        with pytest.raises(InvalidInputError, match=rf"^model: {re.escape(repr(name))} is not allowed; give a "
                                                    r"pipeline folder, an embedded model's name \("):
            ConsistencyModelPipeline.from_pretrained(name)
    assert main(["new", "", "--preset", "tiny16"]) == 2
    assert capsys.readouterr().err == "cm: error: out_dir: '' is empty; give the new folder to write, e.g. my-model\n"
    assert main(["sample", "--model", "", "--out", "x.png"]) == 2   # was "out: x.png lies inside the --model folder"
    assert capsys.readouterr().err.startswith("cm: error: model: '' is empty; give a pipeline folder")
    from consistency_models import CMStochasticIterativeScheduler

    for name in (None, ""):
        with pytest.raises(InvalidInputError, match=rf"^path: {re.escape(repr(name))} is not allowed; give a folder"):
            CMStochasticIterativeScheduler.from_pretrained(name)
    assert list(tmp_path.iterdir()) == []


def test_images_of_different_sizes_in_one_edit_are_one_line(tmp_path):
    from consistency_models import ConsistencyModelPipeline, editing

    pipe = ConsistencyModelPipeline.from_pretrained("digits")
    a, b = Image.new("L", (16, 16), 30), Image.new("L", (8, 8), 30)
    with pytest.raises(InvalidInputError, match=r"^image: image 1 is 8×8 with 1 channel\(s\), image 0 16×16 with 1; "):
        editing.inpaint(pipe, [a, b], torch.ones(16, 16))
