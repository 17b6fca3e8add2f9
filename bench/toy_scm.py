"""Do sCT and sCD train? One-step and two-step quality of every consistency method on the 2-D toy.

Writes the 8-Gaussian toy as a user's `.npz` (as bench/toy_defaults.py does), trains with `cm
train` at one budget (2,000 steps, batch 256, lr 1e-3): iCT (the README's recipe), sCT from
scratch, an EDM teacher, sCD from a fresh student (time input t, the default) and sCD started
from that teacher (time input log_sigma, --init-from-teacher), a TrigFlow diffusion teacher
(`--method edm --time-input t`) and sCD started from it as the paper runs it, MeanFlow and TCM
(both stages in one run; with FastGen's t′ = 1 and with t′ = 0.15, below the spacing of the
modes, 0.54) — and scores 4,000 samples of each at 1 and 2 steps: the share
within 4 standard deviations of a mode and the sliced Wasserstein distance to held-out data.

    python bench/toy_scm.py                     # ~7 minutes on 2 CPU cores
    python bench/toy_scm.py --runs sct,ict
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from toy_defaults import on_mode, score, split_toy, train_run  # noqa: E402  (the same data and scoring as the defaults benchmark)

BUDGET = ["--batch-size", "256", "--lr", "1e-3"]
RUNS = {  # name → (cm train options, the run it needs first)
    "ict": (["--method", "ict", "--s1", "160"], None),
    "sct": (["--method", "sct"], None),
    "teacher": (["--method", "edm"], None),
    "scd": (["--method", "scd", "--teacher", "{teacher}"], "teacher"),
    "scd-copy": (["--method", "scd", "--teacher", "{teacher}", "--init-from-teacher"], "teacher"),
    "teacher-t": (["--method", "edm", "--time-input", "t"], None),
    "scd-t": (["--method", "scd", "--teacher", "{teacher-t}"], "teacher-t"),
    "meanflow": (["--method", "meanflow"], None),
    "tcm": (["--method", "tcm"], None),
    "tcm-t015": (["--method", "tcm", "--dividing-sigma", "0.15", "--ect-stages", "6"], None),  # t′ below the modes' spacing
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default=",".join(RUNS), help=f"comma list of {', '.join(RUNS)}")
    parser.add_argument("--steps", type=int, default=2000, help="training steps of every run")
    args = parser.parse_args(argv)
    budget = ["--steps", str(args.steps), *BUDGET]
    names = args.runs.split(",")
    if any(n not in RUNS for n in names):
        parser.error(f"--runs: choose from {', '.join(RUNS)}")
    names = [n for n in RUNS if n in names or any(RUNS[m][1] == n for m in names)]  # teachers first
    train, reference, floor = split_toy()
    print(f"data: 8 Gaussians as an .npz; held-out floor SW {floor:.4f}; budget {' '.join(budget)}")
    print(f"{'run':10s} {'1-step on-mode':>14s} {'SW':>7s} {'2-step on-mode':>14s} {'SW':>7s} {'min':>5s}")
    with tempfile.TemporaryDirectory() as tmp:
        points = Path(tmp) / "points.npz"
        np.savez(points, train.numpy().astype(np.float32))
        for name in names:
            options, _ = RUNS[name]
            options = [o.replace("{teacher}", str(Path(tmp) / "teacher")).replace("{teacher-t}", str(Path(tmp) / "teacher-t"))
                       for o in options]
            start = time.perf_counter()
            if not train_run(name, ["--data", str(points), "--out", str(Path(tmp) / name), "--no-progress", *budget,
                                    *options]):
                return 1
            minutes = (time.perf_counter() - start) / 60
            if name.startswith("teacher"):
                form = "a TrigFlow" if name == "teacher-t" else "an EDM"
                print(f"{name:10s} {f'({form} teacher: sampled by Heun, not scored)':>46s} {minutes:5.1f}")
                continue
            s = score(Path(tmp) / name, reference)
            print(f"{name:10s} {s['on_mode_1']:14.3f} {s['sw_1']:7.4f} {s['on_mode_2']:14.3f} {s['sw_2']:7.4f} "
                  f"{minutes:5.1f}", flush=True)
    print(f"(on-mode: share within 4 std of a mode; the data's own: {on_mode(reference):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
