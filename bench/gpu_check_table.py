"""The short table of bench/gpu_check.sh, in Markdown, from its stages' outputs in one folder.

    python bench/gpu_check_table.py OUT [FAILED_STAGE ...]

OUT holds what the stages wrote: device.txt, tests.txt (pytest's summary), train.txt (CT, sCT,
sCD), train_new.txt (CT, MeanFlow, TCM; both from bench/train_step.py), sample.json and
sample_large.json (from bench/sample_speed.py --json). A missing file gives a row that says so,
not an error: the table is written even when a stage failed, and the failed stages are listed
under it.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

# Each stage times its own CT step (its methods' ratios are to that one), so each stage's CT row,
# matmul rate and ratios are shown together, the second stage's labelled with its name.
TRAIN_METHODS = {"train": ("ct", "cd", "sct", "scd"), "train_new": ("ct", "meanflow", "tcm")}
RATIO_LINE = re.compile(r"^(sct|scd|meanflow|tcm) \w+ \w+: step|^\w+ \w+: the fast step")


def read(out: Path, name: str) -> str:
    path = out / f"{name}.txt"
    return path.read_text() if path.exists() else ""


def training_rows(text: str, methods: tuple[str, ...], label: str = "") -> list[str]:
    """bench/train_step.py's rows (step, mode, precision, img/s, s/step, min-max, GFLOP/s, of matmul,
    +MiB) of `methods`, as table rows, `label` after the row's name."""
    rows = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 9 and fields[0] in methods and fields[1] in ("eager", "fast"):
            rows.append(f"| {' '.join(fields[:3])}{label} | {fields[3]} | {fields[4]} | {fields[7]} | {fields[8]} |")
    return rows


def stage_label(stage: str) -> str:
    return "" if stage == "train" else f" ({stage})"


def number(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def table(out: Path, failed: list[str]) -> str:
    lines = [f"GPU check, {read(out, 'device').strip()}", ""]
    tests = re.findall(r"^=+ (.*(?:passed|failed|error).*) =+$|^(\d+ (?:passed|failed).*)$", read(out, "tests"), re.M)
    lines.append("tests: " + ("; ".join(a or b for a, b in tests) or "no summary (see tests.txt)"))
    lines += ["", "| training step | img/s | s/step | of matmul | +MiB |", "|---|---|---|---|---|"]
    texts = {stage: read(out, stage) for stage in TRAIN_METHODS}
    for stage, methods in TRAIN_METHODS.items():
        lines += training_rows(texts[stage], methods, stage_label(stage))
    lines.append("")
    for stage, text in texts.items():
        if stage != "train" and not text:
            continue
        matmul = re.search(r"^matmul .*$", text, re.M)
        lines.append(f"{matmul.group(0)}{stage_label(stage)}" if matmul else f"no matmul line (see {stage}.txt)")
        lines += [f"- {line}{stage_label(stage)}" for line in text.splitlines() if RATIO_LINE.match(line)]
    lines += ["", "| sampling | steps | path | img/s | × diffusers, same dtype | × diffusers compiled | PSNR dB | 1st call s |",
              "|---|---|---|---|---|---|---|---|"]
    rows = []
    for name in ("sample.json", "sample_large.json"):  # imagenet64, then lsun256 (stages 3 and 5)
        try:
            rows += json.loads((out / name).read_text())
        except (OSError, ValueError):
            pass
    for row in rows:
        lines.append(f"| {row['preset']}:{row['batch']} | {row['steps']} | {row['path']} | {row['img_s']:.0f} | "
                     f"{number(row['vs_diffusers_dtype'], '.2f')} | {number(row['vs_diffusers_compiled'], '.2f')} | "
                     f"{number(row['psnr'], '.1f')} | {number(row['warmup_s'], '.0f')} |")
    if not rows:
        lines.append("| no rows (see sample.txt) | | | | | | | |")
    lines += ["", "failed stages: " + (", ".join(failed) if failed else "none")]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1].startswith("-") or not Path(sys.argv[1]).is_dir():
        given = f"{sys.argv[1]!r} is not a folder; " if len(sys.argv) > 1 and not sys.argv[1].startswith("-") else ""
        print(f"usage: python bench/gpu_check_table.py OUT [FAILED_STAGE ...]\n{given}OUT is the folder "
              "bench/gpu_check.sh wrote its stages' outputs into", file=sys.stderr)
        sys.exit(2)
    print(table(Path(sys.argv[1]), sys.argv[2:]))
