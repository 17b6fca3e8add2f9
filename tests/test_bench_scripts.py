"""The benchmark scripts run end to end at toy sizes and print their ratios (not their timings:
this machine is too noisy to assert speed). Each runs as a process of its own, forked from one
that has imported torch (tests/warm_cm.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch

import warm_cm

BENCH = Path(__file__).resolve().parents[1] / "bench"


def script(name: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`python bench/NAME ARGS...`, to its end."""
    return warm_cm.run(args, dict(os.environ), cwd, timeout=300, script=BENCH / name)


def run(name: str, *args: str) -> str:
    result = script(name, *args)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_train_step_prints_rates_and_the_bfloat16_ratio(tmp_path):
    """Without the +MiB column (three more processes, ~16 s here): the README's own train_step line,
    run by tests/test_readme_commands.py, prints it."""
    out = run("train_step.py", "--preset", "tiny16", "--batch-size", "2", "--repeats", "1", "--methods", "ct,meanflow,tcm",
              "--matmul-size", "256", "--no-cpu-memory")
    assert "freed memory kept" in out or "default allocator" in out
    assert re.search(r"^matmul float32 [\d.]+ GFLOP/s, bfloat16 [\d.]+ GFLOP/s \(256³\)$", out, re.M), out
    assert re.search(r"^ct\s+eager\s+float32\s+[\d.]+\s+[\d.]+\s+[\d.]+-[\d.]+\s+[\d.]+\s+\d+%\s+-$", out, re.M), out
    assert re.search(r"^ct eager: the bfloat16 step is [\d.]+x as fast as the float32 one", out, re.M), out
    assert re.search(r"^meanflow eager float32: step [\d.]+x the ct step", out, re.M), out  # its two-time network
    assert re.search(r"^tcm eager float32: step [\d.]+x the ct step", out, re.M), out
    # bench/gpu_check.sh's table takes this output as its train_new stage: every method's row and ratio
    (tmp_path / "train_new.txt").write_text(out)
    table = run("gpu_check_table.py", str(tmp_path), "sample (exit 124)")
    rows = [line.split(" | ")[0] for line in table.splitlines() if line.startswith("| ") and "eager" in line]
    assert rows == [f"| {m} eager {p} (train_new)" for m in ("ct", "meanflow", "tcm") for p in ("float32", "bfloat16")], \
        table  # with the stage's own ct step, to which its ratios are
    assert re.search(r"^- tcm eager float32: step [\d.]+x the ct step", table, re.M), table
    assert re.search(r"^matmul float32 [\d.]+ GFLOP/s, bfloat16 [\d.]+ GFLOP/s \(256³\) \(train_new\)$", table, re.M), table
    assert "no matmul line (see train.txt)" in table and "| no rows (see sample.txt) |" in table
    assert table.rstrip().endswith("failed stages: sample (exit 124)"), table


def test_triton_shared_memory_compiles_a_tile_configuration_ahead_of_time():
    """Compiled for sm_90 by the installed Triton with its own ptxas: no GPU needed."""
    pytest.importorskip("triton")
    out = run("triton_shared_memory.py", "--dtypes", "float16", "--widths", "16", "--tiles", "0")
    row = re.search(r"^float16\s+16\s+\(64, 64, 3\)\s+([\d.]+)\s+H100, A100, RTX 4090$", out, re.M)
    assert row and 0 < float(row.group(1)) < 99, out


def test_sample_speed_compares_with_diffusers(tmp_path):
    out = run("sample_speed.py", "--presets", "test:2", "--steps", "1", "--repeats", "1",
              "--paths", "diffusers-fp32,fp32,bf16+fast,default-fp32", "--json", str(tmp_path / "rows.json"))
    written = json.loads((tmp_path / "rows.json").read_text())
    assert [row["path"] for row in written] == ["diffusers-fp32", "fp32", "bf16+fast", "default-fp32"], written
    assert [p.name for p in tmp_path.iterdir()] == ["rows.json"]  # no temporary file left beside it
    rows = {line.split()[0]: line.split() for line in out.splitlines()
            if line.startswith(("diffusers-", "fp32", "bf16", "default-"))}
    assert set(rows) == {"diffusers-fp32", "fp32", "bf16+fast", "default-fp32"}, out
    assert float(rows["default-fp32"][6]) < 1e-5  # the default path agrees with float32 eager
    # Same weights and noise: our float32 output matches diffusers' to float32 rounding.
    assert float(rows["diffusers-fp32"][6]) < 1e-4
    assert float(rows["bf16+fast"][7]) > 35  # PSNR against our float32 output


def test_bad_arguments_exit_2():
    result = script("train_step.py", "--methods", "ddim")
    assert result.returncode == 2 and "--methods: 'ddim' is not a comma-separated subset of ct,cd" in result.stderr
    result = script("train_step.py", "--modes", "jit")
    assert result.returncode == 2 and "--modes: 'jit' is not a comma-separated subset of eager,fast" in result.stderr


def test_half_kernels_prints_each_kernels_ratio_and_what_the_network_decides():
    from consistency_models.networks.half_compute import half_arithmetic

    out = run("half_kernels.py", "--scale", "0.1", "--batch", "1", "--repeats", "1", "--dtypes", "bfloat16")
    decided = "yes" if half_arithmetic(torch.bfloat16) else "no (float32 is used)"
    assert f"bfloat16 arithmetic: {decided}" in out, out
    rows = re.findall(r"^(conv3x3 \d+ ch \d+ px \S+|matmul \S+|attention \d+ tokens)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$",
                      out, re.M)
    assert len(rows) == 14, out  # 4 convolutions x 3 ways, a matmul, attention
    for name, fp32, bf16, ratio in rows:  # the ratio is the two times' quotient
        assert float(ratio) == pytest.approx(float(bf16) / float(fp32), rel=0.02, abs=0.01), name


def test_sample_memory_measures_each_path_in_a_process_of_its_own():
    out = run("sample_memory.py", "--preset", "test", "--batch", "2", "--paths", "diffusers-fp32,default-bf16")
    rows = {m[0]: (float(m[2]), float(m[3]), float(m[4]))
            for m in re.findall(r"^(\S+)\s+([\d.]+)\s+(-?\d+)\s+(-?\d+)\s+([\d.]+)$", out, re.M)}
    assert list(rows) == ["diffusers-fp32", "default-bf16"], out
    assert "peak includes loading" not in out   # the high-water mark was reset after loading (Linux)
    reference = rows["diffusers-fp32"][1]
    for path, (loaded, peak, ratio) in rows.items():
        assert 0 < peak and loaded <= peak + 1, (path, out)   # MiB, rounded
        assert ratio == pytest.approx(peak / reference, abs=0.02 + 1 / reference), (path, out)


@pytest.mark.parametrize("name, args, message", [
    ("sample_speed.py", ["--presets", "nosuch:4"], "--presets: 'nosuch:4' is not PRESET:BATCH"),
    ("train_step.py", ["--batch-size", "0"], "argument --batch-size: '0' must be an integer of at least 1"),
    ("methods.py", ["--per-class", "0"], "--per-class: 0 must be at least 2"),
    ("gpu_check_table.py", ["no-such-folder"], "'no-such-folder' is not a folder"),
    ("half_kernels.py", ["--dtypes", "float8"], "--dtypes: 'float8' is not a comma list of bfloat16, float16"),
    ("sample_memory.py", ["--paths", "fp32+compile"], "--paths: 'fp32+compile': +compile and +graph are not measured"),
    ("toy_scm.py", ["--runs", "ict", "--steps", "0"], "ict: cm train exited 2: cm: error: steps: 0 is not allowed"),
])
def test_a_mistaken_value_is_a_line_of_its_own_not_a_traceback(tmp_path, name, args, message):
    """Refused before any work where the script can tell (the toy bench shows cm train's own reason)."""
    result = script(name, *args, cwd=tmp_path)
    assert result.returncode in (1, 2) and message in result.stderr and "Traceback" not in result.stderr, \
        result.stderr
    assert not any(tmp_path.iterdir())   # nothing written (methods.py's bench-methods/ included)


def test_quality_digits_searched_row_is_never_worse_than_the_default_grid(tmp_path):
    """The searched σ competes with the default grid's: a search list that holds only poor
    candidates (near σ_min and near σ_max) leaves the default's row as the searched one."""
    out = run("quality_digits.py", "--per-class", "2", "--teacher", "none", "--search-sigmas", "0.003,70",
              "--json", str(tmp_path / "q.json"))
    result = json.loads((tmp_path / "q.json").read_text())
    default, searched = result["rows"][1], result["rows"][2]
    assert "searched σ" in searched["sampler"], searched
    assert min(result["search"].values()) > default["frechet"]  # both candidates are worse than the default
    assert searched["frechet"] == default["frechet"] and result["best_sigma"] == result["default_sigma"]
    assert f"best s={result['default_sigma']:.3g}" in out
