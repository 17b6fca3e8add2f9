"""`cm train` from the outside: its help, and bad input as one line `cm: error: ...` with exit code 2.

`--help` runs as a real `cm` process forked from one that has imported torch (tests/warm_cm.py), one
bad input as a fresh `python -m consistency_models` process; the other bad inputs go through the
same `main()` in this process. A refused run creates nothing.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from consistency_models import CMStochasticIterativeScheduler, ConsistencyModelPipeline
from consistency_models.cli import main
from consistency_models.networks.mlp import MLP, MLPConfig
from consistency_models.training import METHODS, TrainConfig
import warm_cm
from conftest import child_env

ENV = child_env()

# TrainConfig fields → the option that sets them (the rest: --name-with-dashes; booleans also
# --no-name). Options are generated from the fields, so this only lists the old spellings kept.
RENAMED = {"use_labels": "--unconditional"}
# Settings `cm train` does not expose (the recipe a run came from; the options object, whose
# fields are options of their own).
NOT_ON_CLI = {"extra", "options"}


def base(out: Path, method: str = "ict", data: str = "toy:mog8") -> list[str]:
    return ["train", "--method", method, "--data", data, "--out", str(out), "--steps", "2", "--no-progress"]


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_cli")
    # A consistency model (not an EDM denoiser) and a folder that is no pipeline at all.
    consistency = root / "consistency_model"
    ConsistencyModelPipeline(MLP(MLPConfig(hidden=16, depth=1, emb_dim=8)), CMStochasticIterativeScheduler(),
                             "consistency").save_pretrained(consistency)
    not_a_pipeline = root / "not_a_pipeline"
    not_a_pipeline.mkdir()
    (not_a_pipeline / "README.txt").write_text("not a model")
    busy = root / "busy"  # a folder with other files (and no checkpoints)
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    return {"root": root, "consistency": consistency, "not_a_pipeline": not_a_pipeline, "busy": busy}


def contents(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


CASE_NAMES = ["cd-without-teacher", "ect-without-teacher", "teacher-not-edm", "teacher-not-a-pipeline",
              "data-missing", "batch-larger-than-data", "accumulation-not-dividing", "out-parent-missing",
              "out-not-empty", "init-from-wrong-shape", "init-from-and-from-teacher"]


def cases(p: dict) -> dict[str, tuple[list[str], str]]:
    """name → (argv, regex that the text after `cm: error: ` must match)."""
    out = p["root"] / "out"
    return {
        "cd-without-teacher": (base(out, "cd"), r"^teacher: --method cd \(consistency distillation from --teacher\) needs --teacher"),
        "ect-without-teacher": (base(out, "ect"), r"^teacher: --method ect \(easy consistency tuning of --teacher or of an --init-from network\) needs --teacher, a diffusion model folder \(or --init-from, a saved network to start from\)$"),
        "teacher-not-edm": ([*base(out, "cd"), "--teacher", str(p["consistency"])],
                            rf"^teacher: {re.escape(str(p['consistency']))} holds a consistency model; "
                            r"the teacher must be a diffusion model"),
        "teacher-not-a-pipeline": ([*base(out, "cd"), "--teacher", str(p["not_a_pipeline"])],
                                   rf"missing file {re.escape(str(p['not_a_pipeline'] / 'model_index.json'))}$"),
        "data-missing": (base(out, data="nonexisting"), r"'nonexisting' is not a dataset \(no such file or folder\)"),
        "batch-larger-than-data": ([*base(out), "--batch-size", "20001"],
                                   r"^batch-size: 20001 is larger than the data set \(20000 items\)$"),
        "accumulation-not-dividing": ([*base(out), "--batch-size", "64", "--accumulation", "3"],
                                      r"^accumulation: 3 is not allowed; use a positive divisor of batch_size$"),
        "out-parent-missing": (base(p["root"] / "missing" / "run"),
                               rf"^out: the folder {re.escape(str(p['root'] / 'missing'))} does not exist$"),
        "out-not-empty": (base(p["busy"]), rf"^out: {re.escape(str(p['busy']))} exists and is not empty"),
        "init-from-wrong-shape": ([*base(out, data="digits"), "--init-from", str(p["consistency"])],
                                  rf"^init-from: {re.escape(str(p['consistency']))} makes samples of shape \(2,\), "
                                  r"but the data has \(1, 16, 16\)$"),
        "init-from-and-from-teacher": ([*base(out, "cd"), "--teacher", str(p["consistency"]), "--init-from-teacher",
                                        "--init-from", str(p["consistency"])],
                                       r"^init-from: give --init-from or --init-from-teacher, not both$"),
    }


def run_main(capsys, argv: list[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_case_names(places):
    assert list(cases(places)) == CASE_NAMES


@pytest.fixture(scope="module")
def processes(places):
    """`cm train --help` forked (tests/warm_cm.py) and one bad input as a fresh `python -m
    consistency_models` (its stderr must be the one line, no import-time warning), started together."""
    refused = cases(places)["data-missing"][0]
    procs = {"help": warm_cm.start(["train", "--help"], ENV, places["root"]),
             "data-missing": subprocess.Popen([sys.executable, "-m", "consistency_models", *refused], text=True,
                                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, cwd=places["root"])}
    return {name: (proc, *proc.communicate(timeout=120)) for name, proc in procs.items()}


def test_help_lists_every_option(processes):
    from consistency_models.cli import build_parser

    proc, text, err = processes["help"]
    assert proc.returncode == 0 and err == ""
    assert text.startswith("usage: cm train")
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    parser_options = {s for action in train._actions for s in action.option_strings if s.startswith("--")}
    settings = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in NOT_ON_CLI]
    settings += [f.name for m in METHODS.values() for f in dataclasses.fields(m.options)]  # the methods' own
    config_options = {"--" + name.replace("_", "-") for name in settings} | set(RENAMED.values())
    assert config_options <= parser_options, f"settings with no option: {sorted(config_options - parser_options)}"
    options = parser_options | config_options
    assert len(options) >= 40
    # Each option is explained in the options section, not only in the usage line.
    body = text.split("\noptions:\n", 1)[1]
    missing = sorted(o for o in options if not re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", body))
    assert not missing, f"not in `cm train --help`: {missing}"


def test_bad_input_process_is_one_line_exit_2(processes, places):
    proc, out, err = processes["data-missing"]
    assert proc.returncode == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("cm: error: ") and "Traceback" not in err, err
    assert re.search(cases(places)["data-missing"][1], err)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_is_one_line_exit_2(name, places, capsys):
    argv, pattern = cases(places)[name]
    before = contents(places["root"])
    code, out, err = run_main(capsys, argv)
    assert code == 2, f"exit {code}\n{err}"
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("cm: error: "), lines[0]
    assert re.search(pattern, lines[0][len("cm: error: "):]), lines[0]
    assert contents(places["root"]) == before, "a refused run must create nothing"


def test_unknown_method_is_one_line(places, capsys):
    _, _, err = run_main(capsys, base(places["root"] / "out", method="foo"))
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cm: error: argument --method: invalid choice: 'foo'")


@pytest.mark.parametrize("name, option", [("data-missing", "data"), ("teacher-not-a-pipeline", "teacher")])
def test_error_names_the_option(places, capsys, name, option):
    _, _, err = run_main(capsys, cases(places)[name][0])
    assert err.startswith(f"cm: error: {option}: ")


def test_init_from_starts_at_the_given_weights(places, capsys):
    """With a vanishing learning rate, a run started --init-from a model exports that model's weights."""
    out = places["root"] / "fine_tuned"
    code, _, err = run_main(capsys, [*base(out), "--init-from", str(places["consistency"]), "--lr", "1e-30",
                                     "--unconditional", "--sample-every", "2", "--save-every", "2"])
    assert code == 0, err
    start = ConsistencyModelPipeline.from_pretrained(places["consistency"]).unet.state_dict()
    end = ConsistencyModelPipeline.from_pretrained(out).unet.state_dict()
    assert start.keys() == end.keys()
    for key in start:
        assert (start[key] - end[key]).abs().max() < 1e-20, key  # a fresh network would differ by ~0.1


def test_help_is_grouped_by_method_and_shows_examples(capsys):
    """`cm train --help`: the settings of every run first, then each method's own options under
    its name (an option several methods read under the first, named in the others); examples at
    the end of `cm --help` and `cm train --help`."""
    from consistency_models.cli import main

    for argv in (["--help"], ["train", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        text = capsys.readouterr().out
        assert "\nexamples:\n  cm " in text
    sections = re.split(r"\n(?=\S[^\n]*:\n)", text)
    heads = {s.split("\n", 1)[0]: s for s in sections}
    assert "settings of every run:" in heads and "--method cd: consistency distillation from --teacher:" in heads
    assert "--num-scales" in heads["--method cd: consistency distillation from --teacher:"]
    assert "--num-scales" not in heads["settings of every run:"] and "--steps" in heads["settings of every run:"]
    ict = heads["--method ict: improved consistency training:"]
    assert "also reads --distance, --lpips-vgg, --lpips-lin, --s0, --s1 (above)" in " ".join(ict.split())


def test_a_run_resumed_from_another_folder_reads_the_files_it_started_with(tmp_path, monkeypatch, capsys):
    """Inputs given as relative paths are recorded absolute: `cm train --out RUN --resume` from
    another folder (a requeued job's) trains on the run's own data, even where the relative name
    finds other data (here a second pts.npz that would change the run silently); the recorded
    device is the old machine's and is not reused."""
    import json

    import numpy as np
    import torch

    from consistency_models.training.checkpoint import latest_checkpoint, load_checkpoint

    start, elsewhere = tmp_path / "project", tmp_path / "project" / "jobs"
    elsewhere.mkdir(parents=True)
    np.savez(start / "pts.npz", np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32))
    np.savez(elsewhere / "pts.npz", np.full((64, 2), 9.0, np.float32))   # same name, other data
    monkeypatch.chdir(start)
    argv = ["train", "--method", "ict", "--data", "pts.npz", "--out", "run", "--batch-size", "16", "--no-progress",
            "--save-every", "1", "--sample-every", "100", "--steps", "2"]
    assert run_main(capsys, argv)[0] == 0
    latest_checkpoint(start / "run").unlink()   # as if stopped after step 1
    recorded = json.loads((start / "run" / "train_config.json").read_text())
    assert recorded["data"] == str(start / "pts.npz") and recorded["out"] == "run"   # out: as given
    # Requeued on another machine: the device the run was started with is not taken from the record.
    (start / "run" / "train_config.json").write_text(json.dumps({**recorded, "device": "cuda:7"}))
    monkeypatch.chdir(elsewhere)
    code, _, err = run_main(capsys, ["train", "--out", "../run", "--resume", "--no-progress"])
    assert code == 0, err
    assert "continuing from step 1 of 2" in err
    state = load_checkpoint(latest_checkpoint(start / "run"))
    assert state["step"] == 2 and state["config"]["data"] == str(start / "pts.npz")
    assert all(torch.isfinite(v).all() for v in state["network"].values())
    # The same run typed again from where it started, with the relative name, is the same run.
    latest_checkpoint(start / "run").unlink()
    monkeypatch.chdir(start)
    code, _, err = run_main(capsys, [*argv, "--resume"])
    assert code == 0 and "continuing from step 1 of 2" in err, err


def test_relative_and_absolute_inputs_compare_equal_on_resume(tmp_path, monkeypatch):
    """Runs of older versions recorded paths as typed; the resume's comparison makes both absolute."""
    from consistency_models.training.run_folder import absolute_paths

    (tmp_path / "imgs").mkdir()
    monkeypatch.chdir(tmp_path)
    given = {"data": "imgs", "teacher": "digits-teacher", "init_from": None, "lpips_vgg": "", "lr": "imgs"}
    assert absolute_paths(given) == {**given, "data": str(tmp_path / "imgs")}   # names that are no local path stay
    # Recorded as the loaders read them: a data set's name wins over a folder of that name
    # (load_dataset); an embedded model's name wins over a folder that holds no model (the
    # README's `cm sample --out digits/` makes one), and a model folder wins over the name.
    for name in ("digits", "digits:test", "toy:mog8", "digits-teacher", "digits-color"):
        (tmp_path / name).mkdir()
    (tmp_path / "digits-color" / "model_index.json").write_text("{}")
    assert absolute_paths({"data": "digits"}) == {"data": "digits"}
    assert absolute_paths({"data": "toy:mog8"}) == {"data": "toy:mog8"}
    assert absolute_paths({"data": "digits:test"}) == {"data": "digits:test"}
    assert absolute_paths({"teacher": "digits-teacher"}) == {"teacher": "digits-teacher"}
    assert absolute_paths({"init_from": "digits-color"}) == {"init_from": str(tmp_path / "digits-color")}


def test_a_warm_up_longer_than_the_run_is_said(places, capsys):
    """lr at the last step k = steps - 1 is lr·(k + 1)/warmup (`learning_rate`): 4/10 = 40 %."""
    from consistency_models.training.loop import learning_rate

    out = places["root"] / "long_warmup"
    code, _, err = run_main(capsys, [*base(out), "--steps", "4", "--warmup-steps", "10", "--lr", "1e-3"])
    assert code == 0, err
    assert "warmup-steps: 10 is more than --steps 4: the learning rate rises over the whole run and ends at 40% of " \
           "--lr\n" in err
    cfg = TrainConfig.from_settings(method="ict", data="toy:mog8", out=str(out), steps=4, warmup_steps=10, lr=1e-3)
    assert learning_rate(cfg, 3) == pytest.approx(0.4e-3)
    assert TrainConfig.from_settings(method="ict", data="toy:mog8", out=str(out), steps=4, warmup_steps=4).notes() == []


@pytest.mark.parametrize("method, scale", [("ict", "--sigma-data 0.5"), ("meanflow", "1")])
def test_a_loss_not_finite_before_any_update_blames_the_data_not_the_learning_rate(tmp_path, capsys, method, scale):
    import numpy as np

    np.savez(tmp_path / "huge.npz", np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32) * 1e30)
    largest = float(np.abs(np.load(tmp_path / "huge.npz")["arr_0"]).max())
    code, _, err = run_main(capsys, [*base(tmp_path / "run", method, str(tmp_path / "huge.npz")), "--batch-size", "16"])
    assert code == 1 and err.startswith("cm: training stopped: the loss became "), err
    assert err.endswith(f" at step 0, before any update (so not for --lr): the data's largest |value| is "
                        f"{largest:.3g}, where the model's scalings expect values of about {scale}; rescale the data "
                        "or check the other settings\n"), err


def test_a_folder_that_hides_an_embedded_teacher_is_said(tmp_path, monkeypatch, capsys):
    """--teacher digits-teacher where ./digits-teacher exists takes the folder (as cm sample does,
    which says so): the run says it too, and records the folder's absolute path."""
    import json
    import shutil

    from consistency_models.io.hub import embedded_root

    shutil.copytree(embedded_root() / "digits-teacher", tmp_path / "digits-teacher")
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(capsys, ["train", "--method", "cd", "--teacher", "digits-teacher", "--data", "digits",
                                     "--out", "run", "--steps", "1", "--batch-size", "4", "--no-progress"])
    assert code == 0, err
    assert "teacher: digits-teacher is the folder ./digits-teacher here, not the embedded model of that name" in err
    recorded = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert recorded["teacher"] == str(tmp_path / "digits-teacher") and recorded["data"] == "digits"
