"""`torchrun --nproc_per_node 2 -m consistency_models train` on the CPU (gloo), as real processes.

The global batch is split over the ranks with the same data order and the same noise per sample
(`batch_rng.py`), and DDP averages the gradients, so two processes train the same weights as one
process with the same global batch, up to the order of floating-point sums.
"""

from __future__ import annotations

import json
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from consistency_models.training.checkpoint import checkpoint_path, list_checkpoints, load_checkpoint
from conftest import TORCHRUN, child_env, run_together

STEPS, BATCH = 20, 64
ENV = child_env(CUDA_VISIBLE_DEVICES="")

pytestmark = pytest.mark.skipif(not TORCHRUN.is_file(), reason=f"torchrun is not installed next to {sys.executable}")

# Builds the Trainer itself so that every rank can save what it holds after the run.
RANK_DUMP = textwrap.dedent('''
    import sys
    import torch
    import torch.distributed as dist
    from consistency_models.training import Trainer, TrainConfig

    out, dump = sys.argv[1], sys.argv[2]
    cfg = TrainConfig(method="ict", data="toy:mog8", out=out, steps={steps}, batch_size={batch}, save_every={steps},
                      sample_every={steps}, log_every=5, seed=1, device="cpu", progress=False)
    trainer = Trainer(cfg)
    trainer.run()
    torch.save({{"rank": trainer.ctx.rank, "world_size": trainer.ctx.world_size, "backend": dist.get_backend(),
                "rows": [trainer.rows.start, trainer.rows.stop], "step": trainer.step,
                "network": trainer.network.state_dict(), "ema": trainer.ema.state_dict(),
                "optimizer": trainer.optimizer.state_dict()}}, f"{{dump}}/rank{{trainer.ctx.rank}}.pt")
    dist.destroy_process_group()
''').format(steps=STEPS, batch=BATCH)


def train_argv(out: Path) -> list[str]:
    return ["-m", "consistency_models", "train", "--method", "ict", "--data", "toy:mog8", "--out", str(out),
            "--steps", str(STEPS), "--batch-size", str(BATCH), "--save-every", str(STEPS),
            "--sample-every", str(STEPS), "--log-every", "5", "--seed", "1", "--device", "cpu", "--no-progress"]


def torchrun(*argv: str) -> list[str]:
    return [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", *argv]


def assert_close_states(a, b, where: str, atol: float, exact: bool = False) -> None:
    if isinstance(a, torch.Tensor):
        assert a.shape == b.shape and a.dtype == b.dtype, where
        if exact:
            assert torch.equal(a, b), f"{where}: differs across ranks"
        else:
            torch.testing.assert_close(a, b, rtol=0, atol=atol, msg=lambda m: f"{where}: {m}")
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{where}: keys differ"
        for key in a:
            assert_close_states(a[key], b[key], f"{where}[{key!r}]", atol, exact)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close_states(x, y, f"{where}[{i}]", atol, exact)
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Started together: the CLI under torchrun (2 ranks), the rank-dump helper under torchrun
    (2 ranks) and the CLI in one process; all on the CPU, with the same global batch of 64."""
    root = tmp_path_factory.mktemp("distributed")
    paths = {"two": root / "two", "one": root / "one", "helper": root / "helper", "dump": root / "dump"}
    paths["dump"].mkdir()
    script = root / "rank_dump.py"
    script.write_text(RANK_DUMP)
    commands = {
        "two": torchrun(*train_argv(paths["two"])),
        "helper": torchrun(str(script), str(paths["helper"]), str(paths["dump"])),
        "one": [sys.executable, *train_argv(paths["one"])],
    }
    started = time.monotonic()
    results = run_together(commands, env=ENV, timeout=60, cwd=root)
    elapsed = time.monotonic() - started
    for name, (code, _, err) in results.items():
        assert code == 0, f"{name} exited {code}:\n{err[-4000:]}"
        assert "Traceback" not in err, err
    assert elapsed < 60, f"took {elapsed:.0f} s"
    return paths, {name: (out, err) for name, (_, out, err) in results.items()}


def test_every_rank_holds_the_same_state(runs):
    """After the run, both ranks hold bitwise the same weights, EMA and optimizer state (gloo)."""
    paths, _ = runs
    ranks = [torch.load(paths["dump"] / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for r, state in enumerate(ranks):
        assert state["rank"] == r and state["world_size"] == 2 and state["backend"] == "gloo"
        assert state["step"] == STEPS
    assert ranks[0]["rows"] == [0, BATCH // 2] and ranks[1]["rows"] == [BATCH // 2, BATCH]
    for key in ("network", "ema", "optimizer"):
        assert_close_states(ranks[0][key], ranks[1][key], key, atol=0, exact=True)
    # The helper and `torchrun -m consistency_models train` ran the same training: the same bits.
    cli_two = load_checkpoint(checkpoint_path(paths["two"], STEPS))
    helper = load_checkpoint(checkpoint_path(paths["helper"], STEPS))
    for key in ("network", "ema", "optimizer"):
        assert_close_states(cli_two[key], helper[key], key, atol=0, exact=True)
        assert_close_states(cli_two[key], ranks[0][key], key, atol=0, exact=True)


def test_two_processes_train_what_one_process_trains(runs):
    """Two processes with a global batch of 64 train what one process does with 64 (up to float sums)."""
    paths, _ = runs
    two = load_checkpoint(checkpoint_path(paths["two"], STEPS))
    one = load_checkpoint(checkpoint_path(paths["one"], STEPS))
    assert two["config"]["batch_size"] == one["config"]["batch_size"] == BATCH
    assert two["step"] == one["step"] == STEPS
    for key in ("network", "ema"):
        assert_close_states(two[key], one[key], key, atol=1e-5)
    logs = {name: [json.loads(line) for line in (paths[name] / "metrics.jsonl").read_text().splitlines()]
            for name in ("two", "one")}
    assert [r["step"] for r in logs["two"]] == [r["step"] for r in logs["one"]] == [5, 10, 15, 20]
    for a, b in zip(logs["two"], logs["one"]):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)


def test_only_rank_0_writes_files(runs):
    paths, _ = runs
    two, one = paths["two"], paths["one"]
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    assert [s for s, _ in list_checkpoints(two)] == [STEPS]
    assert [p.name for p in (two / "samples").iterdir()] == [f"step-{STEPS:08d}.png"]
    assert len((two / "metrics.jsonl").read_text().splitlines()) == 4  # not once per rank


def test_only_rank_0_prints_the_summary(runs):
    _, outputs = runs
    stdout = outputs["two"][0]
    assert stdout.count("trained ict for 20 steps") == 1, stdout


def test_each_process_takes_the_gpu_of_its_local_rank():
    """The device rule under torchrun, checked without GPUs: "cuda" is the LOCAL_RANK's GPU, which
    must exist; a GPU named by index must be that one (ranks on one GPU fail in NCCL). One
    process keeps any GPU it names (check_device has checked that it exists)."""
    from consistency_models.distributed import rank_device
    from consistency_models.errors import InvalidInputError

    cuda = torch.device("cuda")
    assert rank_device(cuda, local_rank=1, world_size=2, gpus=2) == torch.device("cuda", 1)
    assert rank_device(cuda, local_rank=0, world_size=1, gpus=1) == torch.device("cuda", 0)
    assert rank_device(torch.device("cuda", 1), local_rank=0, world_size=1, gpus=2) == torch.device("cuda", 1)
    assert rank_device(torch.device("cuda", 1), local_rank=1, world_size=2, gpus=2) == torch.device("cuda", 1)
    assert rank_device(torch.device("cpu"), local_rank=3, world_size=4, gpus=0) == torch.device("cpu")
    with pytest.raises(InvalidInputError, match=r"^device: 'cuda' for the process of LOCAL_RANK 1, but this machine "
                                                r"has 1 GPU\(s\); start at most 1 per machine \(torchrun "
                                                r"--nproc_per_node 1\) or use --device cpu$"):
        rank_device(cuda, local_rank=1, world_size=2, gpus=1)
    with pytest.raises(InvalidInputError, match=r"^device: 'cuda:0' under torchrun: each process takes the GPU of "
                                                r"its LOCAL_RANK \(this one cuda:1\); use --device cuda$"):
        rank_device(torch.device("cuda", 0), local_rank=1, world_size=2, gpus=2)


def test_each_rank_draws_its_own_dropout_masks_and_resumes_them_bit_for_bit(tmp_path):
    """With dropout, rank 1 draws masks of its own (not rank 0's: a stream seeded from (seed, rank)),
    every rank's random state is saved in the checkpoint, and a two-process run killed after a
    checkpoint and resumed ends with the same bits as the run that went through."""
    import shutil

    dropout = ["--dropout", "0.2", "--save-every", "10", "--keep", "5"]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    code, _, err = run_together({"full": torchrun(*train_argv(full), *dropout)}, env=ENV, timeout=60,
                                cwd=tmp_path)["full"]
    assert code == 0, err[-4000:]
    ten, twenty = (load_checkpoint(checkpoint_path(full, step)) for step in (10, 20))
    states = ten["rng_ranks"]
    assert len(states) == 2
    assert torch.equal(states[0]["torch"], ten["rng"]["torch"])   # rank 0's is the one "rng" holds
    assert not torch.equal(states[0]["torch"], states[1]["torch"])

    shutil.copytree(full, resumed)
    checkpoint_path(resumed, 20).unlink()  # as if killed between the step-10 and step-20 checkpoints
    code, _, err = run_together({"resumed": torchrun(*train_argv(resumed), *dropout, "--resume")}, env=ENV,
                                timeout=60, cwd=tmp_path)["resumed"]
    assert code == 0, err[-4000:]
    assert "resume: continuing from step 10 of 20" in err and "dropout masks differ" not in err, err[-2000:]
    again = load_checkpoint(checkpoint_path(resumed, 20))
    for key in ("network", "ema", "optimizer", "rng_ranks"):
        assert_close_states(again[key], twenty[key], key, atol=0, exact=True)

    # One process resuming the two's checkpoint takes rank 0's state and says that masks change.
    single = tmp_path / "single"
    shutil.copytree(full, single)
    checkpoint_path(single, 20).unlink()
    code, _, err = run_together({"single": [sys.executable, *train_argv(single), *dropout, "--resume"]}, env=ENV,
                                timeout=60, cwd=tmp_path)["single"]
    assert code == 0, err[-4000:]
    assert ("the checkpoint holds the random states of 2 processes, this run has 1 process(es): the dropout masks "
            "differ from an uninterrupted run's") in err, err[-2000:]
    assert "rng_ranks" not in load_checkpoint(checkpoint_path(single, 20))
