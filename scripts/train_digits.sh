#!/usr/bin/env bash
# Retrain the embedded digits model from scratch with `cm train` only (2 CPU cores).
# Stage 1: an EDM teacher; stage 2: consistency distillation from it, the student starting
# as the teacher (as OpenAI's CD runs do). Every random draw is seeded from (seed, step),
# so the runs are reproducible on the same CPU and torch build.
# Stage 3: a TrigFlow diffusion teacher (time input t), the teacher sCD starts its student from.
# Usage: scripts/train_digits.sh RUN_ROOT   (writes RUN_ROOT/teacher, RUN_ROOT/cd, RUN_ROOT/teacher-trigflow,
#   then replaces the package's shipped weights/digits, digits-teacher and digits-teacher-trigflow with them:
#   this script is how those files are made)
set -euo pipefail
root=${1:?usage: scripts/train_digits.sh RUN_ROOT}
mkdir -p "$root"
cm train --method edm --data digits --preset digits16 --out "$root/teacher" \
  --steps 800 --batch-size 128 --lr 5e-4 --warmup-steps 200 --ema-rates 0.999 \
  --save-every 400 --sample-every 400 --log-every 50 --seed 0 --no-progress
cm train --method cd --teacher "$root/teacher" --init-from-teacher --data digits --out "$root/cd" \
  --num-scales 18 --target-mu 0.95 --distance l2 --solver heun \
  --steps 1000 --batch-size 64 --lr 1e-4 --ema-rates 0.999 \
  --save-every 250 --sample-every 250 --log-every 50 --seed 0 --no-progress
cm train --method edm --time-input t --data digits --preset digits16 --out "$root/teacher-trigflow" \
  --steps 800 --batch-size 128 --lr 5e-4 --warmup-steps 200 --ema-rates 0.999 \
  --save-every 200 --sample-every 400 --log-every 50 --seed 0 --no-progress
# Ship the EMA weights in float16 (loading casts back to float32): under 12 MB for the three models.
python - "$root" <<'PY'
import sys, shutil, torch
from pathlib import Path
from consistency_models import ConsistencyModelPipeline
root = Path(sys.argv[1])
dest = Path(__import__("consistency_models").__file__).parent / "weights"
for run, name in ((root / "cd", "digits"), (root / "teacher", "digits-teacher"),
                  (root / "teacher-trigflow", "digits-teacher-trigflow")):
    # save_pretrained refuses the package's own folder: written beside the run, then moved in
    ConsistencyModelPipeline.from_pretrained(run).to(dtype=torch.float16).save_pretrained(root / f"ship-{name}")
    shutil.rmtree(dest / name, ignore_errors=True)
    shutil.move(root / f"ship-{name}", dest / name)
    print("wrote", dest / name)
PY
