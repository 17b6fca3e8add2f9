#!/usr/bin/env bash
# Train the embedded `digits-color` model (16-px RGB digits, for colorization) with `cm train`.
# Color is learned by fine-tuning the grayscale digits models, not from scratch (that fits on
# 2 CPU cores): their first convolution is made to read the luminance of an RGB input and their
# last one to write gray to all three channels, so they start as the gray models; then the EDM
# teacher is fine-tuned on the colored set of scripts/make_color_digits.py, and the consistency
# model is distilled from it (CD), starting from the expanded gray consistency model.
# Usage: scripts/train_digits_color.sh RUN_ROOT [DEVICE]   (writes its runs under RUN_ROOT, then replaces
#   the package's shipped weights/digits-color with the result; TEACHER_STEPS and CD_STEPS set the budgets)
#   (without the `cm` entry point: PYTHON=python3 CM="python3 -m consistency_models" scripts/train_digits_color.sh ...)
set -euo pipefail
root=${1:?usage: scripts/train_digits_color.sh RUN_ROOT [DEVICE]}
device=${2:-cpu}
cm=${CM:-cm}
python=${PYTHON:-python}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$root"
$python "$here/make_color_digits.py" "$root/color_digits.npz"
$python - "$root" <<'PY'
import dataclasses, sys, torch
from pathlib import Path
from consistency_models import ConsistencyModelPipeline, UNetModel
from consistency_models.editing import LUMA_WEIGHTS

root = Path(sys.argv[1])
luma = torch.tensor(LUMA_WEIGHTS) / sum(LUMA_WEIGHTS)
for name, out in (("digits-teacher", "init-teacher"), ("digits", "init-cd")):
    gray = ConsistencyModelPipeline.from_pretrained(name).to(dtype=torch.float32)
    state = gray.unet.state_dict()
    state["conv_in.weight"] = state["conv_in.weight"] * luma.reshape(1, 3, 1, 1)   # reads the luminance
    state["conv_out.weight"] = state["conv_out.weight"].repeat(3, 1, 1, 1)          # writes gray to R, G, B
    state["conv_out.bias"] = state["conv_out.bias"].repeat(3)
    unet = UNetModel(dataclasses.replace(gray.unet.config, in_channels=3, out_channels=3))
    unet.load_state_dict(state)
    ConsistencyModelPipeline(unet, gray.scheduler, gray.parametrization).save_pretrained(root / out)
    print("wrote", root / out)
PY
$cm train --method edm --init-from "$root/init-teacher" --data "$root/color_digits.npz" --out "$root/teacher" \
  --steps ${TEACHER_STEPS:-1800} --batch-size 128 --lr 5e-4 --warmup-steps 100 --ema-rates 0.995 \
  --save-every 300 --sample-every 300 --log-every 50 --seed 0 --no-progress --device "$device"
$cm train --method cd --teacher "$root/teacher" --init-from "$root/init-cd" --data "$root/color_digits.npz" \
  --out "$root/cd" --num-scales 18 --target-mu 0.95 --distance l2 --solver heun \
  --steps ${CD_STEPS:-800} --batch-size 64 --lr 1e-4 --ema-rates 0.995 \
  --save-every 200 --sample-every 200 --log-every 50 --seed 0 --no-progress --device "$device"
# Ship the EMA weights in float16 (loading casts back to float32).
dest=$($python -c "import consistency_models, pathlib; print(pathlib.Path(consistency_models.__file__).parent / 'weights')")
$python - "$root" "$dest" <<'PY'
import shutil, sys, torch
from pathlib import Path
from consistency_models import ConsistencyModelPipeline
root, dest = Path(sys.argv[1]), Path(sys.argv[2])
# save_pretrained refuses the package's own folder: written beside the run, then moved in
ConsistencyModelPipeline.from_pretrained(root / "cd").to(dtype=torch.float16).save_pretrained(root / "ship-digits-color")
shutil.rmtree(dest / "digits-color", ignore_errors=True)
shutil.move(root / "ship-digits-color", dest / "digits-color")
print("wrote", dest / "digits-color")
PY
