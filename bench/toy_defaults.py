"""Do `cm train`'s default settings train a user's 2-D point cloud as well as the README's recipe?

Writes the 8-Gaussian toy as a user's `.npz` (arr_0 float32 (N, 2)), trains iCT on it with
`cm train` — once with every default (steps, batch size, lr, the curriculum) and at a few step
budgets, once with the README's recipe (`--steps 2000 --batch-size 256 --lr 1e-3 --s1 160`) —
and scores 4,000 one-step and two-step samples of each: the share within 4 standard deviations
of a mode, and the sliced Wasserstein distance to held-out data (the data's own floor printed).

    python bench/toy_defaults.py                # ~4 minutes on 2 CPU cores
    python bench/toy_defaults.py --runs readme,default:3000
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from consistency_models import ConsistencyModelPipeline
from consistency_models.data import load_dataset, mog8_mixture
from consistency_models.metrics import sliced_wasserstein

RUNS = {
    "readme": ["--steps", "2000", "--batch-size", "256", "--lr", "1e-3", "--s1", "160"],
    "default": [],
    "default:3000": ["--steps", "3000"],
    "default:2000": ["--steps", "2000"],
}
NUM = 4000


def on_mode(points: torch.Tensor, sigmas: float = 4.0) -> float:
    """Share of points within `sigmas` standard deviations of the nearest mixture mean."""
    mix = mog8_mixture()
    distance = torch.cdist(points.double(), mix.means).min(dim=1).values
    return float((distance < sigmas * mix.std).double().mean())


def score(run: Path, reference: torch.Tensor) -> dict[str, float]:
    pipe = ConsistencyModelPipeline.from_pretrained(run)
    pipe.set_progress_bar_config(disable=True)
    out = {}
    for steps in (1, 2):
        x = pipe(batch_size=NUM, num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
                 output_type="pt").images
        out[f"on_mode_{steps}"] = on_mode(x)
        out[f"sw_{steps}"] = sliced_wasserstein(x, reference)
    return out


def train_run(name: str, argv: list[str]) -> bool:
    """Run `cm train argv` in a child process; on failure print cm's own reason under `name`."""
    result = subprocess.run([sys.executable, "-m", "consistency_models", "train", *argv], capture_output=True, text=True)
    if result.returncode:  # cm's own one-line reason, not a CalledProcessError traceback
        print(f"{name}: cm train exited {result.returncode}: {result.stderr.strip()[-2000:]}", file=sys.stderr)
    return result.returncode == 0


def split_toy() -> tuple[torch.Tensor, torch.Tensor, float]:
    """The 8-Gaussian toy as (training points, NUM held-out points, the SW distance between NUM
    training points and the held-out ones: the floor a model can reach), in a seeded order."""
    data = load_dataset("toy:mog8").tensors()[0]
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(1))
    reference = data[order[:NUM]]
    return data[order[NUM:]], reference, sliced_wasserstein(data[order[NUM:2 * NUM]], reference)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default=",".join(RUNS), help=f"comma list of {', '.join(RUNS)}")
    args = parser.parse_args(argv)
    names = args.runs.split(",")
    if any(n not in RUNS for n in names):
        parser.error(f"--runs: choose from {', '.join(RUNS)}")
    train, reference, floor = split_toy()
    print(f"data: 8 Gaussians, {len(train)} training points as an .npz; held-out floor SW {floor:.4f}, "
          f"on-mode {on_mode(reference):.3f}")
    print(f"{'run':14s} {'options':48s} {'1-step on-mode':>14s} {'SW':>7s} {'2-step on-mode':>14s} {'SW':>7s} {'min':>5s}")
    with tempfile.TemporaryDirectory() as tmp:
        points = Path(tmp) / "points.npz"
        np.savez(points, train.numpy().astype(np.float32))
        for name in names:
            out = Path(tmp) / name.replace(":", "-")
            start = time.perf_counter()
            if not train_run(name, ["--method", "ict", "--data", str(points), "--out", str(out), "--no-progress",
                                    *RUNS[name]]):
                return 1
            minutes = (time.perf_counter() - start) / 60
            s = score(out, reference)
            print(f"{name:14s} {' '.join(RUNS[name]) or '(all defaults)':48s} {s['on_mode_1']:14.3f} {s['sw_1']:7.4f} "
                  f"{s['on_mode_2']:14.3f} {s['sw_2']:7.4f} {minutes:5.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
