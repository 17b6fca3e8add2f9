"""`cm sample` asked for more images at once than memory holds: one line naming a batch that fits
(found by trying halves), not an allocator traceback — under a real memory cap (RLIMIT_AS) on a
real `cm` child process."""

from __future__ import annotations

import re
import resource
import subprocess
import sys

import pytest

from conftest import child_env

# Above what one image needs (100,000 digits at once need tens of GiB), with room for how a
# process's address space varies between runs (thread stacks, allocator arenas): 256 MiB was
# cheaper (the batches tried on the way down compute until they fail: ~8 s of CPU instead of ~22)
# but once left not even one image room on a clean CI clone.
HEADROOM = 768 * 2**20

# Runs `cm` and, as it exits, writes the process's peak address space (VmPeak, kB) to stderr.
PEAK = ("import atexit, runpy, sys\n"
        "def peak():\n"
        "    line = next(l for l in open('/proc/self/status') if l.startswith('VmPeak:'))\n"
        "    sys.stderr.write('peak ' + line.split()[1] + '\\n')\n"
        "atexit.register(peak)\n"
        "sys.argv = ['cm'] + sys.argv[1:]\n"
        "runpy.run_module('consistency_models', run_name='__main__')\n")


def one_image_peak(tmp_path) -> int:
    """The address space `cm sample --batch-size 1` reaches on this machine, in bytes: it depends
    on the machine (thread pools and allocator arenas grow with its cores), so the cap is set above
    it rather than at a fixed size."""
    proc = subprocess.run([sys.executable, "-c", PEAK, "sample", "--batch-size", "1", "--out", str(tmp_path / "one.npz")],
                          capture_output=True, text=True, env=child_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    return int(re.search(r"^peak (\d+)$", proc.stderr, re.M).group(1)) * 1024


def test_too_large_a_batch_is_one_line_with_the_batch_that_fits(tmp_path):
    cap = one_image_peak(tmp_path) + HEADROOM
    proc = subprocess.run([sys.executable, "-m", "consistency_models", "sample", "--batch-size", "100000",
                           "--out", str(tmp_path / "s.npz")],
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (cap, cap)),
                          capture_output=True, text=True, env=child_env(), timeout=300)
    if proc.returncode != 2 and "batch-size" not in proc.stderr and "import" in proc.stderr.lower():
        pytest.skip("this machine's torch needs more address space than the cap to load")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    match = re.fullmatch(r"cm: error: batch-size: 100000 images do not fit in memory here at once, (\d+) do; use "
                         r"--batch-size \1, or --num 100000 --batch-size \1 to make 100000 in batches\n", proc.stderr)
    assert match and 1 <= int(match.group(1)) < 100000, proc.stderr
    assert not (tmp_path / "s.npz").exists()


def test_the_advice_for_a_grid_or_folder_names_an_npz_since_num_writes_only_that(tmp_path, capsys, monkeypatch):
    from consistency_models.cli import main
    from consistency_models.cli.sample import too_large

    monkeypatch.chdir(tmp_path)
    for kind in ("grid", "dir"):
        advice = too_large(4, 2, kind)
        assert advice.endswith("use --batch-size 2, or --num 4 --batch-size 2 --out samples.npz to make 4 in batches")
    assert too_large(4, 2, "npz").endswith("or --num 4 --batch-size 2 to make 4 in batches")
    assert main(["sample", "--num", "4", "--batch-size", "2", "--out", "grid.png"]) == 2   # why the advice says so
    assert "out" in capsys.readouterr().err
    assert main(["sample", "--num", "4", "--batch-size", "2", "--out", "samples.npz"]) == 0
    assert (tmp_path / "samples.npz").is_file()
