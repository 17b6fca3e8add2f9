"""Shared memory of the attention-JVP kernel's tile configurations, compiled ahead of time (no GPU).

The Triton kernel (networks/attention_triton.py) takes the first of its TILES that fits the
device's shared memory. This script compiles each configuration for an NVIDIA target with the
installed Triton (it needs Triton's own ptxas, not a GPU) and prints the shared memory each needs
per dtype and head width, against the opt-in limits per block of three GPUs:

    python bench/triton_shared_memory.py                      # every dtype, width and configuration
    python bench/triton_shared_memory.py --dtypes float32 --widths 64,128 --tiles 0,1 --arch 80

Each compilation runs in a child process: for some configurations Triton's LLVM stops on an
assertion (the process aborts), printed as "compiler aborted" — such a configuration
must not be reached for that dtype and width. About 5 s per compilation on one core.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

os.environ.pop("TRITON_INTERPRET", None)  # before triton is first imported: compile, do not interpret

DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
WIDTHS = (16, 32, 64, 128, 256)  # the kernel's BLOCK_D: the head width rounded up to a power of two, at least 16
LIMITS_KIB = {"H100": 227, "A100": 163, "RTX 4090": 99}  # shared memory per block (opt-in), KiB


def compile_shared(dtype: str, width: int, tiles: tuple[int, int, int], arch: int) -> int:
    """Bytes of shared memory of the kernel compiled for sm_`arch` (runs in this process)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile as triton_compile

    from consistency_models.networks.attention_triton import _attention_jvp_kernel

    block_m, block_n, stages = tiles
    pointers = ("Q", "K", "V", "DQ", "DK", "DV", "Out", "DOut")
    signature = {name: f"*{DTYPES[dtype]}" for name in pointers}
    signature |= {name: "i32" for name in ("stride_b", "stride_h", "stride_n", "stride_d", "heads", "n", "d")}
    signature["scale"] = "fp32"
    # As a launch on the UNet's tensors specialises it: the last stride is 1 (a constant), the
    # pointers, the other strides, N and d are multiples of 16. Without this the compiler cannot
    # vectorise 2-byte loads and pipelines them differently: bfloat16 needs under half the shared
    # memory it takes at run time.
    constants = {"stride_d": 1, "BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_D": width,
                 "PRECISION": "ieee" if dtype == "float32" else "tf32"}
    signature |= {name: "constexpr" for name in constants}
    aligned = (*pointers, "stride_b", "stride_h", "stride_n", "n", "d")
    source = ASTSource(fn=_attention_jvp_kernel, signature=signature,
                       constexprs={(list(signature).index(name),): value for name, value in constants.items()},
                       attrs={(list(signature).index(name),): [["tt.divisibility", 16]] for name in aligned})
    kernel = triton_compile(source, target=GPUTarget("cuda", arch, 32), options={"num_stages": stages})
    return kernel.metadata.shared


def comma_list(kind, allowed=None):
    def parse(text: str) -> list:
        try:
            values = [kind(part) for part in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list") from None
        if allowed is not None and not set(values) <= set(allowed):
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated subset of {','.join(map(str, allowed))}")
        return values
    return parse


def main() -> None:
    from consistency_models.networks.attention_triton import TILES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtypes", type=comma_list(str, DTYPES), default=list(DTYPES))
    parser.add_argument("--widths", type=comma_list(int, WIDTHS), default=list(WIDTHS))
    parser.add_argument("--tiles", type=comma_list(int, range(len(TILES))), default=list(range(len(TILES))),
                        help="indices into TILES (default: all)")
    parser.add_argument("--arch", type=int, default=90, choices=(70, 75, 80, 86, 89, 90, 100, 120), metavar="ARCH",
                        help="compute capability: 70, 75, 80 (A100), 86, 89, 90 (H100, H200), 100 or 120")
    parser.add_argument("--one", nargs=3, metavar=("DTYPE", "WIDTH", "TILES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # the child: one compilation
        dtype, width, tiles = args.one
        print(compile_shared(dtype, int(width), tuple(int(x) for x in tiles.split(",")), args.arch))
        return

    import triton

    print(f"Triton {triton.__version__}, sm_{args.arch}; shared memory per block in KiB, "
          f"limits {', '.join(f'{gpu} {kib}' for gpu, kib in LIMITS_KIB.items())}")
    print(f"{'dtype':9} {'width':>5}  {'tiles (M, N, stages)':20} {'KiB':>7}  fits")
    for dtype in args.dtypes:
        for width in args.widths:
            for tiles in (TILES[i] for i in args.tiles):
                child = subprocess.run(
                    [sys.executable, __file__, "--arch", str(args.arch), "--one", dtype, str(width),
                     ",".join(map(str, tiles))], capture_output=True, text=True)
                if child.returncode == 0:
                    kib = int(child.stdout.split()[-1]) / 1024
                    fits = ", ".join(gpu for gpu, limit in LIMITS_KIB.items() if kib <= limit) or "none of them"
                    print(f"{dtype:9} {width:>5}  {str(tiles):20} {kib:7.1f}  {fits}", flush=True)
                else:
                    why = (f"compiler aborted (signal {-child.returncode})" if child.returncode < 0 else
                           "failed: " + (child.stderr.strip().splitlines() or ["(no message)"])[-1])
                    print(f"{dtype:9} {width:>5}  {str(tiles):20} {'-':>7}  {why}", flush=True)


if __name__ == "__main__":
    main()
