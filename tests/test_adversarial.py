"""Hostile input through the real `cm` entry point: every case ends with one line `cm: error: ...`
(or a clean exit), no traceback, and no file of the user's changed (hashes before and after).

Cases run through `consistency_models.cli.main` in this process (a `cm` process costs ~3 s of
CPU before it can refuse anything); crafted model folders are real folders written by
`save_pretrained` and then edited; weights files are real files.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from consistency_models import CMStochasticIterativeScheduler, ConsistencyModelPipeline
from consistency_models.cli import main
from consistency_models.evaluation.generation import existing_indices
from consistency_models.io.lock import hold_folder
from consistency_models.networks.mlp import MLP, MLPConfig


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under `root` (relative path → SHA-256), to prove nothing was changed."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def run_cm(capsys, argv: list[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, pattern: str = "", expected_code: int = 2) -> None:
    assert code == expected_code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("cm: error: ") and pattern in lines[0], lines[0]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A small unconditional point model folder (an MLP), the user's own files."""
    folder = tmp_path_factory.mktemp("adv") / "model"
    ConsistencyModelPipeline(MLP(MLPConfig(hidden=16, depth=1, emb_dim=8)), CMStochasticIterativeScheduler()
                             ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def image_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("adv_img") / "model"
    ConsistencyModelPipeline.from_pretrained("digits").save_pretrained(folder)
    return folder


def crafted(tmp_path: Path, source: Path, part: str, **changes) -> Path:
    """A copy of `source` with keys of `part` (unet/config.json, scheduler/scheduler_config.json,
    model_index.json) changed."""
    folder = shutil.copytree(source, tmp_path / "crafted")
    path = folder / part
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))
    return folder


# -- crafted model folders ------------------------------------------------------------------------------
@pytest.mark.parametrize("changes, pattern", [
    ({"num_train_timesteps": 0}, "num_train_timesteps: 0 is not allowed"),
    ({"num_train_timesteps": 1}, "num_train_timesteps: 1 is not allowed"),
    ({"num_train_timesteps": 10**12}, "num_train_timesteps: 1000000000000 is not allowed"),
    ({"num_train_timesteps": "40"}, "num_train_timesteps: '40' is not allowed"),
    ({"num_train_timesteps": 40.5}, "num_train_timesteps: 40.5 is not allowed"),
    ({"rho": 0}, "rho: 0 is not allowed"),
    ({"sigma_data": float("nan")}, "sigma_data: nan is not allowed"),
    ({"sigma_min": -1.0}, "sigma_min: -1.0 is not allowed"),
    ({"sigma_min": 100.0}, "sigma_max: 80.0 is not allowed; use a number > sigma_min"),
    ({"clip_denoised": "yes"}, "clip_denoised: 'yes' is not allowed"),
    ({"s_noise": float("inf")}, "s_noise: inf is not allowed"),
])
def test_crafted_scheduler_config(tmp_path, capsys, image_model, changes, pattern):
    folder = crafted(tmp_path, image_model, "scheduler/scheduler_config.json", **changes)
    before = tree_digest(folder)
    code, _, err = run_cm(capsys, ["sample", "--model", str(folder), "--out", str(tmp_path / "x.png")])
    assert_one_line_error(code, err, pattern)
    assert "scheduler_config.json" in err and tree_digest(folder) == before
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("changes, pattern", [
    ({"in_channels": -3}, "in_channels: -3 is not allowed"),
    ({"num_class_embeds": "10"}, "num_classes: '10' is not allowed"),
    ({"dropout": 5}, "dropout: 5 is not allowed"),
    ({"norm_num_groups": 0, "attn_norm_num_groups": 0}, "norm_num_groups: 0 is not allowed"),
    ({"attention_head_dim": 0}, "num_head_channels: 0 is not allowed"),
    ({"sample_size": 1e9}, "sample_size"),
    ({"sample_size": 10**9}, "image_size: 1000000000 is not allowed"),
    ({"layers_per_block": "2"}, "num_res_blocks: '2' is not allowed"),
    ({"norm_eps": -1}, "norm_eps: -1 is not allowed"),
])
def test_crafted_unet_config(tmp_path, capsys, image_model, changes, pattern):
    folder = crafted(tmp_path, image_model, "unet/config.json", **changes)
    code, _, err = run_cm(capsys, ["sample", "--model", str(folder), "--out", str(tmp_path / "x.png")])
    assert_one_line_error(code, err, pattern)


def test_parametrization_of_another_type(tmp_path, capsys, model):
    folder = crafted(tmp_path, model, "model_index.json", _parametrization=["edm"])
    code, _, err = run_cm(capsys, ["sample", "--model", str(folder), "--out", str(tmp_path / "x.npz")])
    assert_one_line_error(code, err, "parametrization: ['edm']")


def test_weights_holding_no_tensors(tmp_path, capsys, model):
    folder = shutil.copytree(model, tmp_path / "m")
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    torch.save({"net.0.weight": [1, 2, 3]}, folder / "unet" / "diffusion_pytorch_model.bin")
    code, _, err = run_cm(capsys, ["sample", "--model", str(folder), "--out", str(tmp_path / "x.npz")])
    assert_one_line_error(code, err, "is a dict, but not of names → tensors: its entry 'net.0.weight' is not a tensor "
                                     "(list)")
    wrapped = shutil.copytree(model, tmp_path / "w")   # a training checkpoint: the weights one level down
    (wrapped / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    torch.save({"model": {"net.0.weight": torch.zeros(2)}}, wrapped / "unet" / "diffusion_pytorch_model.bin")
    code, _, err = run_cm(capsys, ["sample", "--model", str(wrapped), "--out", str(tmp_path / "x.npz")])
    assert_one_line_error(code, err, "its entry 'model' is not a tensor (dict); if it holds the weights, save "
                                     "checkpoint['model'] alone")
    torch.save([torch.zeros(2)], wrapped / "unet" / "diffusion_pytorch_model.bin")
    code, _, err = run_cm(capsys, ["sample", "--model", str(wrapped), "--out", str(tmp_path / "x.npz")])
    assert_one_line_error(code, err, "diffusion_pytorch_model.bin holds a list, not a state dict (names → tensors)")


def test_random_bytes_as_weights(tmp_path, capsys, model):
    folder = shutil.copytree(model, tmp_path / "m")
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(np.random.default_rng(0).bytes(4096))
    code, _, err = run_cm(capsys, ["sample", "--model", str(folder), "--out", str(tmp_path / "x.npz")])
    assert_one_line_error(code, err, "weights: corrupt or unreadable weights file")


# -- training into the wrong folder ------------------------------------------------------------------------
TRAIN = ["train", "--method", "ict", "--data", "toy:mog8", "--steps", "2", "--batch-size", "32", "--no-progress"]


def test_resume_into_a_model_folder_is_refused(tmp_path, capsys, model):
    """Data loss found in review: `--resume` trained into any non-empty folder (here a copy of a model)."""
    copy = shutil.copytree(model, tmp_path / "mycopy")
    before = tree_digest(copy)
    code, _, err = run_cm(capsys, [*TRAIN, "--out", str(copy), "--resume"])
    assert_one_line_error(code, err, "is not a run folder of cm train")
    assert tree_digest(copy) == before


def test_init_from_into_its_own_folder_is_refused(tmp_path, capsys, model):
    copy = shutil.copytree(model, tmp_path / "base")
    before = tree_digest(copy)
    code, _, err = run_cm(capsys, [*TRAIN, "--out", str(copy), "--init-from", str(copy), "--resume"])
    assert_one_line_error(code, err, "is the --init-from input")
    assert tree_digest(copy) == before


@pytest.mark.parametrize("extra, pattern", [
    (["--grad-clip", "-1"], "grad-clip: -1.0 is not allowed"),
    (["--weight-decay", "nan"], "weight-decay: nan is not allowed"),
    (["--lr", "-1"], "lr: -1.0 is not allowed"),
    (["--dropout", "5"], "dropout: 5.0 is not allowed"),
    (["--steps", "0"], "steps: 0 is not allowed"),
    (["--steps", str(2**63)], "steps: 9223372036854775808 is not allowed; use an integer from 1 to 1000000000"),
    (["--s1", str(10**9)], "s1: 1000000000 is not allowed; use an integer from 1 to 100000"),
    (["--save-every", "0"], "save-every: 0 is not allowed"),
    (["--seed", str(2**70)], "seed: "),
    (["--resolution", "8"], "resolution: 8 was given, but toy:mog8 is a set of 2-D points"),
])
def test_bad_training_values(tmp_path, capsys, extra, pattern):
    code, _, err = run_cm(capsys, [*TRAIN, "--out", str(tmp_path / "run"), *extra])
    assert_one_line_error(code, err, pattern)
    assert not (tmp_path / "run").exists()


def test_ct_mu0_out_of_range(tmp_path, capsys):
    code, _, err = run_cm(capsys, ["train", "--method", "ct", "--data", "toy:mog8", "--out", str(tmp_path / "r"),
                                   "--mu0", "-1", "--no-progress"])
    assert_one_line_error(code, err, "mu0: -1.0 is not allowed")


@pytest.mark.parametrize("out, pattern", [("", "is not a run folder name; give a new folder"),
                                          ("file.txt", "is a file; give a folder")])
def test_bad_run_folder_names(tmp_path, capsys, monkeypatch, out, pattern):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file.txt").write_text("mine")
    code, _, err = run_cm(capsys, [*TRAIN, "--out", out])
    assert_one_line_error(code, err, pattern)
    assert (tmp_path / "file.txt").read_text() == "mine"


def test_a_run_folder_in_use_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "train_config.json").write_text("{}")  # a run another process has started
    with hold_folder(out, "cm train"):  # as that process holds it while it trains
        code, _, err = run_cm(capsys, [*TRAIN, "--out", str(out), "--resume"])
    assert_one_line_error(code, err, "is in use by another cm train (process ")


def test_resume_at_the_end_finishes_a_missing_export(tmp_path, capsys):
    """A kill between the last checkpoint and the export left a stale model: --resume re-exports."""
    out = tmp_path / "run"
    assert run_cm(capsys, [*TRAIN, "--out", str(out), "--save-every", "2", "--sample-every", "2"])[0] == 0
    exported = tree_digest(out / "unet")
    shutil.rmtree(out / "unet")
    shutil.rmtree(out / "samples")
    code, _, err = run_cm(capsys, [*TRAIN, "--out", str(out), "--save-every", "2", "--sample-every", "2", "--resume"])
    assert code == 0, err
    assert tree_digest(out / "unet") == exported and (out / "samples" / "step-00000002.png").is_file()


def test_torn_metrics_line_and_restart_without_checkpoint(tmp_path, capsys):
    """A torn last line of metrics.jsonl does not break --resume; a run killed before its first
    checkpoint restarts from step 0 with no step logged twice."""
    out = tmp_path / "run"
    argv = [*TRAIN, "--out", str(out), "--save-every", "100", "--log-every", "1", "--sample-every", "100"]
    assert run_cm(capsys, argv)[0] == 0
    shutil.rmtree(out / "checkpoints")  # as if killed before the first checkpoint (steps logged: 1, 2)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "lo')  # torn by the kill
    code, _, err = run_cm(capsys, [*argv, "--resume"])
    assert code == 0, err
    assert "no complete checkpoint" in err and "stopped before its first" in err
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]


def test_resume_of_a_folder_that_holds_no_run_says_so(tmp_path, capsys):
    """--resume where no run was ever started (a requeued job's first start, or a mistyped name)
    starts from step 0 and says that the folder held no run, not that a run stopped early."""
    out = tmp_path / "never-ran"
    code, _, err = run_cm(capsys, [*TRAIN, "--out", str(out), "--resume"])
    assert code == 0, err
    assert f"resume: {out} holds no run yet; training starts from step 0" in err
    assert "stopped before" not in err and (out / "train_config.json").is_file()


def test_a_failed_start_does_not_block_the_retry(tmp_path, capsys):
    """A run that wrote train_config.json but no checkpoint may be started again without --resume."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "train_config.json").write_text("{}")
    code, _, err = run_cm(capsys, [*TRAIN, "--out", str(out)])
    assert code == 0, err


# -- evaluation and sampling -----------------------------------------------------------------------------
@pytest.mark.parametrize("option", ["--save-stats", "--json"])
def test_eval_never_overwrites_its_input(tmp_path, capsys, option):
    samples = tmp_path / "s.npz"
    np.savez(samples, np.zeros((4, 8, 8, 3), dtype=np.uint8))
    before = samples.read_bytes()
    argv = ["eval", "--samples", str(samples), "--ref", "digits:test", "--features", "digits", option, str(samples)]
    code, _, err = run_cm(capsys, argv)
    assert_one_line_error(code, err, "is the --samples input")
    assert samples.read_bytes() == before


def test_huge_num_is_refused_at_once(tmp_path, capsys):
    code, _, err = run_cm(capsys, ["sample", "--num", str(10**12), "--out", str(tmp_path / "x.npz")])
    assert_one_line_error(code, err, "num: 1000000000000 must be a number of images from 1 to 100000000")


def test_huge_batch_is_refused(tmp_path, capsys):
    code, _, err = run_cm(capsys, ["sample", "--batch-size", str(10**9), "--out", str(tmp_path / "x.png")])
    assert_one_line_error(code, err, "batch-size: 1000000000 must be an integer from 1 to 1048576")


def test_interpolate_frames_are_bounded(tmp_path, capsys):
    code, _, err = run_cm(capsys, ["edit", "interpolate", "--num", "100000", "--out", str(tmp_path / "x.png")])
    assert_one_line_error(code, err, "num: 100000 must be an integer from 2 to 1024")
    code, _, err = run_cm(capsys, ["edit", "interpolate", "--frames", "100000", "--out", str(tmp_path / "x.png")])
    assert_one_line_error(code, err, "frames: 100000 must be an integer from 2 to 1024")  # as typed


def test_unwritable_output_is_one_line(capsys):
    code, _, err = run_cm(capsys, ["sample", "--batch-size", "1", "--out", "/proc/cm-test.png"])
    assert_one_line_error(code, err, "/proc/", expected_code=1)


def test_decompression_bomb_is_one_line(tmp_path, capsys):
    bomb = tmp_path / "bomb.png"
    Image.new("1", (14000, 14000)).save(bomb)  # 196 M pixels: past twice PIL's limit, a few kB on disk
    code, _, err = run_cm(capsys, ["edit", "denoise", "--image", str(bomb), "--sigma", "0.3",
                                   "--out", str(tmp_path / "x.png")])
    assert_one_line_error(code, err, "image: ")


def test_a_damaged_shard_is_named_removed_and_made_again(tmp_path, capsys):
    """One flipped byte inside a shard's images used to block resumption for good."""
    folder = tmp_path / "s.npz.shards"
    folder.mkdir()
    images = np.full((4, 16, 16, 1), 7, dtype=np.uint8)
    np.savez(folder / "r0-000000000.npz", images=images, indices=np.arange(4))
    np.savez(folder / "r0-000000004.npz", images=images, indices=np.arange(4, 8))
    raw = bytearray((folder / "r0-000000004.npz").read_bytes())
    raw[len(raw) // 3] ^= 0xFF  # inside the images member
    (folder / "r0-000000004.npz").write_bytes(bytes(raw))
    assert existing_indices(folder) == {0, 1, 2, 3}
    assert "r0-000000004.npz is damaged" in capsys.readouterr().err
    assert not (folder / "r0-000000004.npz").exists()


# -- one overwrite policy, options, help ------------------------------------------------------------------
@pytest.mark.parametrize("command", [
    ["sample", "--batch-size", "2", "--out", "{out}"],
    ["edit", "interpolate", "--frames", "2", "--out", "{out}"],
])
def test_existing_outputs_are_kept_unless_overwrite(tmp_path, capsys, command):
    out = tmp_path / "mine.png"
    out.write_bytes(b"the user's file")
    argv = [a.replace("{out}", str(out)) for a in command]
    code, _, err = run_cm(capsys, argv)
    assert_one_line_error(code, err, "exists; pass --overwrite to replace it")
    assert out.read_bytes() == b"the user's file"
    assert run_cm(capsys, [*argv, "--overwrite"])[0] == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_keeps_existing_results_unless_overwrite(tmp_path, capsys):
    samples = tmp_path / "s.npz"
    np.savez(samples, np.zeros((4, 16, 16, 1), dtype=np.uint8))
    stats = tmp_path / "stats.npz"
    stats.write_bytes(b"mine")
    code, _, err = run_cm(capsys, ["eval", "--samples", str(samples), "--features", "digits", "--save-stats", str(stats)])
    assert_one_line_error(code, err, "save-stats: ")
    assert stats.read_bytes() == b"mine"


def test_a_folder_output_with_files_is_kept(tmp_path, capsys):
    folder = tmp_path / "pngs"
    folder.mkdir()
    (folder / "000000.png").write_bytes(b"mine")
    code, _, err = run_cm(capsys, ["sample", "--batch-size", "2", "--out", f"{folder}/"])
    assert_one_line_error(code, err, "is not empty; pass --overwrite")
    assert (folder / "000000.png").read_bytes() == b"mine"


@pytest.mark.parametrize("argv, prog", [
    (["sample", "--out", "x.png", "--frob"], "cm sample"),
    (["edit", "denoise", "--image", "a.png", "--sigma", "0.1", "--out", "b.png", "--frob"], "cm edit denoise"),
    (["train", "--method", "ict", "--data", "toy:mog8", "--out", "r", "--frob"], "cm train"),
])
def test_unknown_options_point_to_the_subcommand_help(capsys, argv, prog):
    code, _, err = run_cm(capsys, argv)
    assert_one_line_error(code, err, f"unrecognized arguments: --frob (see '{prog} --help')")


@pytest.mark.parametrize("argv, said", [
    (["sample", "--outt", "x.png"], "--outt (did you mean --out?) (see 'cm sample --help')"),  # not "--out is required"
    (["sample", "--out", "x.png", "--stpes=2"], "--stpes (did you mean --steps?)"),
    (["edit", "inpaint", "--imgae", "a.png", "--mask", "m.png", "--out", "b.png"], "--imgae (did you mean --image?)"),
    (["train", "--method", "ict", "--data", "digits", "--out", "r", "--zzzz"], "--zzzz (see 'cm train --help')"),
])
def test_a_misspelt_option_is_named_with_the_one_meant(capsys, tmp_path, monkeypatch, argv, said):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cm(capsys, argv)
    assert_one_line_error(code, err, f"unrecognized arguments: {said}")
    assert list(tmp_path.iterdir()) == []
    assert run_cm(capsys, ["sample", "--ou", "x.png", "--batch-size", "1"])[0] == 0   # an abbreviation still works


@pytest.mark.parametrize("argv, said", [
    # A misspelt (sub)command is said as such, not blamed on the options after it.
    (["edit", "inpait", "--image", "a.png", "--mask", "m.png", "--out", "b.png"],
     "argument EDIT: invalid choice: 'inpait' (choose from 'inpaint', "),
    (["convert", "opena", "a.pt", "out", "--preset", "test"], "argument SOURCE: invalid choice: 'opena' (choose from"),
    # An option before the command it belongs to: said where it goes, not "invalid choice: '1'".
    (["--threads", "1", "sample", "--out", "x.png"],
     "--threads goes after the command it belongs to: cm sample --threads ... (see 'cm --help')"),
    (["edit", "--threads=1", "inpaint", "--image", "a.png"],
     "--threads goes after the command it belongs to: cm edit inpaint --threads ... (see 'cm --help')"),
    (["edit", "--image", "a.png", "--out", "b.png"],   # the edit forgotten
     "--image goes after the command it belongs to: cm edit EDIT --image ... (EDIT: inpaint, colorize, "),
    (["edit", "--imgae", "a.png", "inpaint"], "argument EDIT: invalid choice: 'a.png'"),   # no command takes --imgae
])
def test_a_misspelt_command_and_a_misplaced_option_are_said_as_such(capsys, tmp_path, monkeypatch, argv, said):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cm(capsys, argv)
    assert_one_line_error(code, err, said)
    assert list(tmp_path.iterdir()) == []


def test_version(capsys):
    code, out, _ = run_cm(capsys, ["--version"])
    assert code == 0 and out.startswith("cm (consistency-models) ")


@pytest.mark.parametrize("command", ["sample", "edit", "eval", "tune-timesteps", "new", "train", "convert"])
def test_help_shows_no_empty_defaults(capsys, command):
    argv = [command, "--help"] if command not in ("edit", "convert") else [
        command, {"edit": "inpaint", "convert": "openai"}[command], "--help"]
    code, out, _ = run_cm(capsys, argv)
    assert code == 0 and "(default: None)" not in out and "default: [" not in out and "==SUPPRESS==" not in out


def test_label_spellings_agree(tmp_path, capsys):
    """--class-label and --class-labels are accepted by sample and edit alike."""
    assert run_cm(capsys, ["sample", "--class-label", "3", "--batch-size", "1", "--out", str(tmp_path / "a.png")])[0] == 0
    assert run_cm(capsys, ["edit", "interpolate", "--class-labels", "3", "--frames", "2",
                           "--out", str(tmp_path / "b.png")])[0] == 0


def test_exported_weights_get_the_usual_file_mode_and_leftovers_are_cleaned(tmp_path, capsys):
    """Weights were written 0600 (safetensors replaced the temp file whose mode was set); temp files
    a killed export left behind are removed by the next run in the folder."""
    import os
    import stat

    out = tmp_path / "run"
    argv = [*TRAIN, "--out", str(out), "--save-every", "2", "--sample-every", "2"]
    assert run_cm(capsys, argv)[0] == 0
    umask = os.umask(0)
    os.umask(umask)
    for path in (out / "unet" / "diffusion_pytorch_model.safetensors", out / "unet" / "config.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path
    leftover = out / "unet" / ".diffusion_pytorch_model.safetensors.k3x9.tmp"
    leftover.write_bytes(b"half")
    assert run_cm(capsys, [*argv, "--resume"])[0] == 0
    assert not leftover.exists()


def test_random_bytes_as_a_checkpoint_are_called_corrupt(tmp_path):
    from consistency_models import InvalidInputError
    from consistency_models.training.checkpoint import load_checkpoint

    path = tmp_path / "ckpt-00000002.pt"
    path.write_bytes(np.random.default_rng(1).bytes(2048))
    with pytest.raises(InvalidInputError, match="corrupt or truncated") as exc:
        load_checkpoint(path)
    assert "pickle code" not in str(exc.value)


def test_nan_statistics_are_refused(tmp_path, capsys):
    stats = tmp_path / "ref.npz"
    np.savez(stats, mu=np.full(4, np.nan), sigma=np.eye(4))
    samples = tmp_path / "s.npz"
    np.savez(samples, np.zeros((4, 16, 16, 1), dtype=np.uint8))
    code, _, err = run_cm(capsys, ["eval", "--samples", str(samples), "--ref", str(stats), "--features", "digits"])
    assert_one_line_error(code, err, "holds NaN or infinite statistics")


def test_non_square_images_need_a_resolution(tmp_path, capsys):
    folder = tmp_path / "wide"
    folder.mkdir()
    for i in range(40):
        Image.fromarray(np.full((8, 16), i * 6, dtype=np.uint8)).save(folder / f"{i:03d}.png")
    code, _, err = run_cm(capsys, ["train", "--method", "ict", "--data", str(folder), "--out", str(tmp_path / "r"),
                                   "--steps", "1", "--batch-size", "8", "--no-progress"])
    assert_one_line_error(code, err, "data: the images are 16×8; the UNet makes square images")
    assert not (tmp_path / "r").exists()


def test_kid_of_small_sets_reports_no_spread(tmp_path, capsys):
    samples = tmp_path / "s.npz"
    np.savez(samples, np.random.default_rng(0).integers(0, 255, (20, 16, 16, 1), dtype=np.uint8))
    code, out, err = run_cm(capsys, ["eval", "--samples", str(samples), "--ref", "digits:test", "--features", "digits",
                                     "--metrics", "kid"])
    assert code == 0, err
    assert "(one subset: every image; no spread)" in out and "±" not in out


# -- a full disk ---------------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs (needs root and mount permission; skipped elsewhere)."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()[:80]}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_is_one_line_and_leaves_no_partial_file(small_disk, capsys):
    out = small_disk / "samples.npz"
    code, _, err = run_cm(capsys, ["sample", "--batch-size", "1024", "--out", str(out)])  # 256 KiB of pixels
    assert_one_line_error(code, err, "No space left on device", expected_code=1)
    assert f"cm: error: {out}: " in err and ".tmp" not in err  # the user's path, not the hidden temp file
    assert list(small_disk.iterdir()) == []  # neither the file nor a temp file is left


def test_a_full_disk_during_training_keeps_no_half_checkpoint(small_disk, capsys):
    out = small_disk / "run"
    code, _, err = run_cm(capsys, [*TRAIN, "--out", str(out), "--save-every", "2", "--sample-every", "2"])
    assert_one_line_error(code, err, "No space left on device", expected_code=1)
    assert not list((out / "checkpoints").glob("ckpt-*.pt")) if (out / "checkpoints").exists() else True
    assert not [p for p in out.rglob("*.tmp")]


@pytest.mark.parametrize("command", [["sample"], ["edit", "interpolate"]])
def test_an_empty_output_name_is_refused(tmp_path, capsys, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cm(capsys, [*command, "--out", ""])
    assert_one_line_error(code, err, "out: '' is empty")
    assert list(tmp_path.iterdir()) == []


def test_a_file_in_place_of_an_output_folder(tmp_path, capsys):
    (tmp_path / "file.png").write_bytes(b"mine")
    code, _, err = run_cm(capsys, ["sample", "--batch-size", "2", "--out", f"{tmp_path / 'file.png'}/"])
    assert code in (1, 2) and err.count("\n") == 1 and "Traceback" not in err, err
    assert (tmp_path / "file.png").read_bytes() == b"mine"


@pytest.mark.parametrize("value", [str(2**63), "100000"])
def test_thread_counts_are_bounded(capsys, tmp_path, value):
    """A count past torch's C int overflowed with a traceback; a merely huge one would start that many threads."""
    code, _, err = run_cm(capsys, ["sample", "--threads", value, "--out", str(tmp_path / "x.png")])
    assert code == 2 and "Traceback" not in err and f"--threads: {value!r} is more than 1024 threads" in err
    assert not (tmp_path / "x.png").exists()


def test_compute_batch_without_num_is_refused(capsys, tmp_path, monkeypatch):
    """--compute-batch is read only by sharded generation; alone it changed nothing, silently."""
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cm(capsys, ["sample", "--compute-batch", "4", "--out", "n.npz"])
    assert_one_line_error(code, err, "compute-batch: 4 is read only with --num (sharded generation)")
    assert list(tmp_path.iterdir()) == []
