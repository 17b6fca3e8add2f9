"""Training-step throughput: images/s and achieved GFLOP/s of CT and CD steps on a preset.

Prints, in one run, the machine's measured float32 (and bfloat16) matmul rate next to the
rate each training step achieves, so efficiency can be followed over time:

    python bench/train_step.py --preset digits16 --batch-size 64 --repeats 5
    python bench/train_step.py --preset imagenet64 --batch-size 4 --device cuda --precision bfloat16

FLOPs are counted with torch.utils.flop_counter on one step (forward + backward + target and
teacher forwards); the rate is FLOPs / median step time. The step is the whole optimizer step
of `cm train`: loss, backward, RAdam (as built by the trainer, in its rectified phase), EMA.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from consistency_models import ConsistencyFunction, Denoiser, UNetModel, preset
from consistency_models.training.batch_rng import BatchRNG
from consistency_models.training.losses import CDLoss, CTLoss
from consistency_models.training.optimizer import build_optimizer


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


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_loss(method: str, cfg, device: torch.device):
    network = UNetModel(cfg).to(device).train()
    target = copy.deepcopy(network).requires_grad_(False)
    student, target_fn = ConsistencyFunction(network), ConsistencyFunction(target)
    if method == "ct":
        return network, CTLoss(student, target_fn, total_steps=1000)
    teacher = Denoiser(copy.deepcopy(network).eval().requires_grad_(False))
    return network, CDLoss(student, target_fn, teacher, num_scales=18)


def time_step(method: str, cfg, batch: int, device: torch.device, precision: str, repeats: int) -> tuple[float, float]:
    """(median seconds per optimizer step, FLOPs per step)."""
    network, loss_fn = build_loss(method, cfg, device)
    optimizer = build_optimizer("radam", network.parameters(), lr=1e-5)
    x = torch.randn(batch, cfg.in_channels, cfg.image_size, cfg.image_size, device=device).clamp(-1, 1)
    labels = torch.randint(0, cfg.num_classes, (batch,), device=device) if cfg.num_classes else None
    autocast = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(precision)

    def step(k: int) -> None:
        rng = BatchRNG(torch.Generator().manual_seed(k), batch, slice(0, batch), device)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
            loss = loss_fn(x, labels, 500, rng).mean()
        loss.backward()
        optimizer.step()
        loss_fn.after_step(500)

    step(0)
    for state in optimizer.state.values():  # past RAdam's first 5 steps: the rectified update of a long run
        state["step"].fill_(1000)
    with FlopCounterMode(display=False) as counter:
        step(1)
    times = []
    for k in range(repeats):
        sync(device)
        start = time.perf_counter()
        step(k + 2)
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="digits16")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=["float32", "bfloat16", "both"], default="both")
    parser.add_argument("--methods", default="ct,cd", help="comma-separated subset of ct,cd")
    args = parser.parse_args()
    device = torch.device(args.device)
    cfg = preset(args.preset)
    fp32 = matmul_rate(device, torch.float32)
    bf16 = matmul_rate(device, torch.bfloat16)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"matmul 2048²: float32 {fp32:.1f} GFLOP/s, bfloat16 {bf16:.1f} GFLOP/s")
    print(f"{'step':<6} {'precision':<10} {'img/s':>9} {'GFLOP/step':>11} {'GFLOP/s':>9} {'of fp32 matmul':>15}")
    precisions = ["float32", "bfloat16"] if args.precision == "both" else [args.precision]
    methods = [m for m in args.methods.split(",") if m]
    if not methods or any(m not in ("ct", "cd") for m in methods):
        parser.error(f"--methods: {args.methods!r} is not a comma-separated subset of ct,cd")
    results = {}
    for method in methods:
        for precision in precisions:
            seconds, flops = time_step(method, cfg, args.batch_size, device, precision, args.repeats)
            rate = flops / seconds / 1e9
            results[(method, precision)] = seconds
            print(f"{method:<6} {precision:<10} {args.batch_size / seconds:>9.1f} {flops / 1e9:>11.2f} "
                  f"{rate:>9.1f} {rate / fp32:>14.0%}")
    for method in methods:
        if (method, "bfloat16") in results and (method, "float32") in results:
            print(f"{method}: bfloat16 step is {results[(method, 'float32')] / results[(method, 'bfloat16')]:.2f}x "
                  "the float32 one")


if __name__ == "__main__":
    main()
