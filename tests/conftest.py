"""Shared fixtures: small random networks (ours and diffusers'), saved pipeline folders, a network guard.

Everything here is real: real `UNet2DModel`s, real safetensors files written by
`save_pretrained`. Networks get seeded random weights everywhere (diffusers and our default
init leave some layers at zero, which would hide wiring mistakes).
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

import pytest
import torch

# Without a GPU, Triton kernels run on CPU tensors through Triton's interpreter. The variable is
# read when triton is first imported (diffusers imports it), so it is set before anything else.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from diffusers import CMStochasticIterativeScheduler as DiffusersScheduler
from diffusers import ConsistencyModelPipeline as DiffusersPipeline
from diffusers import UNet2DModel

from consistency_models import CMStochasticIterativeScheduler, ConsistencyModelPipeline, UNetModel, preset
from consistency_models.io.diffusers_format import unet_config_to_diffusers
from openai_reference_unet import randomize_

SLOW_ENV = "CM_SLOW_TESTS"
TORCHRUN = Path(sys.executable).with_name("torchrun")
DISTRIBUTED_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def child_env(**overrides: str) -> dict[str, str]:
    """The environment of a child `cm` / torchrun process: one intra-op thread (tiny networks, a
    2-core machine, bitwise-repeatable runs), none of the torch.distributed variables an outer
    launcher may have set, plus `overrides` (e.g. CUDA_VISIBLE_DEVICES="")."""
    env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_VARIABLES}
    return {**env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **overrides}

# One intra-op thread: the networks here are tiny, and on a 2-core machine shared with another
# busy process two OpenMP threads spin against each other (a 0.07 s forward then takes ~3 s).
torch.set_num_threads(int(os.environ.get("CM_TEST_THREADS", "1")))


def one_line(argv: list[str], capsys) -> str:
    """Run `cm argv` in-process; it must refuse in one line `cm: error: ...` with exit code 2,
    no traceback. Returns the message after `cm: error: `."""
    from consistency_models.cli import main

    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cm: error: ") and "Traceback" not in err, err
    return err.removeprefix("cm: error: ").strip()


# A hook of pytest-xdist; optional, so that conftest still loads without the plugin (pyproject's
# addopts name -n, so a run without pytest-xdist also needs `-o addopts=-ra`).
@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto` (pyproject's addopts): PYTEST_XDIST_AUTO_NUM_WORKERS when set, else one worker
    process per usable core, at most 4. Each test runs on one thread, so a single process leaves
    the other cores idle; test files stay whole on one worker (`--dist loadfile`: the README's
    commands run in order). Beyond 4 the longest file (the README's commands, about 2.5 minutes)
    is the floor, and every worker builds the session's fixtures again."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return int(os.environ["PYTEST_XDIST_AUTO_NUM_WORKERS"])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(4, cores))


def train_one_and_two_processes(train_argv: list[str], tmp_path: Path) -> tuple[Path, Path]:
    """`cm train` (argv after `-m consistency_models`) once as one process into tmp_path/one and once
    as two real torchrun processes (gloo, CPU) into tmp_path/two, started together (each process
    has one thread; their start-ups overlap); both must succeed."""
    argv = ["-m", "consistency_models", *train_argv, "--device", "cpu"]
    results = run_together({"one": [sys.executable, *argv, "--out", str(tmp_path / "one")],
                            "two": [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", *argv,
                                    "--out", str(tmp_path / "two")]},
                           env=child_env(CUDA_VISIBLE_DEVICES=""), timeout=300)
    assert all(code == 0 for code, _, _ in results.values()), {n: err[-2000:] for n, (_, _, err) in results.items()}
    return tmp_path / "one", tmp_path / "two"


def run_together(commands: dict[str, list[str]], env: dict[str, str], timeout: float,
                 cwd: Path | None = None) -> dict[str, tuple[int, str, str]]:
    """Start every command at once and wait for all, `timeout` seconds from the start for the
    lot: name → (exit code, stdout, stderr). Any still running when waiting fails is killed."""
    import subprocess
    import time

    started = time.monotonic()
    procs = {name: subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
             for name, cmd in commands.items()}
    results = {}
    try:
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=max(1.0, timeout - (time.monotonic() - started)))
            results[name] = (proc.returncode, out, err)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def exported_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The network weights a run folder exported (unet/*.safetensors)."""
    from safetensors.torch import load_file

    return load_file(str(next((folder / "unet").glob("*.safetensors"))))


def assert_same_exports(one: Path, two: Path) -> None:
    """Two run folders exported the same weights, up to the float rounding of a reduction over
    processes (gradient all-reduce sums in another order)."""
    a, b = exported_weights(one), exported_weights(two)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)


def pytest_configure(config):
    config.addinivalue_line("markers", f"slow: takes about a minute on 2 CPU cores; runs only with {SLOW_ENV}=1")


# The longest files (seconds on 2 cores, 2026-12-08), started first: pytest-xdist hands files out in
# collection order, and a long one started last leaves the other workers idle at the end.
LONGEST_FILES = ("test_readme_commands.py", "test_scm.py", "test_train_distributed.py", "test_train_layout.py",
                 "test_bench_scripts.py", "test_meanflow.py", "test_fast_paths.py", "test_train_toy.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files and tests keep their order
    if os.environ.get(SLOW_ENV) == "1":
        return
    skip = pytest.mark.skip(reason=f"slow test; set {SLOW_ENV}=1 to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


# -- builders ---------------------------------------------------------------------------------
def diffusers_test_config(num_classes: int | None = 1000) -> dict:
    """`UNet2DModel` kwargs of preset('test') as our translation writes them (without `_` keys)."""
    cfg = {k: v for k, v in unet_config_to_diffusers(preset("test")).items() if not k.startswith("_")}
    cfg["num_class_embeds"] = num_classes
    return cfg


@torch.no_grad()
def perturb_(model: torch.nn.Module, seed: int, std: float = 0.1) -> torch.nn.Module:
    """Add seeded Gaussian noise to every parameter, so no layer stays at its (zero) init."""
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype) * std)
    return model


def build_diffusers_unet(config: dict, seed: int = 0) -> UNet2DModel:
    """A diffusers `UNet2DModel` with deterministic, non-trivial random weights."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = UNet2DModel(**config)
    return perturb_(unet, seed + 1).eval()


def build_unet(cfg, seed: int = 0, std: float = 0.05) -> UNetModel:
    """Our `UNetModel` with every parameter drawn from a seeded generator."""
    unet = UNetModel(cfg)
    return randomize_(unet, torch.Generator().manual_seed(seed), std=std).eval()


def save_diffusers_pipeline(unet: UNet2DModel, folder, num_train_timesteps: int = 40) -> None:
    scheduler = DiffusersScheduler(num_train_timesteps=num_train_timesteps, sigma_min=0.002, sigma_max=80.0)
    DiffusersPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)


# -- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def diffusers_unet():
    """diffusers' test UNet (32 px, widths 32/64, head dim 8, 1000 classes), random weights."""
    return build_diffusers_unet(diffusers_test_config(1000), seed=0)


@pytest.fixture(scope="session")
def diffusers_unet_uncond():
    """The same architecture without class embedding (num_class_embeds None)."""
    return build_diffusers_unet(diffusers_test_config(None), seed=10)


@pytest.fixture(scope="session")
def diffusers_pipeline_dir(tmp_path_factory, diffusers_unet):
    """A pipeline folder written by diffusers' own `ConsistencyModelPipeline.save_pretrained` (N = 40)."""
    folder = tmp_path_factory.mktemp("diffusers_pipe")
    save_diffusers_pipeline(diffusers_unet, folder)
    return folder


@pytest.fixture(scope="session")
def diffusers_pipeline_dir_uncond(tmp_path_factory, diffusers_unet_uncond):
    folder = tmp_path_factory.mktemp("diffusers_pipe_uncond")
    save_diffusers_pipeline(diffusers_unet_uncond, folder)
    return folder


@pytest.fixture(scope="session")
def unet():
    """Our UNet in the 'test' preset (class-conditional, 1000 classes), random weights."""
    return build_unet(preset("test"), seed=1)


@pytest.fixture(scope="session")
def pipe(unet):
    """Our pipeline around `unet` with the default N = 40 scheduler (the pipeline keeps no state)."""
    p = ConsistencyModelPipeline(unet, CMStochasticIterativeScheduler())
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="session")
def pipeline_dir(tmp_path_factory, pipe):
    """`pipe` saved with our save_pretrained; read-only for tests (copy it to change files)."""
    folder = tmp_path_factory.mktemp("our_pipe") / "pipe"
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture
def pipeline_copy(tmp_path, pipeline_dir):
    """A private copy of `pipeline_dir` that a test may damage."""
    return shutil.copytree(pipeline_dir, tmp_path / "pipe")


@pytest.fixture
def no_network(monkeypatch):
    """Refuse (and record) every DNS lookup and socket connection made during the test."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access is disabled in tests")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts
