"""Does this CPU compute half precision? Time of single kernels in float32 and in bfloat16/float16.

On a CPU without half-precision arithmetic (AVX2 only: no AVX-512 for bfloat16, no AVX512-FP16 /
AMX-FP16 for float16) PyTorch runs its fallback loops, many times slower than float32; there a
half-precision UNet with fast kernels computes its matrix work in float32
(`networks/half_compute.py`). This prints, per kernel, the median time in each dtype and the
ratio to float32, next to what `half_arithmetic` decided:

    python bench/half_kernels.py                 # imagenet64's sizes at batch 4
    python bench/half_kernels.py --scale 0.25    # quicker: channels and pixels scaled down
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from consistency_models.cli.arguments import DTYPES
from consistency_models.networks.half_compute import half_arithmetic
from consistency_models.networks.winograd import winograd_conv3x3, winograd_weight

# (channels, pixels) of imagenet64's 3×3 convolutions at its four levels.
CONVS = ((192, 64), (384, 32), (576, 16), (768, 8))


def median_ms(run: Callable[[], object], repeats: int) -> float:
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def number(value: float) -> str:
    """Four significant digits, without an exponent."""
    return f"{value:.0f}" if value >= 1000 else f"{value:.4g}" if value >= 1e-3 else f"{value:.6f}"


def kernels(dtype: torch.dtype, scale: float, batch: int) -> dict[str, Callable[[], object]]:
    """name → a call of that kernel on random inputs in `dtype`."""
    g = torch.Generator().manual_seed(0)
    found = {}
    for channels, pixels in CONVS:
        c, p = max(8, int(channels * scale)), max(4, 2 * int(pixels * scale / 2))
        x = torch.randn(batch, c, p, p, generator=g).to(dtype)
        w = (0.02 * torch.randn(c, c, 3, 3, generator=g)).to(dtype)
        xl, wl = x.contiguous(memory_format=torch.channels_last), w.contiguous(memory_format=torch.channels_last)
        u = winograd_weight(w)
        found[f"conv3x3 {c} ch {p} px NCHW"] = lambda x=x, w=w: F.conv2d(x, w, padding=1)
        found[f"conv3x3 {c} ch {p} px channels_last"] = lambda x=xl, w=wl: F.conv2d(x, w, padding=1)
        found[f"conv3x3 {c} ch {p} px Winograd"] = lambda x=xl, u=u: winograd_conv3x3(x, u, None)
    n = max(64, int(1024 * scale))
    a = torch.randn(n, n, generator=g).to(dtype)
    found[f"matmul {n}^3"] = lambda a=a: a @ a
    q = torch.randn(batch, 6, max(16, int(1024 * scale)), 64, generator=g).to(dtype)
    found[f"attention {q.shape[2]} tokens"] = lambda q=q: F.scaled_dot_product_attention(q, q, q)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtypes", default="bfloat16,float16", help="comma list of half dtypes (default both)")
    parser.add_argument("--scale", type=float, default=1.0, help="channels and pixels times this (default 1)")
    parser.add_argument("--batch", type=int, default=4, help="batch size (default 4)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per kernel (default 3)")
    args = parser.parse_args(argv)
    halves = args.dtypes.split(",")
    if any(name not in ("bfloat16", "float16") for name in halves):
        parser.error(f"--dtypes: {args.dtypes!r} is not a comma list of bfloat16, float16")
    if not 0 < args.scale <= 4 or args.batch < 1 or args.repeats < 1:
        parser.error("--scale must lie in (0, 4], --batch and --repeats be at least 1")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}; "
          + ", ".join(f"{name} arithmetic: {'yes' if half_arithmetic(DTYPES[name]) else 'no (float32 is used)'}"
                      for name in halves))
    base = {name: median_ms(run, args.repeats) for name, run in kernels(torch.float32, args.scale, args.batch).items()}
    header = f"{'kernel':<36s} {'float32 ms':>11s}" + "".join(f" {h + ' ms':>12s} {'x float32':>10s}" for h in halves)
    print(header)
    timed = {h: {name: median_ms(run, args.repeats) for name, run in kernels(DTYPES[h], args.scale, args.batch).items()}
             for h in halves}
    for name, ms in base.items():
        print(f"{name:<36s} {number(ms):>11s}" + "".join(f" {number(timed[h][name]):>12s} {number(timed[h][name] / ms):>10s}"
                                                         for h in halves))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
