"""Memory (and load time) of sampling, path by path, against diffusers in float32 on the same weights.

Each path runs in a fresh process of its own (a peak cannot be taken back within one): it loads
one folder of random weights (written by our `save_pretrained`, read by ours and by diffusers'
`ConsistencyModelPipeline`), then samples once. It reports the seconds `from_pretrained` took
(with the fast paths the path turns on) and, on a CPU, the resident memory the
loaded pipeline holds and the peak while sampling (the kernel's high-water mark, reset after
loading through /proc/self/clear_refs), both above what the process held after its imports; on
CUDA the memory allocated after loading and the peak allocated while sampling. Path names are
those of bench/sample_speed.py (`diffusers-fp32`, `fp32`, `default-bf16`, `bf16+fast`, ...):

    python bench/sample_memory.py                                   # imagenet64 at batch 4
    python bench/sample_memory.py --preset test --batch 8 --paths diffusers-fp32,default-bf16

Freed memory is kept as `cm` keeps it (`allocator.keep_freed_memory`), for both sides alike.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from sample_speed import PathSpec, load_path, random_unet  # bench/ is this script's folder

from consistency_models import PRESETS, CMStochasticIterativeScheduler, ConsistencyModelPipeline, preset
from consistency_models.cli.allocator import keep_freed_memory
from consistency_models.distributed import check_device

DEFAULT_PATHS = "diffusers-fp32,fp32,default-fp32,default-bf16,default-fp16"
MIB = 2**20


def resident() -> tuple[int, int]:
    """(resident bytes now, their high-water mark) of this process, from /proc/self/status."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
    return values["VmRSS"], values["VmHWM"]


def measure(path: str, folder: Path, batch: int, device: torch.device) -> dict:
    """One path in this process: memory after loading and the peak of one sampling call, in bytes
    above the process after its imports (CPU), or allocated on the device (CUDA)."""
    spec = PathSpec.parse(path)
    if spec.diffusers:  # its imports before the baseline, as ours are (at the top of this file)
        import diffusers.pipelines.consistency_models  # noqa: F401
    base = resident()[0] if device.type == "cpu" else 0
    start = time.perf_counter()
    sample = load_path(spec, folder, device)
    seconds = time.perf_counter() - start
    config = preset(json.loads((folder / "preset.json").read_text())["preset"])
    latents = torch.randn(batch, config.in_channels, config.image_size, config.image_size,
                          generator=torch.Generator().manual_seed(0)).to(device)
    labels = torch.arange(batch, device=device) % config.num_classes if config.num_classes else None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        loaded = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        sample(latents, labels, 1, 0)
        torch.cuda.synchronize(device)
        return {"seconds": seconds, "loaded": loaded, "peak": torch.cuda.max_memory_allocated(device), "reset": True}
    loaded = resident()[0]
    try:
        Path("/proc/self/clear_refs").write_text("5")  # the high-water mark starts again from here
        reset = True
    except OSError:
        reset = False
    sample(latents, labels, 1, 0)
    return {"seconds": seconds, "loaded": loaded - base, "peak": resident()[1] - base, "reset": reset}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="imagenet64", choices=sorted(PRESETS))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--paths", default=DEFAULT_PATHS, help=f"comma-separated (default: {DEFAULT_PATHS})")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", help=argparse.SUPPRESS)    # PATH FOLDER: measure one path and print JSON
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.batch < 1:
        parser.error(f"--batch: {args.batch} is not allowed; use a positive number of images")
    for path in args.paths.split(","):
        try:
            spec = PathSpec.parse(path)
        except ValueError as exc:
            parser.error(str(exc))
        if spec.compile or spec.graph:
            parser.error(f"--paths: {path!r}: +compile and +graph are not measured here (bench/sample_speed.py times them)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = check_device(args.device)
    keep_freed_memory()
    if args.child:
        print(json.dumps(measure(args.child, Path(args.folder), args.batch, device)))
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "pipe"
        ConsistencyModelPipeline(random_unet(args.preset), CMStochasticIterativeScheduler()).save_pretrained(folder)
        (folder / "preset.json").write_text(json.dumps({"preset": args.preset}))
        for path in args.paths.split(","):
            done = subprocess.run([sys.executable, __file__, "--child", path, "--folder", str(folder),
                                   "--batch", str(args.batch), "--device", args.device, "--preset", args.preset],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{path}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
                return 1
            rows.append((path, json.loads(done.stdout.splitlines()[-1])))
    where = "allocated on " + str(device) if device.type == "cuda" else "resident, above the imports"
    print(f"{args.preset}, batch {args.batch}, one step, {torch.__version__}; MiB {where}")
    print(f"{'path':<22}{'load s':>8}{'loaded':>10}{'sampling peak':>16}{'x diffusers-fp32':>18}")
    reference = dict(rows).get("diffusers-fp32")
    for path, row in rows:
        ratio = f"{row['peak'] / reference['peak']:.2f}" if reference and reference["peak"] > 0 else "-"
        print(f"{path:<22}{row['seconds']:>8.2f}{row['loaded'] / MIB:>10.0f}{row['peak'] / MIB:>16.0f}{ratio:>18}"
              + ("" if row["reset"] else "   (peak includes loading: no /proc/self/clear_refs)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
