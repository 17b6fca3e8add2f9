#!/usr/bin/env bash
# The GPU check: on one GPU, in one run of at most 7 minutes ($GPU_CHECK_BUDGET seconds, 420 by default),
#   1. the tests that need CUDA (the attention-JVP kernel, the fast training step against the
#      plain one over 50 steps, dropout masks of compiled and plain networks in every layout and
#      dtype, fused RAdam, CUDA-graph sampling, float16 pipelines);
#   2. bench/train_step.py: CT, sCT and sCD at imagenet64, batch 64, bfloat16, eager and fast;
#   3. bench/sample_speed.py: imagenet64 at batch 64 against diffusers eager and compiled;
#   4. the MeanFlow and TCM steps against CT's (eager); 5. sampling at lsun256, batch 8;
# and writes the figures as a short table to $OUT/gpu_check.md (./gpu-check/ without $OUT), the
# benches' whole output beside it. Copy the table, with the date and the GPU, into
# docs/benchmarks.md.
#
# It needs no network: what is not importable is installed from wheels in .whl/ (git-ignored),
# brought along beforehand with
#     pip download --no-deps -d .whl diffusers importlib_metadata
# (pip install --no-deps --no-index), and the project with --no-deps --no-index --no-build-isolation.
#
# A dry run of the script's logic on a CPU, at toy sizes:
#     GPU_CHECK_DEVICE=cpu GPU_CHECK_SMALL=1 bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
device=${GPU_CHECK_DEVICE:-cuda}
out=${OUT:-gpu-check}
mkdir -p "$out"
table="$out/gpu_check.md"
failed=()
started=$SECONDS
# The whole script ends within this many seconds (the table included), whatever the stages take:
# a stage's limit is cut to what is left, and a stage with under 30 s left is skipped.
budget=${GPU_CHECK_BUDGET:-420}

stage() {  # stage NAME SECONDS COMMAND...: run with a time limit, output to $out/NAME.txt and the screen
  local name=$1 limit=$2
  shift 2
  local begin=$SECONDS
  local left=$((budget - 20 - (SECONDS - started)))  # 20 s: timeout's --kill-after and the table
  if [ "$left" -lt 30 ]; then
    echo "== $name: skipped, ${left}s left of the ${budget}s budget" | tee "$out/$name.txt"
    failed+=("$name (skipped: out of time)")
    return
  fi
  [ "$left" -lt "$limit" ] && limit=$left
  echo "== $name (at most ${limit}s): $*"
  timeout --signal=INT --kill-after=10 "$limit" "$@" 2>&1 | tee "$out/$name.txt"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - begin))s"
  [ "$rc" -eq 0 ] || failed+=("$name (exit $rc)")
}

# -- 0. what is missing, from the wheels brought along -------------------------------------------------
if ! python -c "import diffusers, importlib_metadata" 2>/dev/null; then
  if compgen -G ".whl/*.whl" >/dev/null; then
    pip install --quiet --no-deps --no-index .whl/*.whl || failed+=("installing .whl/")
  else
    echo "diffusers is not importable and .whl/ holds no wheels: the diffusers comparisons will fail" >&2
  fi
fi
if ! python -c "import consistency_models" 2>/dev/null; then
  pip install --quiet --no-deps --no-index --no-build-isolation -e . || failed+=("installing the project")
fi

if [ -n "${GPU_CHECK_SMALL:-}" ]; then  # toy sizes: checks the script, not the GPU
  train_size=(--preset tiny16 --batch-size 4 --repeats 2 --modes eager --matmul-size 256)  # no compile: minutes on a CPU
  sample_size=(--presets test:4 --repeats 1)
  sample_paths=diffusers-bf16,diffusers-bf16+compile,fp32,default-bf16,bf16+compile
  large_size=(--presets test:2 --repeats 1)
  large_paths=fp32,default-bf16
  test_limit=300
else
  train_size=(--preset imagenet64 --batch-size 64 --repeats 5 --modes eager,fast)
  sample_size=(--presets imagenet64:64 --repeats 3)
  sample_paths=diffusers-fp16,diffusers-fp16+compile,fp32,default-fp16,fp16+graph,fp16+compile+graph,bf16+compile+graph
  large_size=(--presets lsun256:8 --repeats 3)
  large_paths=$sample_paths
  test_limit=150  # the fp32 width-128 attention test compiles up to three tile configurations
fi

python - "$device" <<'EOF' | tee "$out/device.txt"
import sys, torch
device = sys.argv[1]
name = torch.cuda.get_device_name() if device == "cuda" else "CPU (dry run)"
print(f"{name}; torch {torch.__version__}, CUDA {torch.version.cuda}")
EOF

# -- 1. the tests that need CUDA (on a CPU: the same tests, skipped where they need a GPU) -----------
# in one process (`-o addopts=-ra` drops pyproject's `-n auto`: one GPU, and pytest-xdist may be absent)
stage tests "$test_limit" python -m pytest -q -p no:cacheprovider -o addopts=-ra -k "cuda or float16_inference" \
  tests/test_attention_jvp.py tests/test_fast_step.py tests/test_dropout.py tests/test_optimizer.py tests/test_fast_paths.py \
  tests/test_diffusers_own_tests.py
# -- 2. the training step ----------------------------------------------------------------------------
stage train 210 python bench/train_step.py --device "$device" "${train_size[@]}" --precision bfloat16 \
  --methods ct,sct,scd
# -- 3. sampling against diffusers at imagenet64 (the issue's figures) --------------------------------
rm -f "$out"/sample*.json  # a stage stopped early must not show an earlier run's rows
stage sample 240 python bench/sample_speed.py --device "$device" "${sample_size[@]}" --steps 1,2 \
  --json "$out/sample.json" --paths "$sample_paths"

# -- 4. the newer methods' step against CT's (after the issue-20 figures, so that it cannot cost them) -----
stage train_new 100 python bench/train_step.py --device "$device" "${train_size[@]}" --precision bfloat16 \
  --methods ct,meanflow,tcm --modes eager

# -- 5. sampling at lsun256 (last: its compiles are the longest, its figures not the issue's targets) --
stage sample_large 200 python bench/sample_speed.py --device "$device" "${large_size[@]}" --steps 1,2 \
  --json "$out/sample_large.json" --paths "$large_paths"

# -- the table -----------------------------------------------------------------------------------------
python bench/gpu_check_table.py "$out" "${failed[@]}" > "$table"
cat "$table"
echo "gpu_check: $((SECONDS - started))s in all; table in $table"
[ ${#failed[@]} -eq 0 ]
