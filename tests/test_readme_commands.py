"""Every command in the README's ```bash blocks runs, in README order, at toy sizes.

The README cannot drift from the program: a renamed option, a removed subcommand or an example
that the overwrite policy would refuse fails here. Each line runs as written except for these
substitutions, which only shrink the work (they are listed so that nothing else is changed):

- `MODEL` → a small random class-conditional model folder (the `test` preset, 40-point grid);
- `--preset imagenet64` → `--preset test` (a 1.2 GB untrained folder or checkpoint is not a test);
- `cm train`: `--steps` → 2, `--batch-size` → 8; `--num`/`--num-samples` above 16 → 8;
- `torchrun --nproc_per_node 8` → 2 (real torchrun processes);
- the benchmark scripts get their smallest sizes (a few steps, one repeat, a few samples, the `tiny16` network);
- `cm ...` lines run through the same `main()` in this process, and `python bench/...` and
  `python scripts/...` lines in a process forked from one that has imported torch (tests/warm_cm.py:
  the script's own folder first on sys.path, as `python` puts it); `python -m` and torchrun lines
  start fresh interpreters, as typed;
- `cm tune-timesteps` gets `--hi 2` (two candidates: each costs a 2048-d FID, ~3.5 s on one thread);
- the inception weights are a seeded random stand-in (the published file cannot be had offline),
  so its SHA-256 check is switched off here — the check itself is tested in tests/test_inception.py.

Files a command reads (an OpenAI checkpoint, reference images; the edits' inputs by the README's
own Python recipe) are written first, as a user would have them. Each line is an example on its own: an output an earlier README
line already made under the same name is removed first (the overwrite refusal is tested in
tests/test_adversarial.py). Not run here: `pip install` and `python3 -m venv` (.ci/run runs the
install + test block on a fresh clone, and the install part of the sample block is the same), and
`python -m pytest` (this suite), and `--device cuda` lines where there is no CUDA.
"""

from __future__ import annotations

import json
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from consistency_models.cli import main
from consistency_models.metrics import inception as inception_module

import warm_cm
from test_inception import published_keys

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```bash\n(.*?)```", README, re.S)
INSTALL = ("python3 -m venv", ". .venv/bin/activate", "pip install ")


def readme_commands() -> list[str]:
    """Every command of every bash block, a line's `a && b` as two commands, comments dropped."""
    commands = []
    for block in BLOCKS:
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands += [part.strip() for part in line.split(" && ")]
    return commands


def inline_commands() -> list[str]:
    """Complete commands quoted in the README's prose and tables (`cm ...`, `python ...`), not bare
    subcommand names (`cm train`) or elided ones (`... train ...`)."""
    prose = re.sub(r"```.*?```", "", README, flags=re.S).replace("\n", " ")
    found = re.findall(r"`((?:cm|torchrun|python) [^`]*)`", prose)
    return list(dict.fromkeys(c for c in found if "..." not in c and (len(c.split()) > 2 or c.startswith("python ")
                                                                      or c == "cm --version")))


COMMANDS = readme_commands() + inline_commands()
# Inline commands that cannot run here, and where what they rest on is tested instead.
NOT_HERE = {
    "--recipe openai-cd-imagenet64-lpips": "needs an ImageNet-64 EDM teacher and VGG weights; the recipe's values "
                                           "are tested in tests/test_method_registry.py (docs/recipes.md cites their sources)",
}


def test_the_install_steps_are_those_ci_runs():
    """The sample block installs as the test block does (which .ci/run executes on a fresh clone)."""
    def install_steps(block: str) -> list[str]:
        return [c.replace('".[test]"', ".") for c in block.strip().split(" && ") if c.startswith(INSTALL)]
    sample = README.split("<!-- sample-command -->")[1].split("```bash\n")[1].split("```")[0]
    test = README.split("<!-- test-command -->")[1].split("```bash\n")[1].split("```")[0]
    assert install_steps(sample) == install_steps(test) and len(install_steps(sample)) == 4
    assert sum(c.startswith("cm ") for c in COMMANDS) >= 30


def toy_argv(words: list[str], model: Path) -> list[str]:
    """The README's arguments with the substitutions listed in the module docstring."""
    argv = [str(model) if w == "MODEL" else w for w in words]
    if argv[:2] == ["convert", "openai"] and argv[2:4] == ["FILE", "OUT"]:  # the table's placeholders
        argv[2:4] = ["cd_imagenet64_l2.pt", f"converted-{argv[-1]}-{argv[argv.index('--preset') + 1]}"]
    training = argv[:1] == ["train"] or argv[:2] == ["-m", "consistency_models"] and "train" in argv
    if training and "--steps" not in argv and "--help" not in argv:
        argv += ["--steps", "2"]
    if argv[:1] == ["bench/quality_digits.py"]:
        argv += ["--per-class", "2", "--search-sigmas", "0.8"]
    if argv[:1] == ["bench/train_step.py"]:
        argv += ["--batch-size", "2", "--repeats", "1", "--precision", "float32", "--matmul-size", "256",
                 "--preset", "tiny16"]
    if argv[:1] == ["bench/toy_scm.py"]:
        argv += ["--steps", "5", "--runs", "scd"]  # a run and the teacher it needs first
    if argv[:1] == ["bench/methods.py"]:
        if "--minutes" in argv:  # the README's budget, whatever it is, with its value
            del argv[argv.index("--minutes"):argv.index("--minutes") + 2]
        argv += ["--minutes", "0.01", "--methods", "sct", "--per-class", "2", "--probe-steps", "3", "--out", "bm"]
    if argv[:1] == ["scripts/make_editing_figure.py"]:
        argv += ["--out", "editing.png", "--count", "1"]  # not over the repository's docs/images/editing.png
    for i, word in enumerate(argv[:-1]):
        value = argv[i + 1]
        if word == "--preset" and value in ("imagenet64", "lsun256"):
            argv[i + 1] = "test"
        elif training and word == "--steps":
            argv[i + 1] = "2"
        elif training and word == "--batch-size":
            argv[i + 1] = "8"
        elif word in ("--num", "--num-samples") and int(value) > 16:
            argv[i + 1] = "8"
        elif word == "--nproc_per_node":
            argv[i + 1] = "2"
    return argv + ["--hi", "2"] if argv[:1] == ["tune-timesteps"] else argv


def write_inputs(folder: Path, model: Path) -> None:
    """The files the README's commands read, as a user would have them."""
    from consistency_models import preset
    from test_openai_convert import reference_for

    [edit_inputs] = [b for b in re.findall(r"```python\n(.*?)```", README, re.S) if '"digit.png"' in b]
    (folder / "edit_inputs.py").write_text(edit_inputs)   # the README's own recipe for the edits' inputs
    cwd = os.getcwd()
    try:
        os.chdir(folder)
        runpy.run_path("edit_inputs.py", run_name="__main__")
    finally:
        os.chdir(cwd)
    (folder / "edit_inputs.py").unlink()
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    (folder / "real_images").mkdir()
    for i, image in enumerate(real):
        Image.fromarray(image).save(folder / "real_images" / f"{i}.png")
    np.savez(folder / "VIRTUAL_imagenet64_labeled.npz", real, rng.integers(0, 1000, 8))
    gen = torch.Generator().manual_seed(0)
    inception = {k: torch.randn(s, generator=gen) * 0.05 for k, s in published_keys().items()}
    inception = {k: v.abs() + 0.5 if k.endswith("running_var") else v for k, v in inception.items()}
    torch.save(inception, folder / "pt_inception-2015-12-05-6726825d.pth")
    cache = folder / "home" / ".cache" / "consistency_models"  # where the README says the lines without
    cache.mkdir(parents=True)                                  # --inception-weights find it (downloaded online)
    shutil.copy(folder / "pt_inception-2015-12-05-6726825d.pth", cache)
    torch.save(reference_for(preset("test"), seed=0).state_dict(), folder / "cd_imagenet64_l2.pt")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, pipeline_dir) -> dict:
    folder = tmp_path_factory.mktemp("readme")
    model = shutil.copytree(pipeline_dir, tmp_path_factory.mktemp("model") / "model")
    write_inputs(folder, model)
    started: dict[str, warm_cm.WarmProcess] = {}
    yield {"folder": folder, "model": model, "made": set(), "bench": started}
    for proc in started.values():  # a benchmark whose test was deselected or failed early
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


# The README's benchmark lines read no file an earlier line makes and write only their own outputs;
# each child has one thread, so they are started together at the first of them and overlap on the
# two cores instead of queueing (about half a minute less).
BENCH = [c for c in COMMANDS if c.startswith("python bench/")]


def python_argv(argv: list[str]) -> list[str]:
    return [sys.executable] + [str(ROOT / a) if a.startswith(("bench/", "scripts/")) else a for a in argv]


def bench_process(command: str, workspace: dict) -> warm_cm.WarmProcess:
    """The running process of a README benchmark line (all of them started at the first call),
    forked from one that has imported torch (tests/warm_cm.py)."""
    if not workspace["bench"]:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        for line in BENCH:
            script, *argv = toy_argv(shlex.split(line)[1:], workspace["model"])
            workspace["bench"][line] = warm_cm.start(argv, env, workspace["folder"], script=ROOT / script)
    return workspace["bench"][command]


@pytest.fixture
def in_workspace(workspace, monkeypatch):
    monkeypatch.chdir(workspace["folder"])
    monkeypatch.setattr(inception_module, "_check_sha256", lambda path, expected: None)
    monkeypatch.setenv("HOME", str(workspace["folder"] / "home"))  # its cache holds the stand-in weights
    return workspace


def outputs_of(argv: list[str]) -> list[str]:
    """What a command writes: --out/--save-stats/--json values, and `cm new`/`convert`'s folder."""
    named = [argv[i + 1] for i, w in enumerate(argv[:-1]) if w in ("--out", "--save-stats", "--json")]
    if argv[:1] == ["new"]:
        named.append(argv[1])
    if argv[:2] == ["convert", "openai"]:
        named.append(argv[3])
    return named


@pytest.mark.parametrize("command", COMMANDS, ids=[c[:70] for c in COMMANDS])
def test_readme_command_runs(command, in_workspace, capsys):
    if command.startswith(INSTALL):
        pytest.skip("install step: .ci/run runs it on a fresh clone")
    if command.startswith("python -m pytest"):
        pytest.skip("the test suite itself")
    if "--device cuda" in command and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    if reason := next((why for key, why in NOT_HERE.items() if key in command), None):
        pytest.skip(reason)
    words = shlex.split(command)
    argv = toy_argv(words[1:], in_workspace["model"])
    cm_argv = argv if words[0] == "cm" else argv[argv.index("consistency_models") + 1:] \
        if "consistency_models" in argv else ["python"]
    for out in outputs_of(cm_argv):
        if out in in_workspace["made"]:  # an earlier README example made it
            path = Path(out)
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
            shutil.rmtree(f"{out}.shards", ignore_errors=True)
        in_workspace["made"].add(out)
    if words[0] == "cm":
        try:
            code = main(argv)
        except SystemExit as exc:  # --help and --version exit through argparse
            code = exc.code
        out, err = capsys.readouterr()
        assert code == 0, err
    elif command in BENCH:
        proc = bench_process(command, in_workspace)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    elif words[0] in ("python", "torchrun"):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        if words[0] == "python" and argv[0].endswith(".py"):  # a script of this repository, forked warm
            result = warm_cm.run(argv[1:], env, timeout=300, script=ROOT / argv[0])
        else:  # the entry points as typed: fresh interpreters
            program = python_argv(argv) if words[0] == "python" else \
                [str(Path(sys.executable).parent / "torchrun"), *argv]
            result = subprocess.run(program, capture_output=True, text=True, env=env, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        out = result.stdout
    else:
        pytest.fail(f"the README runs {words[0]!r}; teach this test what it is")
    for made in outputs_of(cm_argv):
        assert Path(made).exists(), f"{command}: no {made} after exit 0\n{out}"
    if cm_argv[0] == "eval" and "--ref" in cm_argv and "--json" not in cm_argv:
        assert re.search(r"\b(FID|FD)\b", out), out
    if cm_argv[0] == "bench/train_step.py":  # each method's first-step memory, from a process of its own
        for method in ("ct", "sct", "scd"):
            assert re.search(rf"^{method}\s+eager\s+float32\s.*\s\d+$", out, re.M), out
    if json_out := next((cm_argv[i + 1] for i, w in enumerate(cm_argv[:-1]) if w == "--json"), None):
        json.loads(Path(json_out).read_text())
