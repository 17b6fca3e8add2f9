"""Training methods as plug-ins: what the registry declares is what the config, the loop, the export
and `cm train` do; a new method is one registration; settings a method does not read are refused.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass

import numpy as np

import pytest
import torch

from consistency_models import ConsistencyModelPipeline, InvalidInputError
from consistency_models.cli import build_parser, main
from consistency_models.training import TrainConfig, Trainer
from consistency_models.training.checkpoint import latest_checkpoint, load_checkpoint
from consistency_models.training.settings import MethodOptions, positive_number, setting
from consistency_models.training.methods import (
    METHODS,
    Loss,
    LossInputs,
    Method,
    get_method,
    method_options,
    register,
    unregister,
)


def test_the_built_in_methods_and_their_declarations():
    assert list(METHODS) == ["edm", "cd", "ct", "ict", "ect", "sct", "scd", "meanflow", "tcm"]
    teacher = {"cd", "ect", "scd"}   # the shipped EDM teacher; its kind is read from its folder
    configs = {m: TrainConfig(method=m, data="toy:mog8", out="r", teacher="digits-teacher" if m in teacher else None)
               for m in METHODS}
    assert {name: m.parametrization_of(configs[name]) for name, m in METHODS.items()} == {
        "edm": "edm", "cd": "consistency", "ct": "consistency", "ict": "consistency", "ect": "consistency",
        "sct": "trigflow", "scd": "trigflow", "meanflow": "meanflow", "tcm": "consistency"}
    trigflow = TrainConfig.from_settings(method="edm", data="toy:mog8", out="r", time_input="t")
    assert METHODS["edm"].parametrization_of(trigflow) == "trigflow_diffusion"
    teacher = TrainConfig.from_settings(method="scd", data="toy:mog8", out="r", teacher="digits-teacher")
    assert teacher.options.time_input == "t" and METHODS["scd"].parametrization_of(teacher) == "trigflow"
    assert not teacher.init_from_teacher          # an EDM teacher: a fresh student
    copy = TrainConfig.from_settings(method="scd", data="toy:mog8", out="r", teacher="digits-teacher",
                                     init_from_teacher=True)
    assert copy.options.time_input == "log_sigma" and METHODS["scd"].parametrization_of(copy) == "trigflow_edm"
    assert {m.name for m in METHODS.values() if m.target_network} == {"cd", "ct"}
    assert {m.name: m.teacher for m in METHODS.values()} == {
        "edm": "unused", "cd": "required", "ct": "optional", "ict": "optional", "ect": "required",
        "sct": "optional", "scd": "required", "meanflow": "unused", "tcm": "optional"}
    assert not {f.name for f in dataclasses.fields(TrainConfig)} & method_options()  # no method's field in it
    assert method_options() == {"distance", "lpips_vgg", "lpips_lin", "num_scales", "target_mu", "solver", "s0", "s1", "mu0", "mu_form",
                                "ect_stages", "p_mean", "p_std", "tangent_warmup", "tangent_c", "jvp", "jvp_precision",
                                "time_input", "adaptive_weight", "time_mean", "time_std", "equal_times",
                                "weight_power", "weight_c", "dividing_sigma", "boundary_prob", "boundary_weight",
                                "stage1_share", "stage2_lr", "weight_bound", "guidance", "class_dropout"}


@pytest.mark.parametrize("method, settings, expected", [
    ("cd", {"num_scales": 18}, 18),
    ("cd", {}, 40),
    ("ct", {"steps": 100}, 151),                 # N(K) = ⌈√(K/K·((s1+1)² − s0²) + s0²) − 1⌉ + 1 = s1 + 1
    ("ict", {"steps": 100, "s1": 160}, 161),     # min(s0·2^⌊K/K′⌋, s1) + 1
    ("ict", {"steps": 2000}, 161),               # s1 from the budget: 160
    ("ect", {}, 40),
    ("edm", {}, 40),
])
def test_recorded_grid_size(method, settings, expected):
    teacher = {"teacher": "t"} if get_method(method).teacher == "required" else {}
    cfg = TrainConfig.from_settings(method=method, data="toy:mog8", out="r", **teacher, **settings)
    assert get_method(method).grid_size(cfg) == expected


@pytest.mark.parametrize("method, settings, message", [
    ("ict", {"num_scales": 18}, r"^num_scales: 18 is not used by --method ict \(its own options: --distance, --lpips-vgg, --lpips-lin, --s0, --s1\)$"),
    ("ect", {"distance": "l2"}, r"^distance: 'l2' is not used by --method ect \(its own options: --ect-stages\)$"),
    ("edm", {"s1": 150}, r"^s1: 150 is not used by --method edm \(its own options: --time-input, --p-mean, --p-std\)$"),
    ("cd", {"mu0": 0.9, "teacher": "t"}, r"^mu0: 0.9 is not used by --method cd"),
    ("edm", {"teacher": "t"}, r"^teacher: --method edm uses no teacher"),
    ("ct", {"init_from_teacher": True}, r"^init_from_teacher: needs --teacher$"),
    ("ict", {"lpips_vgg": "vgg.pth", "lpips_lin": "lin.pth"}, r"^lpips_vgg: given, but --distance is not lpips or lpips_standard$"),
    ("ict", {"s0": 10, "s1": 5}, r"^s1: 5 is below --s0 10; the curriculum grows the grid from s0 to s1 points$"),
    ("ct", {"s0": 2, "s1": 1}, r"^s1: 1 is below --s0 2; the curriculum grows"),
    ("nope", {}, r"^method: 'nope' is not allowed; use one of edm, cd, ct, ict, ect, sct, scd, meanflow, tcm$"),
    ("ct", {"num_scale": 18}, r"^num_scale: 18 is not a setting of cm train$"),
])
def test_settings_a_method_does_not_read_are_refused(method, settings, message):
    with pytest.raises(InvalidInputError, match=message):
        TrainConfig.from_settings(method=method, data="toy:mog8", out="r", **settings)


def test_a_teacher_starts_ct_and_ict_by_default_and_cd_on_request():
    assert TrainConfig.from_settings(method="ct", data="d", out="r", teacher="t").init_from_teacher is True
    assert TrainConfig.from_settings(method="ict", data="d", out="r").init_from_teacher is False
    cd = TrainConfig.from_settings(method="cd", data="d", out="r", teacher="t")
    assert cd.init_from_teacher is True and cd.dropout == 0.0  # OpenAI's CD: the teacher's weights, dropout 0
    assert TrainConfig.from_settings(method="cd", data="d", out="r", teacher="t", dropout=0.1).dropout == 0.1
    assert TrainConfig.from_settings(method="cd", data="d", out="r", teacher="t", init_from_teacher=False).dropout is None
    with pytest.raises(InvalidInputError, match=r"^teacher: --method ect uses a teacher only to start the student "
                                                r"from it, and this run does not; start from it \(without "):
        TrainConfig.from_settings(method="ect", data="d", out="r", teacher="t", init_from="m")  # it would go unused


def test_an_unused_option_on_the_command_line_is_one_line(tmp_path, capsys):
    code = main(["train", "--method", "ect", "--teacher", str(tmp_path), "--data", "toy:mog8", "--out",
                 str(tmp_path / "run"), "--distance", "l2", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("cm: error: distance: 'l2' is not used by --method ect") and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_help_shows_the_registry_defaults():
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    helps = {a.dest: a.help for a in train._actions}
    assert helps["s1"].endswith("(default: ct 150, ict s0*2^d, d = min(7, max(1, steps//400 - 1)): 160 at 2000 steps, "
                                "1280 from 3200)")
    assert helps["num_scales"].endswith("(default: cd 40)")
    assert helps["init_from_teacher"].endswith("(default: yes for cd, ct, ict, ect, sct, tcm when --teacher is given; "
                                               "scd when the teacher is a TrigFlow diffusion model (its network "
                                               "takes t))")
    assert [a for a in train._actions if a.dest == "method"][0].choices == tuple(METHODS)


# -- a throw-away method, trained through the normal loop ---------------------------------------------
class HalfwayLoss(Loss):
    """d(f(x + σz, σ), x) at a fixed σ, and a count of the optimizer steps it was told about."""

    def __init__(self, student, sigma: float) -> None:
        self.student, self.sigma, self.steps_seen = student, sigma, []

    def __call__(self, x, class_labels, step, rng):
        noisy = x + self.sigma * rng.randn(*x.shape[1:])
        return (self.student(noisy, self.sigma, class_labels) - x).pow(2).mean(dim=1)

    def after_step(self, step):
        self.steps_seen.append(step)


@dataclass
class HalfwayOptions(MethodOptions):
    sigma: float = setting(1.0, "the halfway loss's noise level", check=positive_number())


@pytest.fixture
def halfway():
    def build(inputs: LossInputs) -> HalfwayLoss:
        assert inputs.target is not None and inputs.teacher is None and inputs.network is inputs.student
        return HalfwayLoss(inputs.wrap(inputs.student), inputs.options.sigma)

    method = register(Method(name="halfway", summary="a throw-away test method", parametrization="consistency",
                             build_loss=build, options=HalfwayOptions, target_network=True, grid_size=lambda run: 7))
    yield method
    unregister("halfway")


def test_a_registered_method_trains_one_step_through_the_loop(tmp_path, halfway):
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    assert "halfway" in METHODS and "halfway" in train._option_string_actions["--method"].choices
    assert train._option_string_actions["--sigma"].help == "the halfway loss's noise level (default: halfway 1.0)"
    with pytest.raises(InvalidInputError, match=r"^sigma: -1 is not allowed; use a positive number$"):
        TrainConfig(method="halfway", data="toy:mog8", out="r", options={"sigma": -1})
    cfg = TrainConfig(method="halfway", data="toy:mog8", out=str(tmp_path / "run"), steps=1, batch_size=32,
                      save_every=1, sample_every=1, log_every=1, progress=False, options={"sigma": 0.5})
    assert cfg.options == HalfwayOptions(sigma=0.5) and cfg.to_dict()["sigma"] == 0.5
    trainer = Trainer(cfg)
    before = [p.detach().clone() for p in trainer.network.parameters()]
    out = trainer.run()
    assert trainer.loss.steps_seen == [0]
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.network.parameters()))
    state = load_checkpoint(latest_checkpoint(out))
    assert state["step"] == 1 and "target" in state  # target_network=True: θ⁻ is checkpointed
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert record["step"] == 1 and record["loss"] > 0
    pipe = ConsistencyModelPipeline.from_pretrained(out)  # exported as declared
    assert pipe.parametrization == "consistency" and pipe.scheduler.config.num_train_timesteps == 7
    assert (out / "samples" / "step-00000001.png").is_file()
    assert json.loads((out / "train_config.json").read_text())["method"] == "halfway"


def test_a_name_is_registered_once(halfway):
    with pytest.raises(ValueError, match="registered already"):
        register(halfway)


# -- recipes and data as users have it ------------------------------------------------------------------
def test_recipe_sets_every_setting_and_options_override_it(tmp_path, capsys):
    from consistency_models.training.recipes import RECIPES

    cfg = TrainConfig.from_recipe("openai-cd-imagenet64-lpips", data="d", out="r", teacher="t", lpips_vgg="v",
                                  lpips_lin="l", lr=1e-5)
    options = cfg.options
    assert (cfg.method, cfg.preset, options.num_scales, options.target_mu, options.distance, cfg.batch_size, cfg.lr) == (
        "cd", None, 40, 0.95, "lpips", 2048, 1e-5)   # the recipe's preset names the teacher's network, copied
    assert cfg.ema_rates == (0.999, 0.9999, 0.9999432189950708) and cfg.dropout == 0.0 and cfg.init_from_teacher
    assert cfg.grad_clip == 0.0 and cfg.precision == "float16" and cfg.extra == {"recipe": "openai-cd-imagenet64-lpips"}
    for name, recipe in RECIPES.items():  # every recipe is a valid config once the user's parts are given
        needs = {"teacher": "t"} if get_method(recipe.settings["method"]).teacher == "required" else {}
        if recipe.settings.get("distance") == "lpips":
            needs.update(lpips_vgg="v", lpips_lin="l")
        TrainConfig.from_recipe(name, data="d", out="r", **needs)
    # A teacher the recipe needs is asked for as the recipe's, not as a setting the user never typed.
    with pytest.raises(InvalidInputError, match=r"^teacher: --recipe digits-cd starts the student from a teacher; "
                                                 r"give --teacher, a diffusion model folder$"):
        TrainConfig.from_recipe("digits-cd", data="d", out="r")

    out = tmp_path / "run"
    code = main(["train", "--recipe", "toy-ict", "--data", "toy:mog8", "--out", str(out), "--steps", "3",
                 "--no-progress", "--save-every", "3", "--sample-every", "3"])
    assert code == 0, capsys.readouterr().err
    saved = json.loads((out / "train_config.json").read_text())
    assert (saved["method"], saved["s1"], saved["lr"], saved["batch_size"], saved["steps"]) == ("ict", 160, 1e-3, 256, 3)
    assert saved["extra"] == {"recipe": "toy-ict"}


@pytest.mark.parametrize("argv, message", [
    (["--data", "toy:mog8"], r"^method: give --method \(edm, cd, ct, ict, ect, sct, scd, meanflow, tcm\) or --recipe$"),
    (["--data", "toy:mog8", "--recipe", "nope"], r"^argument --recipe: invalid choice: 'nope'"),
])
def test_recipe_errors_are_one_line(tmp_path, capsys, argv, message):
    try:
        code = main(["train", "--out", str(tmp_path / "r"), "--no-progress", *argv])
    except SystemExit as exc:  # argparse's own errors exit from inside parse_args
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0 and re.search(message, err.removeprefix("cm: error: "))


def test_a_point_cloud_npz_trains_and_samples_points(tmp_path, capsys):
    """`--data points.npz` (float (N, D), here D = 3, with labels) trains a point model; `cm sample`
    writes (N, D) float32 points and their labels."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "points.npz", (rng.standard_normal((300, 3)) * 0.5).astype(np.float64), np.arange(300) % 3)
    out = tmp_path / "run"
    assert main(["train", "--method", "ict", "--data", str(tmp_path / "points.npz"), "--out", str(out), "--steps", "3",
                 "--batch-size", "32", "--no-progress", "--save-every", "3", "--sample-every", "3"]) == 0
    assert main(["sample", "--model", str(out), "--batch-size", "5", "--class-labels", "2",
                 "--out", str(tmp_path / "s.npz")]) == 0
    with np.load(tmp_path / "s.npz") as f:
        assert f["arr_0"].shape == (5, 3) and f["arr_0"].dtype == np.float32 and np.isfinite(f["arr_0"]).all()
        assert f["arr_1"].tolist() == [2] * 5
    assert (out / "samples" / "step-00000003.png").is_file()
    capsys.readouterr()


def test_each_default_is_stated_once_for_the_loss_and_cm_train():
    """A loss class used directly and `cm train --method M` start from the same defaults (CD's grid
    was 18 in CDLoss and 40 in the registry before)."""
    import inspect

    from consistency_models.training.methods import CDLoss, CTLoss, SCMLoss
    from consistency_models.training.methods.ect import ECTLoss

    def defaults(cls):
        return {k: p.default for k, p in inspect.signature(cls).parameters.items() if p.default is not p.empty}

    rename = {"mu": "target_mu", "num_stages": "ect_stages", "jvp_mode": "jvp"}
    for cls, method in ((CDLoss, "cd"), (CTLoss, "ct"), (ECTLoss, "ect"), (SCMLoss, "sct")):
        own = {rename.get(k, k): v for k, v in defaults(cls).items()}
        declared = {f.name: f.default for f in dataclasses.fields(METHODS[method].options)}
        shared = {k: v for k, v in declared.items() if k in own and v is not None}
        assert shared and all(own[k] == v for k, v in shared.items()), (method, own, shared)
    assert METHODS["cd"].options().num_scales == defaults(CDLoss)["num_scales"] == 40


def test_an_option_shared_by_methods_has_one_meaning():
    """distance, s0, s1, p_mean, … are declared once (methods/options.py): every method that reads
    one shows the same help, choices and check; only the default is the method's own."""
    declared: dict[str, list] = {}
    for entry in METHODS.values():
        for f in dataclasses.fields(entry.options):
            declared.setdefault(f.name, []).append(f.metadata)
    assert {name for name, metas in declared.items() if len(metas) > 1} >= {"distance", "s0", "s1", "p_mean",
                                                                           "p_std", "lpips_vgg"}
    for name, metas in declared.items():
        assert all(m["help"] == metas[0]["help"] and m["choices"] == metas[0]["choices"] for m in metas), name
        checks = {m["check"][1] if m["check"] else None for m in metas}
        assert len(checks) == 1, (name, checks)


def test_the_options_are_given_as_a_dict_or_the_methods_own_class():
    from consistency_models.training.methods.cd import CDOptions
    from consistency_models.training.methods.ct import CTOptions

    by_dict = TrainConfig(method="cd", data="d", out="r", teacher="t", options={"num_scales": 18})
    by_class = TrainConfig(method="cd", data="d", out="r", teacher="t", options=CDOptions(num_scales=18))
    flat = TrainConfig.from_settings(method="cd", data="d", out="r", teacher="t", num_scales=18)
    assert by_dict == by_class == flat and by_dict.options == CDOptions(num_scales=18, distance="l2")
    assert TrainConfig.from_dict(flat.to_dict()) == flat
    with pytest.raises(InvalidInputError, match=r"^options: a CTOptions is not --method cd's settings \(a CDOptions\)$"):
        TrainConfig(method="cd", data="d", out="r", teacher="t", options=CTOptions())
    with pytest.raises(InvalidInputError, match=r"^num_scales: 1 is not allowed; use an integer from 2 to 100000$"):
        CDOptions(num_scales=1)
    old = {**flat.to_dict(), "s0": None, "p_mean": None}  # older versions saved every method's setting as None
    assert TrainConfig.from_dict(old) == flat
