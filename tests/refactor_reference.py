"""Outputs that a restructuring must not change: short training runs of every method, samples,
edits and sharded generation, all through the public API and the `cm` command.

`python tests/refactor_reference.py` records SHA-256 digests (and sums, to read a mismatch by)
in `tests/fixtures/refactor_reference.json` (on AVX-512 CPUs; `refactor_reference-AVX2.json` on
AVX2 ones, recorded from commit 1fbcf96, before issue 20's changes); `test_refactor_reference.py` recomputes them. The
fixture was recorded before the redesign of issue 12 (commit 95b2cfb) and is the proof that the
redesign changed no number: every training method's final weights, EMA export and preview,
consistency/EDM sampling, editing and `cm sample --num` are bit-identical.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

FIXTURES = Path(__file__).parent / "fixtures"


def fixture_path(capability: str | None = None) -> Path:
    """The record for this CPU's kernels: oneDNN and PyTorch's vectorised kernels sum in another
    order on AVX2 than on AVX-512, so bit-identical means "on the same kind of CPU". The first
    record (refactor_reference.json) was made on AVX-512; others carry the capability's name."""
    capability = capability or torch.backends.cpu.get_cpu_capability()
    if capability.startswith("AVX512"):
        return FIXTURES / "refactor_reference.json"
    return FIXTURES / f"refactor_reference-{capability}.json"


FIXTURE = fixture_path()


def digest(value: torch.Tensor | np.ndarray | bytes | dict) -> dict:
    """SHA-256 of the raw bytes (dicts: of their sorted items) and two sums for a readable diff."""
    if isinstance(value, dict):
        h = hashlib.sha256()
        total = 0.0
        for key in sorted(value):
            t = value[key].detach().cpu().contiguous()
            h.update(key.encode())
            h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes())
            total += float(t.double().sum())
        return {"sha256": h.hexdigest(), "sum": total}
    if isinstance(value, bytes):
        return {"sha256": hashlib.sha256(value).hexdigest(), "sum": float(sum(value))}
    array = value.detach().cpu().numpy() if torch.is_tensor(value) else np.asarray(value)
    array = np.ascontiguousarray(array)
    return {"sha256": hashlib.sha256(array.tobytes()).hexdigest(), "sum": float(array.astype(np.float64).sum())}


def _train(out: Path, **settings) -> None:
    from consistency_models.training import TrainConfig, train

    defaults = dict(progress=False, log_every=1, seed=3)
    train(TrainConfig.from_settings(out=str(out), **{**defaults, **settings}))


def _run_outputs(out: Path) -> dict:
    from consistency_models.training.checkpoint import latest_checkpoint, load_checkpoint

    state = load_checkpoint(latest_checkpoint(out))
    result = {
        "network": digest(state["network"]),
        "export": digest(load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))),
        "preview": digest(next((out / "samples").glob("*.png")).read_bytes()),
        "losses": [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()],
        "scheduler": json.loads((out / "scheduler" / "scheduler_config.json").read_text()),
    }
    if "target" in state:
        result["target"] = digest(state["target"])
    return result


def training_outputs(tmp: Path) -> dict:
    """Every method a few steps: MLP on the 8-Gaussian toy, the digits UNet for CD/iCT/EDM."""
    toy = dict(data="toy:mog8", steps=4, batch_size=64, lr=1e-3, save_every=4, sample_every=4)
    results = {}
    _train(tmp / "toy-edm", method="edm", **toy)
    results["toy-edm"] = _run_outputs(tmp / "toy-edm")
    # Settings whose defaults changed after the recording (issue 13: CD's N = 40 and start from the
    # teacher with dropout 0, iCT's s1 scaled with --steps) are pinned to the values they had then.
    _train(tmp / "toy-cd", method="cd", teacher=str(tmp / "toy-edm"), num_scales=18, init_from_teacher=False, **toy)
    _train(tmp / "toy-ct", method="ct", s1=50, **toy)
    _train(tmp / "toy-ict", method="ict", s1=160, **toy)
    _train(tmp / "toy-ect", method="ect", teacher=str(tmp / "toy-edm"), **toy)
    _train(tmp / "toy-cd-euler-accum", method="cd", teacher=str(tmp / "toy-edm"), solver="euler", accumulation=2,
           warmup_steps=2, optimizer="adamw", weight_decay=0.01, num_scales=18, init_from_teacher=False, **toy)
    for name in ("toy-cd", "toy-ct", "toy-ict", "toy-ect", "toy-cd-euler-accum"):
        results[name] = _run_outputs(tmp / name)
    digits = dict(data="digits", steps=2, batch_size=8, lr=5e-4, save_every=2, sample_every=2)
    _train(tmp / "digits-ict", method="ict", preset="tiny16", dropout=0.1, s1=1280, **digits)
    _train(tmp / "digits-cd", method="cd", teacher="digits-teacher", init_from_teacher=True, num_scales=18, dropout=0.1,
           **digits)
    _train(tmp / "digits-edm-bf16", method="edm", preset="tiny16", precision="bfloat16", **digits)
    for name in ("digits-ict", "digits-cd", "digits-edm-bf16"):
        results[name] = _run_outputs(tmp / name)
    return results


def sampling_outputs(tmp: Path) -> dict:
    from consistency_models import ConsistencyModelPipeline, editing
    from consistency_models.evaluation import generate_samples  # consistency_models.generation before the redesign

    results = {}
    pipe = ConsistencyModelPipeline.from_pretrained("digits")
    pipe.set_progress_bar_config(disable=True)
    g = lambda seed=0: torch.Generator().manual_seed(seed)  # noqa: E731
    results["digits-1"] = digest(pipe(batch_size=4, generator=g(), output_type="pt").images)
    results["digits-2"] = digest(pipe(batch_size=4, timesteps=[9, 0], class_labels=3, generator=g(1),
                                      output_type="pt").images)
    results["digits-sigmas"] = digest(pipe(batch_size=4, sigmas=[80.0, 0.8], generator=g(2), output_type="np").images)
    pipe.enable_fast_kernels()
    results["digits-fast"] = digest(pipe(batch_size=4, num_inference_steps=3, generator=g(3), output_type="pt").images)
    teacher = ConsistencyModelPipeline.from_pretrained("digits-teacher")
    teacher.set_progress_bar_config(disable=True)
    results["teacher-heun"] = digest(teacher(batch_size=2, num_inference_steps=6, generator=g(), output_type="pt").images)
    results["teacher-timesteps"] = digest(teacher(batch_size=2, timesteps=[12, 5, 0], generator=g(),
                                                  output_type="pt").images)

    pipe = ConsistencyModelPipeline.from_pretrained("digits")
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=2, generator=g(5), output_type="pt").images
    mask = torch.zeros(2, 1, 16, 16)
    mask[..., 4:12, 4:12] = 1
    results["inpaint"] = digest(editing.inpaint(pipe, images, mask, num_inference_steps=3, generator=g()))
    small = torch.nn.functional.avg_pool2d(images, 4)
    results["superres"] = digest(editing.super_resolve(pipe, small, 4, timesteps=[10, 4, 0], generator=g()))
    results["stroke"] = digest(editing.stroke_guided(pipe, images, generator=g()))
    results["denoise"] = digest(editing.denoise(pipe, images, 0.3, generator=g()))
    results["interpolate"] = digest(editing.interpolate(pipe, num=3, class_labels=3, generator=g()))
    color = ConsistencyModelPipeline.from_pretrained("digits-color")
    color.set_progress_bar_config(disable=True)
    results["colorize"] = digest(editing.colorize(color, images, sigmas=[80.0, 2.0, 0.5], generator=g()))

    out = generate_samples(pipe, 6, tmp / "gen.npz", batch_size=4, seed=7, timesteps=[9, 0], progress=False)
    with np.load(out) as f:
        results["generate"] = {k: digest(f[k]) for k in sorted(f.files)}
    return results


def compute(tmp: Path) -> dict:
    torch.set_num_threads(1)
    return {"training": training_outputs(tmp), "sampling": sampling_outputs(tmp)}


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        values = compute(Path(tmp))
    FIXTURE.write_text(json.dumps(values, indent=1, sort_keys=True) + "\n")
    print(f"wrote {FIXTURE}", file=sys.stderr)
