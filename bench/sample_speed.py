"""Sampling throughput against diffusers on the same weights: images/s of one- and two-step sampling.

Both pipelines load one folder of random weights (written by our `save_pretrained`, read by
ours and by diffusers' `ConsistencyModelPipeline`) and are timed end to end in one process,
noise in and images as a tensor out (`latents=...`, `output_type="pt"`), alternating the
paths call by call so that load changes on a shared machine hit all of them alike:

    python bench/sample_speed.py                          # CPU: imagenet64 at batch 4, test at batch 32
    python bench/sample_speed.py --presets test:32 --repeats 3 --steps 1
    python bench/sample_speed.py --device cuda            # imagenet64 at batch 64, lsun256 at batch 8
    python bench/sample_speed.py --device cuda --compile  # adds the torch.compile paths

A path is a dtype and the fast paths it turns on, joined by '+': `fp32` (the plain eager
pipeline, fast kernels off), `+fast` (on CPU: channels_last and Winograd 3×3 convolutions;
nothing on CUDA), `+compile` (torch.compile of the consistency function, inductor freezing on),
`+autotune` (with `+compile`: inductor's max_autotune, minutes of compiling), `+graph` (CUDA graph
of the sampling loop); `default-fp32` etc. are our pipeline exactly as `from_pretrained(...,
dtype=...)` returns it (what a Python user gets without any call); `diffusers-fp32` etc. are
diffusers' pipeline in that dtype, `diffusers-fp16+compile` with `torch.compile(pipe.unet)`. For each preset, batch and
step count it prints images/s (median over repeats and the min–max spread), the speed-up
over diffusers in float32 and in the path's own dtype (median over rounds of the time ratio
within a round), and the output's largest absolute difference and PSNR against our float32
eager output (images in [0, 1]). With each case it prints the share of the CPUs that other
processes used meanwhile: on a shared machine, trust the ratios only when that stayed low.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from consistency_models import (
    PRESETS,
    CMStochasticIterativeScheduler,
    ConsistencyModelPipeline,
    InvalidInputError,
    UNetModel,
    preset,
)
from consistency_models.cli.allocator import keep_freed_memory
from consistency_models.distributed import check_device
from consistency_models.io.atomic import atomic_path
from consistency_models.networks.half_compute import half_arithmetic

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT_PRESETS = {"cpu": "imagenet64:4,test:32", "cuda": "imagenet64:64,lsun256:8"}
DEFAULT_PATHS = {
    "cpu": "diffusers-fp32,diffusers-bf16,fp32,default-fp32,default-bf16",
    "cuda": "diffusers-fp32,diffusers-fp16,diffusers-bf16,fp32,default-fp16,default-bf16,fp16+graph,bf16+graph",
}
COMPILE_PATHS = {
    "cpu": "fp32+fast+compile,bf16+fast+compile",
    "cuda": "diffusers-fp16+compile,fp16+compile+graph,bf16+compile+graph,fp16+compile+autotune+graph",
}
FEATURES = ("fast", "compile", "autotune", "graph")


@dataclass(frozen=True)
class PathSpec:
    """One way of sampling: whose pipeline, in which dtype, with which fast paths."""

    name: str
    diffusers: bool
    dtype: torch.dtype
    fast: bool = False
    compile: bool = False
    autotune: bool = False   # compile with inductor's max_autotune (kernel choices benchmarked; minutes)
    graph: bool = False
    as_loaded: bool = False  # our pipeline as from_pretrained returns it, no fast-path call

    @classmethod
    def parse(cls, name: str) -> PathSpec:
        for prefix in ("diffusers-", "default-"):
            if name.startswith(prefix):
                dtype, *features = name.removeprefix(prefix).split("+")
                if dtype not in DTYPES or features not in ([], ["compile"]) or (features and prefix == "default-"):
                    raise ValueError(f"--paths: {name!r}: the dtype must be one of {', '.join(DTYPES)} "
                                     "(diffusers-DTYPE may add +compile)")
                if prefix == "diffusers-":
                    return cls(name, True, DTYPES[dtype], compile=bool(features))
                return cls(name, False, DTYPES[dtype], as_loaded=True)
        dtype, *features = name.split("+")
        if dtype not in DTYPES or any(f not in FEATURES for f in features):
            raise ValueError(
                f"--paths: {name!r} must be a dtype ({', '.join(DTYPES)}) followed by any of "
                f"{', '.join('+' + f for f in FEATURES)}, or diffusers-DTYPE, or default-DTYPE"
            )
        if "autotune" in features and "compile" not in features:
            raise ValueError(f"--paths: {name!r}: +autotune is an option of +compile; give both")
        return cls(name, False, DTYPES[dtype], "fast" in features, "compile" in features, "autotune" in features,
                   "graph" in features)


def random_unet(preset_name: str, seed: int = 0, time_inputs: int = 1) -> UNetModel:
    """The preset's UNet with seeded random weights; the zero-initialized output layers get the
    default init of their type too, so every layer contributes (an untrained ADM outputs c_skip·x)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = UNetModel(preset(preset_name, time_inputs=time_inputs))
        for module in unet.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)) and not module.weight.any():
                module.reset_parameters()
    return unet.eval()


def load_path(spec: PathSpec, folder: Path, device: torch.device) -> Callable[..., torch.Tensor]:
    """A function (latents, labels, steps, seed) → images tensor for the path."""
    if spec.diffusers:
        from diffusers import ConsistencyModelPipeline as DiffusersPipeline

        pipe = DiffusersPipeline.from_pretrained(folder, torch_dtype=spec.dtype).to(device)
        if spec.compile:  # diffusers' documented way: compile the UNet
            pipe.unet = torch.compile(pipe.unet)
    else:
        pipe = ConsistencyModelPipeline.from_pretrained(folder, dtype=spec.dtype, device=device,
                                                        fast_kernels=spec.as_loaded or spec.fast)
        if not spec.as_loaded:
            pipe.enable_fast_kernels(spec.fast).enable_cuda_graph(spec.graph)
            if spec.compile:
                pipe.compile(options={"max_autotune": True} if spec.autotune else {})
    pipe.set_progress_bar_config(disable=True)

    def sample(latents: torch.Tensor, labels: torch.Tensor | None, steps: int, seed: int) -> torch.Tensor:
        generator = torch.Generator(device).manual_seed(seed)
        return pipe(batch_size=latents.shape[0], class_labels=labels, num_inference_steps=steps,
                    generator=generator, latents=latents, output_type="pt").images

    return sample


class OtherLoad:
    """The share of the machine's CPU time that other processes used between start() and stop()
    (Linux /proc/stat minus this process's own CPU time); None where that cannot be read."""

    def start(self) -> None:
        self.begin = self._read()

    def stop(self) -> float | None:
        end = self._read()
        if self.begin is None or end is None:
            return None
        (busy0, own0, wall0), (busy1, own1, wall1) = self.begin, end
        return max(0.0, (busy1 - busy0) - (own1 - own0)) / ((wall1 - wall0) * (os.cpu_count() or 1))

    @staticmethod
    def _read() -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        busy = sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)  # all but idle and iowait
        times = os.times()
        return busy / os.sysconf("SC_CLK_TCK"), times.user + times.system, time.monotonic()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [0, 1]."""
    mse = (a.double() - b.double()).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def run_case(
    samplers: dict[str, Callable[..., torch.Tensor]],
    specs: dict[str, PathSpec],
    preset_name: str,
    batch: int,
    steps: int,
    repeats: int,
    device: torch.device,
    warm: set[str],
) -> list[dict]:
    """Time every path on the same noise, alternating them; one result row per path.

    A path's first call (compilation, CUDA graph capture, Winograd filter transforms, allocator
    warm-up) is timed apart: once per preset, and for every step count with a CUDA graph.
    `warm` holds the paths already warmed up and is updated.
    """
    cfg = preset(preset_name)
    gen = torch.Generator().manual_seed(1234)
    latents = torch.randn(batch, cfg.in_channels, cfg.image_size, cfg.image_size, generator=gen).to(device)
    labels = torch.randint(0, cfg.num_classes, (batch,), generator=gen).to(device) if cfg.num_classes else None
    outputs, warmup, times = {}, {}, {name: [] for name in samplers}
    for name, sample in samplers.items():
        if name not in warm or specs[name].graph:
            sync(device)
            start = time.perf_counter()
            sample(latents, labels, steps, seed=0)
            sync(device)
            warmup[name] = time.perf_counter() - start
            warm.add(name)
    for _ in range(repeats):
        for name, sample in samplers.items():
            sync(device)
            start = time.perf_counter()
            images = sample(latents, labels, steps, seed=0)
            sync(device)
            times[name].append(time.perf_counter() - start)
            outputs.setdefault(name, images.float().cpu())
    reference = outputs.get("fp32")

    def speedup(name: str, baseline: str) -> float | None:
        """Median over rounds of the time ratio within a round (robust to load that drifts between rounds)."""
        if baseline not in times:
            return None
        return statistics.median(b / a for a, b in zip(times[name], times[baseline]))

    rows = []
    for name, ts in times.items():
        spec = specs[name]
        dtype_ref = f"diffusers-{next(k for k, v in DTYPES.items() if v == spec.dtype)}"
        rows.append({
            "preset": preset_name, "batch": batch, "steps": steps, "path": name,
            "img_s": batch / statistics.median(ts), "img_s_min": batch / max(ts), "img_s_max": batch / min(ts),
            "vs_diffusers_fp32": speedup(name, "diffusers-fp32"),
            "vs_diffusers_dtype": None if spec.diffusers else speedup(name, dtype_ref),
            "vs_diffusers_compiled": None if spec.diffusers else speedup(name, dtype_ref + "+compile"),
            "max_abs_diff": (outputs[name] - reference).abs().max().item() if reference is not None else None,
            "psnr": psnr(outputs[name], reference) if reference is not None else None,
            "warmup_s": warmup.get(name),
        })
    return rows


def print_rows(rows: list[dict]) -> None:
    def num(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    print(f"{'path':28s} {'img/s':>8s} {'min-max':>15s} {'/diff32':>8s} {'/diffdt':>8s} {'/dcomp':>8s} "
          f"{'max|diff|':>10s} {'PSNR dB':>8s} {'1st call s':>10s}")
    for r in rows:
        spread = f"{r['img_s_min']:.2f}-{r['img_s_max']:.2f}"
        print(f"{r['path']:28s} {r['img_s']:8.2f} {spread:>15s} {num(r['vs_diffusers_fp32'], '.2f'):>8s} "
              f"{num(r['vs_diffusers_dtype'], '.2f'):>8s} {num(r['vs_diffusers_compiled'], '.2f'):>8s} "
              f"{num(r['max_abs_diff'], '.1e'):>10s} "
              f"{num(r['psnr'], '.1f'):>8s} {num(r['warmup_s'], '10.1f'):>10s}", flush=True)


def positive(text: str) -> int:
    """An integer of at least 1 (argparse type)."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be an integer of at least 1")
    return int(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--presets", help="comma list of PRESET:BATCH (default: imagenet64:4,test:32 on CPU, "
                        "imagenet64:64,lsun256:8 on CUDA)")
    parser.add_argument("--batch", type=positive, help="one batch size for every preset")
    parser.add_argument("--steps", default="1,2", help="comma list of step counts (default 1,2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per path (default 3)")
    parser.add_argument("--paths", help="comma list of paths (see the module docstring)")
    parser.add_argument("--compile", action="store_true", help="add the torch.compile paths")
    parser.add_argument("--threads", type=positive, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, help="also write the result rows to this JSON file (after every case)")
    parser.add_argument("--default-allocator", action="store_true",
                        help="leave glibc malloc as it is (default: keep freed memory, as `cm` does; both sides alike)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats: must be at least 1")
    if args.json is not None and not args.json.parent.is_dir():
        parser.error(f"--json: the folder {args.json.parent} does not exist")
    try:
        kind = "cuda" if check_device(args.device).type == "cuda" else "cpu"
    except InvalidInputError as error:
        parser.error(str(error))
    args.cases = []
    for item in (args.presets or DEFAULT_PRESETS[kind]).split(","):
        name, _, batch = item.partition(":")
        if name not in PRESETS or not (batch or "1").isdigit() or int(batch or 1) < 1:
            parser.error(f"--presets: {item!r} is not PRESET:BATCH with a preset of {', '.join(sorted(PRESETS))} "
                         "and a batch of at least 1")
        args.cases.append((name, args.batch or int(batch or 1)))
    if not all(s.isdigit() and int(s) >= 1 for s in args.steps.split(",")):
        parser.error(f"--steps: {args.steps!r} is not a comma list of step counts of at least 1")
    args.steps_list = [int(s) for s in args.steps.split(",")]
    names = args.paths or DEFAULT_PATHS[kind] + ("," + COMPILE_PATHS[kind] if args.compile else "")
    try:
        args.specs = {name: PathSpec.parse(name) for name in names.split(",")}
    except ValueError as error:
        parser.error(str(error))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    kind = "cuda" if device.type == "cuda" else "cpu"   # parse_args checked that CUDA is there
    if args.threads:
        torch.set_num_threads(args.threads)
    kept = not args.default_allocator and keep_freed_memory()
    try:
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.set_verbosity_error()
    except ImportError:
        print("diffusers is not installed: pip install diffusers (it is the reference, needed here only)",
              file=sys.stderr)
        return 2
    specs = args.specs
    cases, steps_list = args.cases, args.steps_list

    print(f"torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if kind == "cuda" else f", {torch.get_num_threads()} threads")
          + (", freed memory kept (allocator.keep_freed_memory)" if kept else ", default allocator"))
    if kind == "cuda":
        torch.backends.cudnn.benchmark = True
    fallback = [name for name, spec in specs.items()
                if kind == "cpu" and not half_arithmetic(spec.dtype)  # float32 counts as having it
                and (spec.diffusers or spec.compile or not (spec.fast or spec.as_loaded))]
    if fallback:
        dtypes = "/".join(sorted({str(specs[name].dtype).removeprefix("torch.") for name in fallback}))
        print(f"this CPU has no {dtypes} arithmetic: {', '.join(fallback)} run PyTorch's fallback kernels (minutes "
              "per imagenet64 call; our fast kernels compute the matrix work in float32 instead)")
    all_rows = []
    for preset_name, batch in cases:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / preset_name
            ConsistencyModelPipeline(random_unet(preset_name), CMStochasticIterativeScheduler()).save_pretrained(folder)
            samplers = {}
            for name, spec in specs.items():
                if spec.graph and kind != "cuda":
                    print(f"skipping {name}: a CUDA graph needs CUDA")
                    continue
                if spec.diffusers and preset(preset_name).in_channels != 3:
                    print(f"skipping {name} on {preset_name}: diffusers' pipeline only samples 3-channel images")
                    continue
                samplers[name] = load_path(spec, folder, device)
            warm: set[str] = set()
            for steps in steps_list:
                print(f"\n== {preset_name}, batch {batch}, {steps} step(s), {args.repeats} repeats")
                other = OtherLoad()
                other.start()
                rows = run_case(samplers, specs, preset_name, batch, steps, args.repeats, device, warm)
                print_rows(rows)
                share = other.stop()
                if share is not None:
                    print(f"other processes used {share:.0%} of the CPUs meanwhile"
                          + (": the ratios are unreliable" if share > 0.1 else ""))
                all_rows += rows
                if args.json:  # after every case: a run stopped by a time limit keeps what it measured
                    with atomic_path(args.json) as partial:
                        partial.write_text(json.dumps(all_rows, indent=1))
            del samplers
            if kind == "cuda":
                torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
