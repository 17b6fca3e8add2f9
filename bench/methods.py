"""Which consistency method, at my budget? Every method trained on digits for the same wall-clock
time on this machine, then scored the same way.

    python bench/methods.py --minutes 20                 # 8 methods x (20 min + ~1 min): ~2.8 h on 2 cores
    python bench/methods.py --minutes 3 --methods ict,sct --out bench-methods

For each method: its small-budget recipe (RECIPES below: the shipped `digits-teacher` for the
distillation and tuning methods but scd), a short probe run that measures its seconds per step, then
`cm train --steps S` with S = budget / seconds per step (scd distils the TrigFlow teacher
`digits-teacher-trigflow`, its student a copy of it as in the sCM paper). Then 1,000 class-conditional samples
(100 per digit) at 1 and 2 steps, scored as bench/quality_digits.py scores them (label accuracy
of the shipped classifier; Fréchet distance of its features to the 300 held-out digits), and the
one-step sampling rate. Writes OUT/methods.md (the table), OUT/methods.png (per method: the loss
curve and 20 one-step samples) and OUT/methods.json. Run it alone: two torch processes on two
cores slow each other down 5-10x, and the budget is wall-clock time.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from consistency_models import ConsistencyModelPipeline
from consistency_models.io.atomic import write_json
from consistency_models.io.images import make_grid, save_png, to_uint8
from consistency_models.metrics.digits_classifier import load_digits_classifier

sys.path.insert(0, str(Path(__file__).parent))
from quality_digits import NUM_CLASSES, Scorer, consistency_sampler, run_row  # noqa: E402

COMMON = ["--data", "digits", "--no-progress", "--log-every", "10", "--save-every", "100000", "--sample-every",
          "100000"]
RECIPES = {  # method → its small-budget settings (besides --steps)
    "cd": ["--recipe", "digits-cd", "--teacher", "digits-teacher"],
    "ct": ["--method", "ct", "--batch-size", "64", "--lr", "5e-4"],
    "ict": ["--recipe", "digits-ict"],
    "ect": ["--method", "ect", "--teacher", "digits-teacher", "--batch-size", "64", "--lr", "1e-4"],
    "sct": ["--method", "sct", "--batch-size", "64", "--lr", "5e-4"],
    "scd": ["--method", "scd", "--teacher", "digits-teacher-trigflow", "--batch-size", "64", "--lr", "1e-4"],
    "meanflow": ["--method", "meanflow", "--batch-size", "64", "--lr", "5e-4"],
    "tcm": ["--method", "tcm", "--teacher", "digits-teacher", "--init-from-teacher", "--batch-size", "64",
            "--lr", "1e-4"],
}
PROBE_STEPS = 40


def train(method: str, out: Path, steps: int) -> float:
    """`cm train` of `method` for `steps`; returns the wall-clock seconds."""
    command = [sys.executable, "-m", "consistency_models", "train", *RECIPES[method], *COMMON,
               "--steps", str(steps), "--out", str(out)]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{shlex.join(command)} failed:\n{result.stderr[-2000:]}")
    return time.perf_counter() - start


def seconds_per_step(run: Path) -> float:
    """From the probe's metrics.jsonl: the rate of its last logged stretch (start-up excluded)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    batch = json.loads((run / "train_config.json").read_text())["batch_size"]
    return batch / rows[-1]["images_per_s"]


def losses(run: Path) -> tuple[list[int], list[float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r["step"] for r in rows], [r["loss"] for r in rows]


def score(run: Path, scorer: Scorer, per_class: int) -> dict:
    pipe = ConsistencyModelPipeline.from_pretrained(run)
    pipe.set_progress_bar_config(disable=True)
    labels = torch.arange(NUM_CLASSES).repeat(per_class)
    out = {}
    for steps in (1, 2):
        row = run_row(f"{steps} step", steps, consistency_sampler(pipe, num_inference_steps=steps), labels, True, 0,
                      250, scorer)
        out[f"accuracy_{steps}"], out[f"frechet_{steps}"] = row.label_accuracy, row.frechet
    start = time.perf_counter()
    pipe(batch_size=250, class_labels=torch.arange(250) % NUM_CLASSES, output_type="np",
         generator=torch.Generator().manual_seed(0))
    out["images_per_s"] = 250 / (time.perf_counter() - start)
    grid = pipe(batch_size=20, class_labels=torch.arange(20) % NUM_CLASSES, output_type="np",
                generator=torch.Generator().manual_seed(1)).images
    out["grid"] = to_uint8(grid)
    return out


def curve(steps: list[int], values: list[float], size: tuple[int, int] = (320, 160)) -> Image.Image:
    """The loss against the step, min-max scaled (the methods' losses differ in scale and sign)."""
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    if len(values) > 1:
        lo, hi = min(values), max(values)
        span = (hi - lo) or 1.0
        points = [(8 + (size[0] - 16) * (s - steps[0]) / max(steps[-1] - steps[0], 1),
                   size[1] - 18 - (size[1] - 30) * (v - lo) / span) for s, v in zip(steps, values)]
        draw.line(points, fill=(30, 80, 200), width=2)
        draw.text((8, 2), f"loss {hi:.3g} .. {lo:.3g}", fill=(0, 0, 0))
    draw.text((8, size[1] - 14), f"step {steps[0] if steps else 0} .. {steps[-1] if steps else 0}", fill=(0, 0, 0))
    return image


def figure(panels: list[tuple[str, Image.Image, np.ndarray]], path: Path) -> None:
    """One row per method: its name, the loss curve, a grid of its one-step samples."""
    rows = []
    for name, plot, grid in panels:
        tiled = make_grid(grid, nrow=10)
        samples = Image.fromarray(tiled[..., 0] if tiled.shape[-1] == 1 else tiled).convert("RGB")
        samples = samples.resize((samples.width * 160 // samples.height, 160), Image.NEAREST)
        row = Image.new("RGB", (80 + plot.width + samples.width + 16, 168), "white")
        ImageDraw.Draw(row).text((8, 76), name, fill=(0, 0, 0))
        row.paste(plot, (80, 4))
        row.paste(samples, (80 + plot.width + 8, 4))
        rows.append(row)
    canvas = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows)), "white")
    y = 0
    for row in rows:
        canvas.paste(row, (0, y))
        y += row.height
    save_png(np.asarray(canvas), path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="wall-clock training budget per method")
    parser.add_argument("--methods", default=",".join(RECIPES), help=f"comma list of {', '.join(RECIPES)}")
    parser.add_argument("--per-class", type=int, default=100, help="samples per digit for the scores")
    parser.add_argument("--out", type=Path, default=Path("bench-methods"), help="folder for the table and figure")
    parser.add_argument("--probe-steps", type=int, default=PROBE_STEPS, help="steps of the timing probe")
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    if not methods or any(m not in RECIPES for m in methods):
        parser.error(f"--methods: choose from {', '.join(RECIPES)}")
    if args.per_class < 2:  # before any training: the Fréchet distance needs at least two samples per class
        parser.error(f"--per-class: {args.per_class} must be at least 2")
    if not args.minutes > 0 or args.probe_steps < 1:
        parser.error("--minutes must be positive and --probe-steps at least 1")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out: {args.out} is a file, not a folder")
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    scorer = Scorer(load_digits_classifier(), 250)
    results, panels = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for method in methods:
            probe = Path(tmp) / f"{method}-probe"
            train(method, probe, args.probe_steps)
            per_step = seconds_per_step(probe)
            steps = max(1, int(args.minutes * 60 / per_step))
            print(f"{method}: {per_step:.2f} s/step in the probe → {steps} steps", file=sys.stderr, flush=True)
            run = Path(tmp) / method
            seconds = train(method, run, steps)
            result = {"steps": steps, "train_minutes": seconds / 60, **score(run, scorer, args.per_class)}
            panels.append((method, curve(*losses(run)), result.pop("grid")))
            results[method] = result
            print(f"{method}: {json.dumps({k: round(v, 4) for k, v in result.items()})}", file=sys.stderr, flush=True)
    lines = [f"Digits, {args.minutes:g} minutes of `cm train` per method on this machine ({torch.get_num_threads()} "
             f"threads); {NUM_CLASSES * args.per_class:,} samples per row; command: "
             f"`{shlex.join(['python', 'bench/methods.py', *(argv if argv is not None else sys.argv[1:])])}`", "",
             "| method | recipe | steps done | 1-step accuracy | 1-step FD | 2-step accuracy | 2-step FD | images/s (1 step) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for method, r in results.items():
        lines.append(f"| {method} | `{' '.join(RECIPES[method])}` | {r['steps']:,} | {r['accuracy_1']:.1%} | "
                     f"{r['frechet_1']:.3f} | {r['accuracy_2']:.1%} | {r['frechet_2']:.3f} | {r['images_per_s']:.0f} |")
    table = "\n".join(lines) + "\n"
    (args.out / "methods.md").write_text(table)
    write_json(args.out / "methods.json", {"minutes": args.minutes, "results": results})
    figure(panels, args.out / "methods.png")
    print(table)
    print(f"wrote {args.out / 'methods.md'}, {args.out / 'methods.png'}, {args.out / 'methods.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
