"""`cm sample`: a batch as a PNG grid, a folder of PNGs or an ADM .npz; `--num N`: sharded generation."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..distributed import setup_distributed, teardown_distributed
from ..errors import InvalidInputError
from ..evaluation.generation import DEFAULT_COMPUTE_BATCH, generate_samples, shard_folder
from ..io.hub import DEFAULT_MODEL, is_embedded, shadowing_note
from ..io.images import FOLDER_IMAGE, output_kind, save_images, save_points, to_uint8
from ..io.overwrite import check_replaceable, refuse_existing, refuse_input_as_output, replaced_folder
from ..networks.half_compute import half_arithmetic
from ..pipeline import ConsistencyModelPipeline
from .out_of_memory import fitting_batch, is_out_of_memory
from .arguments import (
    DTYPES,
    DefaultsHelpFormatter,
    add_device,
    add_model,
    add_noise_levels,
    add_progress,
    add_variant,
    chosen_model,
    device,
    int_list,
    noise_levels,
    plural,
    positive_int,
    seed,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="generate images from a model",
                       description="Generate images with one-step or multistep consistency sampling (Algorithm 1).",
                       formatter_class=DefaultsHelpFormatter)
    add_model(p, DEFAULT_MODEL)
    add_variant(p)
    p.add_argument("--out", required=True,
                   help="samples.png (a grid), DIR/ (one PNG per image) or samples.npz (arr_0: uint8 NHWC, arr_1: labels)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out (else it is refused)")
    p.add_argument("--batch-size", type=positive_int, default=16,
                   help="number of images (with --num: images per shard file; --compute-batch is per network call)")
    p.add_argument("--num", "--num-samples", dest="num", type=positive_int, default=None,
                   help="generate this many images into an .npz with per-image seeds, resumable, sharded over "
                        "processes under torchrun (for FID); under torchrun spell it --num-samples (torchrun's own "
                        "parser mistakes --num for --numa-binding)")
    p.add_argument("--compute-batch", type=positive_int, default=None,
                   help="with --num: images per network call; the images depend on it (float rounding follows the "
                        f"batch shape) but not on --batch-size; raise it on a GPU (default: {DEFAULT_COMPUTE_BATCH})")
    add_noise_levels(p, "sampling steps: evenly spaced grid points for a consistency model (default 1); "
                        "Heun steps for a diffusion (EDM) model (default 18)")
    p.add_argument("--class-labels", "--class-label", dest="class_labels", type=int_list, default=None,
                   help="one label for all images or one per image, e.g. 0,5,9; random when omitted")
    p.add_argument("--seed", type=seed, default=0, help="seed of the noise and of random labels")
    add_device(p)
    add_progress(p)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                   help="network precision; bfloat16/float16 keep GroupNorm and the skip path in float32")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the consistency function (fullgraph; the first call compiles)")
    p.add_argument("--fast-kernels", action=argparse.BooleanOptionalAction, default=True,
                   help="Winograd 3x3 convolutions and channels_last for wide networks on CPU (~1e-6 off)")
    p.add_argument("--cuda-graph", action="store_true", help="capture the sampling loop as one CUDA graph")
    p.set_defaults(func=run)


def sampling_pipeline(args: argparse.Namespace, dev: torch.device, main: bool = True) -> ConsistencyModelPipeline:
    """The model in the asked precision, with the asked fast paths (`main`: the process that speaks)."""
    pipe = ConsistencyModelPipeline.from_pretrained(args.model, torch_dtype=DTYPES[args.dtype], device=dev,
                                                    variant=args.variant, fast_kernels=args.fast_kernels)
    if not args.progress:
        pipe.set_progress_bar_config(disable=True)
    if main and (note := shadowing_note(args.model)):
        print(note, file=sys.stderr)
    if args.compile:
        pipe.compile()
        if main:
            print("compile: the first batch compiles the network (torch.compile; a minute or more on a CPU)"
                  if pipe.sampler.fast else f"compile: {pipe.kind.summary} samples eagerly (Heun's method); "
                  "--compile changes nothing here", file=sys.stderr)
    if main and (note := fallback_kernels_note(args, dev, pipe)):
        print(note, file=sys.stderr)
    if args.cuda_graph:
        if dev.type != "cuda":
            raise InvalidInputError(f"cuda_graph: needs --device cuda, not {dev}")
        pipe.enable_cuda_graph()
    return pipe


def fallback_kernels_note(args: argparse.Namespace, dev: torch.device, pipe: ConsistencyModelPipeline) -> str | None:
    """A UNet in half precision on a CPU without its arithmetic runs fast only through the fast
    kernels' float32 matrix work (networks/half_compute.py): say so when --compile (where the
    sampler compiles) or --no-fast-kernels leaves it to PyTorch's fallback kernels."""
    compiled = args.compile and pipe.sampler.fast
    if (dev.type != "cpu" or half_arithmetic(DTYPES[args.dtype])  # float32 counts as having it
            or (args.fast_kernels and not compiled)
            or not hasattr(pipe.unet, "float32_matmuls")):  # a point model (MLP) has no fast kernels either way
        return None
    how = "--compile" if compiled else "--no-fast-kernels"
    return (f"dtype: this CPU has no {args.dtype} arithmetic, so with {how} the network runs PyTorch's fallback "
            f"kernels (on an AVX2 CPU 4-280x the float32 time per convolution or matmul); without it the fast "
            f"kernels compute its matrix work in float32")


def run(args: argparse.Namespace) -> None:
    args.model = chosen_model(args)
    kind = output_kind(args.out, folders=args.num is None)  # refuse a bad output path before any work
    refuse_input_as_output(args.out, "out", {"model": None if is_embedded(args.model) else args.model})
    if args.compute_batch is not None and args.num is None:
        raise InvalidInputError(f"compute_batch: {args.compute_batch} is read only with --num (sharded generation); "
                                "without it --batch-size images are made in one call")
    if args.num is not None:
        if not shard_folder(args.out).is_dir():  # else a killed run may have left its merged file: decided there
            refuse_existing(args.out, args.overwrite)
        return run_many(args)
    refuse_existing(args.out, args.overwrite)
    if kind == "dir":   # a folder --overwrite may not replace: said before the work, not after it
        check_replaceable(args.out, FOLDER_IMAGE, mark=True)
    pipe = sampling_pipeline(args, device(args.device))

    def attempt(batch_size: int):
        return pipe(batch_size=batch_size, class_labels=args.class_labels, **noise_levels(args).as_dict(),
                    generator=torch.Generator().manual_seed(args.seed), output_type="np")

    try:
        result = attempt(args.batch_size)
    except Exception as exc:  # noqa: BLE001 — only running out of memory is turned into advice
        if not is_out_of_memory(exc):
            raise
        result = None  # the search runs after this block: the error's traceback holds the failed batch's tensors
    if result is None:
        raise InvalidInputError(too_large(args.batch_size, fitting_batch(attempt, args.batch_size), kind)) from None
    labels = result.class_labels.cpu().numpy() if result.class_labels is not None else None
    if not pipe.is_image_model:
        save_points(result.images, args.out, labels, replace=args.overwrite)
        print(f"wrote {plural(len(result.images), 'point')} to {args.out}")
        return
    if kind == "dir":  # replaced as a whole: no earlier image stays mixed in
        with replaced_folder(args.out, FOLDER_IMAGE, replace=args.overwrite, mark=True) as fresh:
            files = save_images(to_uint8(result.images), fresh, labels)
        files = [Path(args.out) / f.name for f in files]
    else:
        files = save_images(to_uint8(result.images), args.out, labels, replace=args.overwrite)
    where = files[0] if len(files) == 1 else f"{plural(len(files), 'file')} in {files[0].parent}"
    print(f"wrote {plural(len(result.images), 'image')} to {where}")


def too_large(batch: int, fits: int, out_kind: str) -> str:
    """The one-line advice when `batch` images ran out of memory and `fits` did not (0: not even one);
    `--num` writes only .npz, so for a grid or folder output the advice names one."""
    if fits == 0:
        return f"batch_size: not even one image fits in memory here (--batch-size {batch} was asked for)"
    many = f"--num {batch} --batch-size {fits}" + ("" if out_kind == "npz" else " --out samples.npz")
    return (f"batch_size: {batch} images do not fit in memory here at once, {fits} do; use --batch-size {fits}, "
            f"or {many} to make {batch} in batches")


def run_many(args: argparse.Namespace) -> None:
    """`--num`: per-image seeds, shards, resume; one process or one per rank under torchrun."""
    if args.class_labels is not None and len(args.class_labels) != 1:
        raise InvalidInputError(f"class_labels: give one label for all images with --num, not {args.class_labels}")
    device(args.device)
    context = setup_distributed(args.device)
    try:
        pipe = sampling_pipeline(args, context.device, context.is_main)
        out = generate_samples(pipe, args.num, args.out, batch_size=args.batch_size, seed=args.seed,
                               class_labels=None if args.class_labels is None else args.class_labels[0],
                               levels=noise_levels(args), context=context,
                               compute_batch=DEFAULT_COMPUTE_BATCH if args.compute_batch is None else args.compute_batch,
                               overwrite=args.overwrite, start_over=args.overwrite, progress=args.progress)
    finally:
        teardown_distributed()
    if out is not None:
        print(f"wrote {plural(args.num, 'image')} to {out}")
