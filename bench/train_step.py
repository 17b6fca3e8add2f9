"""Training-step throughput: images/s and achieved GFLOP/s of CT, CD, sCT and sCD steps on a preset.

Prints, in one run, the machine's measured float32 (and bfloat16) matmul rate next to the
rate each training step achieves, so efficiency can be followed over time:

    python bench/train_step.py --preset digits16 --batch-size 64 --repeats 5
    python bench/train_step.py --preset imagenet64 --batch-size 4 --device cuda --precision bfloat16

FLOPs are counted with torch.utils.flop_counter on one step (forward + backward + target and
teacher forwards); the rate is FLOPs / median step time. The step is the whole optimizer step
of `cm train`: loss, backward, RAdam (as built by the trainer, in its rectified phase), EMA,
with the network in the memory layout the trainer gives it (channels_last for wide networks on
the CPU, training/run_networks.use_training_layout).

Modes: "eager" (plain PyTorch) and "fast" (the networks compiled as `cm train --compile` does,
training/fast_step.py; timed after its first, compiling step). Each step's rate is printed as a
share of the same run's matmul rate in its precision (float32 or bfloat16; --matmul-size, 8192
on CUDA).

sCT/sCD steps add a JVP (forward-mode AD, attention by its own fused JVP, see
training/jvp.py); they are printed as a ratio to the CT step of the same mode, preset and batch,
with the peak memory of one step of each (CPU: the process's peak resident set, reset before
the step, in a fresh process, eager only; CUDA: the allocator's peak during a timed step).

    python bench/train_step.py --methods ct,sct,scd --precision float32
    python bench/train_step.py --device cuda --preset imagenet64 --batch-size 64 --precision bfloat16 \
        --methods ct,sct,scd --modes eager,fast
"""

from __future__ import annotations

import argparse
import copy
import statistics
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import torch
from sample_speed import positive, random_unet, sync  # bench/ is on sys.path when this script runs
from torch.utils.flop_counter import FlopCounterMode

from consistency_models import ConsistencyFunction, Denoiser, InvalidInputError, preset
from consistency_models.cli.allocator import keep_freed_memory
from consistency_models.distributed import check_device
from consistency_models.networks import attention as attention_module
from consistency_models.training.batch_rng import BatchRNG
from consistency_models.training.fast_step import compiled
from consistency_models.training.methods import (
    AdaptiveWeight,
    CDLoss,
    CTLoss,
    MeanFlowLoss,
    SCMLoss,
    TCMLoss,
    get_method,
)
from consistency_models.training.optimizer import build_optimizer
from consistency_models.training.run_networks import use_training_layout


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """Achieved GFLOP/s of an n×n matmul (the machine's reference rate)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e9


METHODS = ("ct", "cd", "sct", "scd", "meanflow", "tcm")


def build_loss(method: str, preset_name: str, device: torch.device, fast: bool = False):
    """The network (random weights in every layer, as a trained one, see sample_speed.random_unet)
    and the method's loss with a target copy (and, for CD, a teacher copy); with `fast`, the loss
    gets compiled networks as the trainer's fast step gives it (training/loop.py)."""
    network = use_training_layout(random_unet(preset_name, time_inputs=2 if method == "meanflow" else 1)
                                  .to(device).train(), jvp=get_method(method).takes_jvp)
    wrap = compiled if fast else (lambda module: module)
    if method == "meanflow":  # u⁻ is the network itself, with two time inputs (t, t − r)
        return network, MeanFlowLoss(wrap(network))
    if method in ("sct", "scd"):  # θ⁻ is the network itself; sCD's teacher is an EDM network
        teacher = wrap(copy.deepcopy(network).eval().requires_grad_(False)) if method == "scd" else None
        return network, SCMLoss(wrap(network), AdaptiveWeight().to(device), teacher, tangent_warmup=1000,
                                time_input="t" if method == "sct" else "log_sigma")
    if method == "tcm":  # stage 2: θ⁻ is the network itself (as ECT's); a frozen stage-1 copy below t′
        return network, TCMLoss(ConsistencyFunction(wrap(network)), ConsistencyFunction(network), total_steps=1000,
                                stage1_steps=0)
    target = copy.deepcopy(network).requires_grad_(False)
    student, target_fn = ConsistencyFunction(wrap(network)), ConsistencyFunction(wrap(target))
    if method == "ct":
        return network, CTLoss(student, target_fn, total_steps=1000)
    teacher = Denoiser(wrap(copy.deepcopy(network).eval().requires_grad_(False)))
    return network, CDLoss(student, target_fn, teacher, num_scales=18)


def step_function(method: str, preset_name: str, batch: int, device: torch.device, fast: bool):
    """step(k, precision): one optimizer step of `cm train` (loss, backward, RAdam in its rectified
    phase, the loss's after-step update) on fixed data."""
    cfg = preset(preset_name)
    network, loss_fn = build_loss(method, preset_name, device, fast)
    optimizer = build_optimizer("radam", [*network.parameters(), *loss_fn.parameters()], lr=1e-5)
    x = torch.randn(batch, cfg.in_channels, cfg.image_size, cfg.image_size, device=device).clamp(-1, 1)
    labels = torch.randint(0, cfg.num_classes, (batch,), device=device) if cfg.num_classes else None

    def step(k: int, precision: str) -> None:
        autocast = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(precision)
        rng = BatchRNG(torch.Generator().manual_seed(k), batch, slice(0, batch), device)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
            loss = loss_fn(x, labels, 500, rng).mean()
        loss.backward()
        optimizer.step()
        loss_fn.after_step(500)
        if k == 0:  # past RAdam's first 5 steps: the rectified update of a long run
            for state in optimizer.state.values():
                state["step"].fill_(1000)

    return step


def count_flops(method: str, preset_name: str, batch: int, device: torch.device, precision: str) -> float:
    """FLOPs of one eager step (a compiled step does the same arithmetic; the counter sees only eager ops).

    The counter cannot see inside the Triton attention-JVP kernel (CUDA), so the step is counted
    with the JVP's PyTorch pass, the same matmuls (networks/attention.py)."""
    step = step_function(method, preset_name, batch, device, fast=False)
    step(0, precision)
    with FlopCounterMode(display=False) as counter, \
            mock.patch.object(attention_module, "_triton_fits", lambda *tensors: False):
        step(1, precision)
    return counter.get_total_flops()


def time_steps(
    method: str, preset_name: str, batch: int, device: torch.device, precisions: list[str], repeats: int,
    fast: bool = False,
) -> tuple[dict[str, list[float]], dict[str, float | None]]:
    """Seconds per optimizer step for each precision (one network, the precisions alternating step
    by step so that load changes hit them alike; the first, compiling steps untimed), and on CUDA
    the MiB one step adds to the allocator's peak, per precision."""
    step = step_function(method, preset_name, batch, device, fast)
    for precision in precisions:
        step(0, precision)
        step(1, precision)  # a compiled step may recompile once when the optimizer state changes
    times: dict[str, list[float]] = {precision: [] for precision in precisions}
    memory: dict[str, float | None] = {precision: None for precision in precisions}
    for k in range(repeats):
        for precision in precisions:
            sync(device)
            start = time.perf_counter()
            step(k + 2, precision)
            sync(device)
            times[precision].append(time.perf_counter() - start)
    if device.type == "cuda":
        for precision in precisions:
            memory[precision] = peak_step_memory(lambda: step(repeats + 2, precision), device)
    return times, memory


def step_memory(method: str, preset_name: str, batch: int, device: torch.device, precision: str) -> float | None:
    """MiB the first optimizer step of `method` adds to the peak, in a fresh process (the kept
    freed memory of earlier steps would hide it here)."""
    code = ("import sys, torch; sys.path.insert(0, {bench!r}); import train_step as t; "
            "print(t.first_step_memory({method!r}, {preset!r}, {batch}, torch.device({device!r}), {precision!r}))")
    result = subprocess.run([sys.executable, "-c", code.format(bench=str(Path(__file__).parent), method=method,
                             preset=preset_name, batch=batch, device=str(device), precision=precision)],
                            capture_output=True, text=True)
    last = result.stdout.strip().splitlines()[-1:] if result.returncode == 0 else []
    return float(last[0]) if last and last[0] != "None" else None


def first_step_memory(method: str, preset_name: str, batch: int, device: torch.device, precision: str) -> float | None:
    """The peak memory of the first optimizer step of `method` (eager), the network and loss already built."""
    step = step_function(method, preset_name, batch, device, fast=False)
    return peak_step_memory(lambda: step(0, precision), device)


def peak_step_memory(run, device: torch.device) -> float | None:
    """MiB one call of `run` adds to the peak: CUDA's allocator peak, or on Linux the process's
    peak resident set (VmHWM, reset through /proc/self/clear_refs); None where neither exists."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        run()
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    status, refs = Path("/proc/self/status"), Path("/proc/self/clear_refs")
    if not status.exists() or not refs.exists():
        return None

    def resident(field: str) -> float:
        line = next(x for x in status.read_text().splitlines() if x.startswith(field))
        return int(line.split()[1]) / 1024

    refs.write_text("5")  # the peak resident set starts again from the current one
    before = resident("VmRSS:")
    run()
    return resident("VmHWM:") - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="digits16", help="network preset (default digits16)")
    parser.add_argument("--batch-size", type=positive, default=64, help="default 64")
    parser.add_argument("--repeats", type=positive, default=5, help="timed rounds (default 5)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--precision", choices=["float32", "bfloat16", "both"], default="both",
                        help="default both")
    parser.add_argument("--methods", default="ct,cd", help=f"comma-separated subset of {','.join(METHODS)} "
                                                          "(default ct,cd)")
    parser.add_argument("--modes", default=None, help="comma-separated subset of eager,fast (default: eager,fast "
                                                      "on CUDA, eager elsewhere)")
    parser.add_argument("--matmul-size", type=int, default=None, help="n of the reference n×n matmul "
                                                                      "(default: 8192 on CUDA, 2048 elsewhere)")
    parser.add_argument("--no-cpu-memory", action="store_true",
                        help="leave out the +MiB column on a CPU (each method's first step in a process of its "
                             "own: ~5 s each)")
    parser.add_argument("--default-allocator", action="store_true",
                        help="leave glibc malloc as it is (default: keep freed memory, as `cm train` does)")
    args = parser.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    if not methods or any(m not in METHODS for m in methods):
        parser.error(f"--methods: {args.methods!r} is not a comma-separated subset of {','.join(METHODS)}")
    try:
        device = check_device(args.device)
        preset(args.preset)
    except (InvalidInputError, ValueError) as exc:
        parser.error(str(exc))
    modes = [m for m in (args.modes or ("eager,fast" if device.type == "cuda" else "eager")).split(",") if m]
    if not modes or any(m not in ("eager", "fast") for m in modes):
        parser.error(f"--modes: {args.modes!r} is not a comma-separated subset of eager,fast")
    precisions = ["float32", "bfloat16"] if args.precision == "both" else [args.precision]
    size = args.matmul_size or (8192 if device.type == "cuda" else 2048)
    kept = not args.default_allocator and keep_freed_memory()
    print(f"device {device}{' ' + torch.cuda.get_device_name(device) if device.type == 'cuda' else ''}, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, preset {args.preset}, "
          f"batch {args.batch_size}, " + ("freed memory kept (allocator.keep_freed_memory)" if kept else
                                          "default allocator"))
    matmul = {p: matmul_rate(device, getattr(torch, p), size) for p in precisions}
    print("matmul " + ", ".join(f"{p} {rate:.1f} GFLOP/s" for p, rate in matmul.items()) + f" ({size}³)")
    seconds_of: dict[tuple[str, str], float] = {}
    memory_of: dict[tuple[str, str], float | None] = {}
    print(f"{'step':<6} {'mode':<6} {'precision':<10} {'img/s':>9} {'s/step':>8} {'min-max':>13} {'GFLOP/s':>9} "
          f"{'of matmul':>10} {'+MiB':>7}")
    flops_of: dict[str, float] = {}
    # Every method in the first mode (eager: quick), then every method in the next (fast: each
    # compiles first); each row and ratio printed as soon as measured, so a run stopped by a time
    # limit keeps all it measured.
    for mode in modes:
        for method in sorted(methods, key=lambda m: m != "ct"):  # ct first: the others' ratios need it
            if method not in flops_of:
                flops_of[method] = count_flops(method, args.preset, args.batch_size, device, precisions[0])
                print(f"{method}: {flops_of[method] / 1e9:.2f} GFLOP per step")
            flops = flops_of[method]
            times, memory = time_steps(method, args.preset, args.batch_size, device, precisions, args.repeats,
                                       fast=mode == "fast")
            if device.type != "cuda" and mode == "eager" and not args.no_cpu_memory:
                memory[precisions[0]] = step_memory(method, args.preset, args.batch_size, device, precisions[0])
            for precision in precisions:
                seconds = statistics.median(times[precision])
                seconds_of[method, mode, precision] = seconds
                memory_of[method, mode, precision] = memory[precision]
                rate = flops / seconds / 1e9
                spread = f"{min(times[precision]):.3f}-{max(times[precision]):.3f}"
                mib = f"{memory[precision]:.0f}" if memory[precision] is not None else "-"
                print(f"{method:<6} {mode:<6} {precision:<10} {args.batch_size / seconds:>9.2f} {seconds:>8.3f} "
                      f"{spread:>13} {rate:>9.1f} {rate / matmul[precision]:>9.0%} {mib:>7}", flush=True)
            if len(precisions) == 2:
                ratios = [a / b for a, b in zip(times["float32"], times["bfloat16"])]
                print(f"{method} {mode}: the bfloat16 step is {statistics.median(ratios):.2f}x as fast as the float32 "
                      f"one (float32 time / bfloat16 time, median over rounds, {min(ratios):.2f}-{max(ratios):.2f})")
            for precision in precisions:
                seconds, ct = seconds_of[method, mode, precision], ("ct", mode, precision)
                if method != "ct" and ct in seconds_of:
                    line = f"{method} {mode} {precision}: step {seconds / seconds_of[ct]:.2f}x the ct step"
                    if memory_of[method, mode, precision] and memory_of[ct]:
                        line += f", peak memory {memory_of[method, mode, precision] / memory_of[ct]:.2f}x"
                    print(line + " (same preset and batch; medians)", flush=True)
                if mode == "fast" and (method, "eager", precision) in seconds_of:
                    print(f"{method} {precision}: the fast step is "
                          f"{seconds_of[method, 'eager', precision] / seconds:.2f}x as fast as the eager one", flush=True)

if __name__ == "__main__":
    main()
