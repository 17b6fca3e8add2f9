"""Models given where they do not fit, as a new user mixes them up: a teacher of other data, a
teacher with another σ_data, a diffusion model as TCM's stage 1, σ settings for MeanFlow, a bad
`--num` command followed by the corrected one, and copies of pipelines of every kind.

Each refusal is one line `cm: error: ...` with exit code 2, and a refused run creates nothing.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from consistency_models import CMStochasticIterativeScheduler, ConsistencyModelPipeline
from consistency_models.cli import main
from consistency_models.errors import InvalidInputError
from consistency_models.training import Trainer, TrainConfig

TOY = ["--data", "toy:mog8", "--steps", "2", "--batch-size", "8", "--no-progress"]


def refused(argv: list[str], capsys, out: Path | None = None) -> str:
    """The one-line error of a refused `cm` command (and no --out folder left behind)."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cm: error: ") and "Traceback" not in err, err
    if out is not None:
        assert not out.exists(), f"{out} was created by a refused run"
    return err.removeprefix("cm: error: ").strip()


@pytest.fixture(scope="module")
def teacher_sd1(tmp_path_factory) -> Path:
    """An EDM teacher of the toy data, trained with σ_data = 1 and σ_min = 0.01 (two steps: only its
    settings matter)."""
    out = tmp_path_factory.mktemp("teachers") / "edm-sd1"
    assert main(["train", "--method", "edm", "--sigma-data", "1.0", "--sigma-min", "0.01", *TOY, "--out", str(out)]) == 0
    return out


def test_a_teacher_of_other_data_is_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    assert refused(["train", "--method", "cd", "--teacher", "digits-teacher", *TOY, "--out", str(out)],
                   capsys, out) == "teacher: digits-teacher makes samples of shape (1, 16, 16), but the data has (2,)"
    digits = ["--data", "digits", "--steps", "1", "--batch-size", "8", "--no-progress", "--out", str(out)]
    assert refused(["train", "--method", "cd", "--teacher", "digits-teacher", "--unconditional", *digits],
                   capsys, out) == "teacher: digits-teacher takes 10 class labels, but this run has no class labels"
    assert refused(["train", "--method", "scd", "--teacher", "digits-teacher-trigflow", "--unconditional", *digits],
                   capsys, out).startswith("teacher: digits-teacher-trigflow takes 10 class labels")
    assert refused(["train", "--method", "cd", "--teacher", str(tmp_path / "nowhere"), *TOY, "--out", str(out)],
                   capsys, out).startswith(f"teacher: no such folder '{tmp_path / 'nowhere'}'")
    assert refused(["train", "--method", "ict", "--init-from", str(tmp_path / "nowhere"), *TOY, "--out", str(out)],
                   capsys, out).startswith(f"init-from: no such folder '{tmp_path / 'nowhere'}'")


def test_the_teacher_keeps_its_own_sigma_data(tmp_path, capsys, teacher_sd1):
    out = tmp_path / "run"
    assert refused(["train", "--method", "cd", "--teacher", str(teacher_sd1), *TOY, "--out", str(out)], capsys, out) \
        == f"sigma-data: 0.5 for this run, but the teacher {teacher_sd1} was trained with sigma_data 1.0; give " \
           "--sigma-data 1.0"
    assert refused(["train", "--method", "ict", "--init-from", str(teacher_sd1), *TOY, "--out", str(out)],
                   capsys, out).startswith(f"sigma-data: 0.5 for this run, but --init-from {teacher_sd1} was trained "
                                           "with sigma_data 1.0")
    # A fresh student of σ_data 0.5 distils it in its own preconditioning (σ_data 1, read from its folder).
    cfg = TrainConfig.from_settings(method="cd", data="toy:mog8", out=str(out), teacher=str(teacher_sd1),
                                    init_from_teacher=False, steps=1, batch_size=8, progress=False)
    trainer = Trainer(cfg)
    assert (trainer.teacher.sigma_data, trainer.teacher.sigma_min) == (1.0, 0.01)
    assert trainer.loss.teacher is trainer.teacher and trainer.loss.student.sigma_data == 0.5
    # sCD reads the teacher in the run's TrigFlow time: a fresh student too needs the teacher's σ_data.
    assert refused(["train", "--method", "scd", "--teacher", str(teacher_sd1), *TOY, "--out", str(out)],
                   capsys, out).startswith(f"sigma-data: 0.5 for this run, but the teacher {teacher_sd1} was trained "
                                           "with sigma_data 1.0; sCD reads it in the run's TrigFlow time")
    same = TrainConfig.from_settings(method="cd", data="toy:mog8", out=str(tmp_path / "b"), teacher=str(teacher_sd1),
                                     sigma_data=1.0, steps=1, batch_size=8, progress=False)
    assert Trainer(same).teacher.sigma_data == 1.0


def test_tcm_takes_a_teacher_to_start_from_and_a_consistency_model_as_stage_1(tmp_path, capsys, teacher_sd1):
    out = tmp_path / "run"
    assert refused(["train", "--method", "tcm", "--init-from", "digits-teacher", *TOY, "--out", str(out)],
                   capsys, out).startswith("init-from: digits-teacher holds a diffusion (EDM) model; stage 2 of "
                                           "--method tcm starts from its stage 1, a consistency model")
    assert refused(["train", "--method", "tcm", "--init-from", "digits", "--stage2-lr", "0.1", *TOY, "--out",
                    str(out)], capsys, out).startswith("stage2-lr: 0.1 is not used: with --init-from")
    assert refused(["train", "--method", "tcm", "--teacher", str(teacher_sd1), "--no-init-from-teacher", *TOY,
                    "--out", str(out)], capsys, out).startswith("teacher: --method tcm uses a teacher only to start")
    assert refused(["train", "--method", "ect", "--teacher", "digits-teacher", "--no-init-from-teacher", *TOY,
                    "--out", str(out)], capsys, out).startswith("teacher: --method ect uses a teacher only to start "
                                                                "the student from it, and this run does not")
    cfg = TrainConfig.from_settings(method="tcm", data="toy:mog8", out=str(out), teacher=str(teacher_sd1))
    assert cfg.init_from_teacher  # as ECT: stage 1 starts from the teacher
    with pytest.raises(InvalidInputError, match=r"^init_from_teacher: .* drop --teacher for a fresh student$"):
        Trainer(TrainConfig.from_settings(method="tcm", data="digits", out=str(out), steps=2,
                                          teacher="digits-teacher-trigflow"))


def test_runs_saved_with_settings_now_refused_still_load(tmp_path):
    """Older versions recorded settings that changed nothing and are now refused: a saved config
    holding them loads with them reset, so the run resumes with the command without them."""
    saved = TrainConfig(method="meanflow", data="toy:mog8", out=str(tmp_path / "a")).to_dict()
    saved.update(sigma_data=1.0, rho=3.0)
    assert (TrainConfig.from_dict(saved).sigma_data, TrainConfig.from_dict(saved).rho) == (0.5, 7.0)
    saved = TrainConfig(method="tcm", data="toy:mog8", out=str(tmp_path / "b"), init_from="digits").to_dict()
    saved.update(stage2_lr=0.1)
    assert TrainConfig.from_dict(saved).options.stage2_lr == 0.5
    saved.update(init_from=None, stage1_share=0.5, teacher="digits-teacher", init_from_teacher=False)
    loaded = TrainConfig.from_dict(saved)
    assert (loaded.teacher, loaded.init_from_teacher, loaded.options.stage2_lr) == (None, False, 0.1)


def test_meanflow_refuses_sigma_settings_and_a_recipe_of_another_method(tmp_path, capsys):
    out = tmp_path / "run"
    for option, value in (("--sigma-max", "40"), ("--sigma-data", "1.0"), ("--rho", "3")):
        err = refused(["train", "--method", "meanflow", option, value, *TOY, "--out", str(out)], capsys, out)
        assert err.startswith(f"{option[2:]}: ") and "is not used by --method meanflow" in err
    # A recipe's values were chosen for its method: another --method (which would silently train
    # with them, e.g. toy-ict's s1 = 160 in a CT run) is refused, whatever options come with it.
    for method, more in (("meanflow", []), ("ct", []), ("ct", ["--s1", "100"])):
        assert refused(["train", "--recipe", "toy-ict", "--method", method, *more, *TOY, "--out", str(out)],
                       capsys, out).startswith(f"method: --recipe toy-ict is a recipe for --method ict; to train "
                                               f"--method {method}, drop --recipe")
    assert TrainConfig.from_recipe("toy-ict", method="ict", data="toy:mog8", out=str(out)).options.s1 == 160


def test_a_recipe_that_starts_from_the_teacher_starts_from_init_from_when_given(tmp_path):
    """digits-cd starts the student from its teacher; --init-from replaces that start (it said
    "give --init-from or --init-from-teacher, not both", though the user gave only one)."""
    cfg = TrainConfig.from_recipe("digits-cd", data="digits", out=str(tmp_path / "r"), teacher="digits-teacher",
                                  init_from="digits")
    assert (cfg.init_from, cfg.init_from_teacher, cfg.teacher) == ("digits", False, "digits-teacher")
    assert TrainConfig.from_recipe("digits-cd", data="digits", out=str(tmp_path / "r"),
                                   teacher="digits-teacher").init_from_teacher is True
    with pytest.raises(InvalidInputError, match="^init_from: give --init-from or --init-from-teacher, not both$"):
        TrainConfig.from_recipe("digits-cd", data="digits", out=str(tmp_path / "r"), teacher="digits-teacher",
                                init_from="digits", init_from_teacher=True)


def test_a_refused_num_command_leaves_nothing_that_blocks_the_corrected_one(tmp_path, capsys):
    out = tmp_path / "n.npz"
    shards = out.with_name("n.npz.shards")
    assert refused(["sample", "--model", "digits", "--num", "4", "--class-labels", "12", "--out", str(out)],
                   capsys).startswith("class-labels: 12 must be integers in [0, 9]")
    assert refused(["sample", "--model", "digits", "--num", "4", "--timesteps", "1.5,1", "--out", str(out)],
                   capsys).startswith("timesteps: ")
    assert not shards.exists() and not out.exists()
    assert main(["sample", "--model", "digits", "--num", "4", "--timesteps", "17,0", "--out", str(out)]) == 0
    assert out.is_file() and not shards.exists()


def test_a_copy_of_a_pipeline_is_the_same_kind_and_makes_the_same_images(tmp_path):
    meanflow = tmp_path / "mf"
    assert main(["train", "--method", "meanflow", *TOY, "--out", str(meanflow)]) == 0
    for model in ("digits", "digits-teacher", "digits-teacher-trigflow", str(meanflow)):
        pipe = ConsistencyModelPipeline.from_pretrained(model)
        copy = type(pipe)(**pipe.components)
        assert copy.kind is pipe.kind, model
        a, b = (p(batch_size=2, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np")
                .images for p in (pipe, copy))
        assert (a == b).all(), model
        pipe.scheduler.save_config(tmp_path / "scheduler")   # the scheduler writes its kind's class
        written = (tmp_path / "scheduler" / "scheduler_config.json").read_text()
        assert f'"_class_name": "{pipe.kind.scheduler_class}"' in written, (model, written)
    # Built with an explicit kind, or sharing another pipeline's scheduler: the copy keeps the kind,
    # and the given scheduler keeps its own.
    teacher = ConsistencyModelPipeline.from_pretrained("digits-teacher-trigflow")
    scheduler = CMStochasticIterativeScheduler(teacher.sampling_config)
    built = ConsistencyModelPipeline(teacher.unet, scheduler, parametrization="trigflow_diffusion")
    assert type(built)(**built.components).kind.name == "trigflow_diffusion"
    assert getattr(scheduler, "parametrization", None) is None
    digits = ConsistencyModelPipeline.from_pretrained("digits")
    shared = ConsistencyModelPipeline(digits.unet, teacher.scheduler, parametrization="consistency")
    assert type(shared)(**shared.components).kind.name == "consistency"
    assert teacher.scheduler.parametrization == "trigflow_diffusion"


def test_editing_shows_a_progress_bar(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from consistency_models.editing import inpaint

    Image.fromarray(np.full((16, 16), 128, dtype=np.uint8)).save(tmp_path / "image.png")
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[4:12, 4:12] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    capsys.readouterr()
    assert main(["edit", "inpaint", "--image", str(tmp_path / "image.png"), "--mask", str(tmp_path / "mask.png"),
                 "--out", str(tmp_path / "out.png")]) == 0
    assert re.search(r"editing: +\d+%\|.*\| \d+/39 ", capsys.readouterr().err)   # 39 steps of the grid
    pipe = ConsistencyModelPipeline.from_pretrained("digits")
    pipe.set_progress_bar_config(mininterval=0, leave=True)   # every step drawn, the last line kept
    image = torch.zeros(1, 1, 16, 16)
    inpaint(pipe, image, torch.ones(1, 16, 16), generator=torch.Generator().manual_seed(0))
    err = capsys.readouterr().err
    assert "editing: 100%" in err and "| 39/39 [" in err, err[-300:]


def test_ect_continues_from_an_init_from_network_without_a_teacher(tmp_path, capsys):
    """ECT reads its teacher only to start from it: --init-from is that start (continuing a saved
    consistency model); with neither it still needs one."""
    from consistency_models.cli import main

    base = ["train", "--data", "toy:mog8", "--steps", "2", "--batch-size", "8", "--no-progress"]
    assert main([*base, "--method", "ict", "--out", str(tmp_path / "cm")]) == 0
    assert main([*base, "--method", "ect", "--out", str(tmp_path / "more"), "--init-from", str(tmp_path / "cm")]) == 0
    capsys.readouterr()
    assert main([*base, "--method", "ect", "--out", str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err.strip() == (
        "cm: error: teacher: --method ect (easy consistency tuning of --teacher or of an --init-from network) needs "
        "--teacher, a diffusion model folder (or --init-from, a saved network to start from)")
