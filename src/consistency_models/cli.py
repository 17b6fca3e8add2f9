"""The `cm` command line: parses arguments and calls the public API, nothing more.

Bad input prints one line `cm: error: ...` and exits with code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Sequence

import torch

from .allocator import keep_freed_memory
from .errors import InvalidInputError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None


def _float_list(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InvalidInputError(f"device: {name!r} is not a device name (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(f"device: {name!r} was asked for, but CUDA is not available here; use --device cpu")
    return device


def cmd_sample(args: argparse.Namespace) -> None:
    """Sample a batch and write it as a PNG grid, a folder of PNGs or an ADM `.npz`."""
    from .io.images import output_kind, save_images, save_points, to_uint8

    output_kind(args.out)  # refuse a bad output path before any work
    if args.num is not None:
        _sample_many(args)
        return
    pipe = _sampling_pipeline(args, _device(args.device))
    generator = torch.Generator().manual_seed(args.seed)
    result = pipe(
        batch_size=args.batch_size,
        class_labels=args.class_labels,
        num_inference_steps=args.steps,
        timesteps=args.timesteps,
        sigmas=args.sigmas,
        generator=generator,
        output_type="np",
    )
    labels = result.class_labels.cpu().numpy() if result.class_labels is not None else None
    if not pipe.is_image_model:
        save_points(result.images, args.out, labels)
        print(f"wrote {len(result.images)} points to {args.out}")
        return
    files = save_images(to_uint8(result.images), args.out, labels)
    where = files[0] if len(files) == 1 else f"{len(files)} files in {files[0].parent}"
    print(f"wrote {len(result.images)} images to {where}")


def _sampling_pipeline(args: argparse.Namespace, device: torch.device):
    """The model in the asked precision, with the asked fast paths (see ConsistencyModelPipeline)."""
    from .pipeline import ConsistencyModelPipeline

    pipe = ConsistencyModelPipeline.from_pretrained(args.model, torch_dtype=DTYPES[args.dtype], device=device)
    pipe.enable_fast_kernels(args.fast_kernels)
    if args.compile:
        pipe.compile()
    if args.cuda_graph:
        if device.type != "cuda":
            raise InvalidInputError(f"cuda_graph: needs --device cuda, not {device}")
        pipe.enable_cuda_graph()
    return pipe


def _sample_many(args: argparse.Namespace) -> None:
    """`cm sample --num N`: per-image seeds, shards, resume; one process or one per rank under torchrun."""
    from .generation import generate_samples
    from .training.distributed import setup_distributed, teardown_distributed

    if args.class_labels is not None and len(args.class_labels) != 1:
        raise InvalidInputError(f"class_labels: give one label for all images with --num, not {args.class_labels}")
    _device(args.device)
    context = setup_distributed(args.device)
    try:
        pipe = _sampling_pipeline(args, context.device)
        out = generate_samples(
            pipe, args.num, args.out, batch_size=args.batch_size, seed=args.seed,
            class_labels=None if args.class_labels is None else args.class_labels[0],
            num_inference_steps=args.steps, timesteps=args.timesteps, sigmas=args.sigmas, context=context,
        )
    finally:
        teardown_distributed()
    if out is not None:
        print(f"wrote {args.num} images to {out}")


def _extractor(args: argparse.Namespace):
    from .metrics.features import feature_extractor

    if args.inception_weights is not None and args.features != "inception":
        raise InvalidInputError("inception_weights: given, but --features is not inception")
    return feature_extractor(args.features, inception_weights=args.inception_weights, device=_device(args.device))


def cmd_eval(args: argparse.Namespace) -> None:
    """FID, IS, KID and precision/recall of a sample set against a reference; or save a set's statistics."""
    from .metrics.evaluate import compute_statistics, evaluate, format_table, save_statistics, write_results_json

    if args.ref is None and args.save_stats is None:
        raise InvalidInputError("ref: give the reference set (--ref), or --save-stats to only save statistics")
    extractor = _extractor(args)
    if args.save_stats is not None:
        stats = compute_statistics(args.samples, extractor)
        save_statistics(stats, args.save_stats)
        print(f"wrote the {args.features} statistics of {stats.count} images to {args.save_stats}")
        samples = stats
    else:
        samples = args.samples
    if args.ref is None:
        return
    results = evaluate(samples, args.ref, extractor, metrics=args.metrics, kid_subsets=args.kid_subsets,
                       kid_subset_size=args.kid_subset_size, seed=args.seed)
    results = {"samples": str(args.samples), "reference": str(args.ref), "features": args.features, **results}
    print(format_table(results))
    if args.json is not None:
        write_results_json(results, args.json)
        print(f"wrote {args.json}")


def cmd_tune_timesteps(args: argparse.Namespace) -> None:
    """Ternary search of the two-step middle grid index by FID against reference statistics."""
    from .metrics.evaluate import compute_statistics
    from .pipeline import ConsistencyModelPipeline
    from .timestep_search import search_range, tune_timesteps

    extractor = _extractor(args)
    pipe = ConsistencyModelPipeline.from_pretrained(args.model, device=_device(args.device))
    search_range(pipe, args.lo, args.hi)  # refuse a bad range before any work
    reference = compute_statistics(args.ref, extractor)
    result = tune_timesteps(pipe, extractor, (torch.as_tensor(reference.mu), torch.as_tensor(reference.sigma)),
                            num=args.num, batch_size=args.batch_size, seed=args.seed,
                            class_labels=args.class_label, lo=args.lo, hi=args.hi)
    for index, score in result.scores.items():
        print(f"  t = {index:4d}  sigma = {result.sigmas[index]:9.4f}  FD = {score:.5g}")
    print(f"best: --timesteps {result.index},0  (sigma {result.sigma:.4g}), "
          f"{'FID' if args.features == 'inception' else 'FD'} {result.score:.5g} on {args.num} samples")


def cmd_edit(args: argparse.Namespace) -> None:
    """Zero-shot editing of one image (Algorithm 4); `interpolate` writes a strip of frames."""
    from . import editing
    from .io.images import make_grid, output_kind, read_image, save_png, to_uint8
    from .pipeline import ConsistencyModelPipeline

    if output_kind(args.out) != "grid":
        raise InvalidInputError(f"out: {args.out!r} must be a .png file")
    pipe = ConsistencyModelPipeline.from_pretrained(args.model, device=_device(args.device))
    if not pipe.is_image_model:
        raise InvalidInputError(f"model: {args.model} makes points, not images; editing needs an image model")
    channels, size, _ = pipe.sample_shape
    generator = torch.Generator().manual_seed(args.seed)
    schedule = {"num_inference_steps": args.steps, "timesteps": args.timesteps, "sigmas": args.sigmas}
    common = {"generator": generator, "class_labels": args.class_label}

    def image(path: str, channels: int = channels, size: int = size, argument: str = "image", **kw):
        return read_image(path, channels, size, args.resize, argument, **kw)

    if args.edit == "interpolate":
        result = editing.interpolate(pipe, num=args.num, **common)
    elif args.edit == "inpaint":
        from PIL import Image

        mask = image(args.mask, 1, argument="mask", resample=Image.NEAREST)
        result = editing.inpaint(pipe, image(args.image), mask, **schedule, **common)
    elif args.edit == "colorize":
        result = editing.colorize(pipe, image(args.image, 1), **schedule, **common)
    elif args.edit == "superres":
        editing.check_factor(args.factor, size)
        low = image(args.image, size=size // args.factor, argument="image (the low-resolution input)")
        result = editing.super_resolve(pipe, low, args.factor, **schedule, **common)
    elif args.edit == "stroke":
        extra = {} if args.sigma is None else {"sigma_start": args.sigma}
        result = editing.stroke_guided(pipe, image(args.image), **extra, **schedule, **common)
    else:  # denoise
        result = editing.denoise(pipe, image(args.image), args.sigma, **common)
    images = to_uint8(result.cpu().permute(0, 2, 3, 1).numpy())
    save_png(make_grid(images, nrow=len(images)) if len(images) > 1 else images[0], args.out)
    print(f"wrote {args.out} ({args.edit}, {len(images)} image{'s' if len(images) > 1 else ''})")


def cmd_convert_openai(args: argparse.Namespace) -> None:
    """Convert an OpenAI `.pt` checkpoint into a diffusers pipeline folder."""
    from .io.openai import convert_openai_checkpoint

    pipe = convert_openai_checkpoint(args.checkpoint, args.out_dir, args.preset, args.scheduler, args.parametrization)
    print(f"wrote {args.out_dir} ({pipe.parametrization}, {pipe.scheduler.config.num_train_timesteps}-point grid)")


def cmd_new(args: argparse.Namespace) -> None:
    """Write an untrained pipeline folder for a preset (a starting point for training or trying the tools)."""
    from .io.diffusers_format import require_new_folder
    from .networks import UNetModel, preset
    from .pipeline import ConsistencyModelPipeline
    from .scheduler import CMStochasticIterativeScheduler

    require_new_folder(args.out_dir, "out_dir")
    torch.manual_seed(args.seed)
    cfg = preset(args.preset, **({"num_classes": None} if args.unconditional else {}))
    pipe = ConsistencyModelPipeline(UNetModel(cfg), CMStochasticIterativeScheduler(num_train_timesteps=args.grid))
    pipe.save_pretrained(args.out_dir)
    print(f"wrote an untrained '{args.preset}' model to {args.out_dir}")


def cmd_train(args: argparse.Namespace) -> None:
    """Train a model; the run folder is a pipeline folder (`cm sample --model RUN_DIR`)."""
    from .training import TrainConfig, train

    options = {k: v for k, v in vars(args).items() if k not in ("func", "command") and v is not None}
    options["ema_rates"] = tuple(options.get("ema_rates", (0.999,)))
    options["use_labels"] = not options.pop("unconditional", False)
    options["progress"] = not options.pop("no_progress", False)
    out = train(TrainConfig(**options))
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"trained {args.method} for {args.steps} steps; model in {out} (cm sample --model {out})")


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse with the CLI's error format: one line `cm: error: ...`, exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"cm: error: {message} (see '{self.prog} --help')\n")


EDITS = {  # name: (help, needs --image)
    "inpaint": ("regenerate the masked pixels (mask: white = regenerate)", True),
    "colorize": ("color a grayscale image (needs an RGB model; default: the embedded digits-color)", True),
    "superres": ("upsample a low-resolution image by --factor", True),
    "stroke": ("turn a coarse stroke painting into an image (SDEdit)", True),
    "denoise": ("remove Gaussian noise of std --sigma (in [-1, 1] units) in one step", True),
    "interpolate": ("one-step samples along a spherical path between two noise draws", False),
}


def _add_edit_parser(sub: argparse._SubParsersAction) -> None:
    from .io.hub import COLOR_MODEL, DEFAULT_MODEL

    edit = sub.add_parser("edit", help="zero-shot editing: inpaint, colorize, superres, stroke, denoise, interpolate",
                          description="Zero-shot image editing with a consistency model (Algorithm 4).")
    kinds = edit.add_subparsers(dest="edit", metavar="EDIT", required=True, parser_class=OneLineErrorParser)
    for name, (help_text, needs_image) in EDITS.items():
        p = kinds.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".",
                             formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        p.add_argument("--model", default=COLOR_MODEL if name == "colorize" else DEFAULT_MODEL,
                       help="embedded model name, pipeline folder or Hub id")
        if needs_image:
            p.add_argument("--image", required=True, help="input PNG/JPEG at the model's size (see --resize)")
            p.add_argument("--resize", action="store_true", help="center-crop and resize inputs of another size")
        else:
            p.set_defaults(resize=False)
        p.add_argument("--out", required=True, help="output PNG")
        if name == "inpaint":
            p.add_argument("--mask", required=True, help="mask PNG: white = regenerate, black = keep")
        if name == "superres":
            p.add_argument("--factor", type=_positive_int, default=4, help="upsampling factor")
        if name == "stroke":
            p.add_argument("--sigma", type=float, default=None, help="starting noise level (default 1; higher gives the model more freedom)")
        if name == "denoise":
            p.add_argument("--sigma", type=float, required=True, help="noise std of the input, in [-1, 1] units")
        if name == "interpolate":
            p.add_argument("--num", type=_positive_int, default=8, help="frames, both ends included")
        if name not in ("denoise", "interpolate"):
            steps = p.add_mutually_exclusive_group()
            steps.add_argument("--steps", type=_positive_int, default=None,
                               help="evenly spaced points of the model's grid (default: the 40-point grid)")
            steps.add_argument("--timesteps", type=_int_list, default=None, help="descending grid indices")
            steps.add_argument("--sigmas", type=_float_list, default=None, help="descending noise levels")
        else:
            p.set_defaults(steps=None, timesteps=None, sigmas=None)
        p.add_argument("--class-label", type=int, default=None, help="class of a conditional model (random if omitted)")
        p.add_argument("--seed", type=int, default=0, help="seed of the noise")
        p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda or cuda:N")
        p.set_defaults(func=cmd_edit)


def _add_feature_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--features", choices=["inception", "digits"], default="inception",
                   help="inception: the standard FID Inception-v3; digits: the embedded digits classifier")
    p.add_argument("--inception-weights", default=None,
                   help="pt_inception-2015-12-05-6726825d.pth (else $CM_INCEPTION_WEIGHTS or the cache folder)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda or cuda:N")


def _add_eval_parsers(sub: argparse._SubParsersAction) -> None:
    from .io.hub import DEFAULT_MODEL
    from .metrics.evaluate import METRICS

    ev = sub.add_parser("eval", help="FID, IS, KID, precision/recall of samples against a reference",
                        description="Score a set of samples against a reference set. A set is a folder of "
                                    "images, an ADM .npz (arr_0: uint8 NHWC), a statistics .npz (cm eval "
                                    "--save-stats, or pytorch-fid/OpenAI reference statistics) or digits:test.",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ev.add_argument("--samples", required=True, help="the generated set")
    ev.add_argument("--ref", default=None, help="the reference set")
    _add_feature_arguments(ev)
    ev.add_argument("--metrics", type=lambda t: [m for m in t.split(",") if m], default=list(METRICS),
                    help="comma-separated: " + ",".join(METRICS))
    ev.add_argument("--kid-subsets", type=_positive_int, default=100)
    ev.add_argument("--kid-subset-size", type=_positive_int, default=1000)
    ev.add_argument("--seed", type=int, default=0, help="seed of KID's subsets")
    ev.add_argument("--save-stats", default=None, help="also write the statistics of --samples to this .npz")
    ev.add_argument("--json", default=None, help="write the results to this JSON file")
    ev.set_defaults(func=cmd_eval)

    tune = sub.add_parser("tune-timesteps", help="search the middle timestep of two-step sampling by FID",
                          description="OpenAI's ternary search of t in --timesteps t,0, scored by the FID "
                                      "(or digits FD) of --num samples against --ref.",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    tune.add_argument("--model", default=DEFAULT_MODEL, help="embedded model name, pipeline folder or Hub id")
    tune.add_argument("--ref", required=True, help="reference set or statistics (see cm eval)")
    tune.add_argument("--num", type=_positive_int, default=5000, help="samples per candidate")
    tune.add_argument("--batch-size", type=_positive_int, default=64)
    tune.add_argument("--seed", type=int, default=0, help="seed of the (shared) per-image noise")
    tune.add_argument("--class-label", type=int, default=None, help="one class for all samples (random if omitted)")
    tune.add_argument("--lo", type=_positive_int, default=1, help="lowest grid index tried")
    tune.add_argument("--hi", type=_positive_int, default=None, help="highest grid index tried (default N-2)")
    _add_feature_arguments(tune)
    tune.set_defaults(func=cmd_tune_timesteps)


def build_parser() -> argparse.ArgumentParser:
    from .io.openai import SCHEDULERS
    from .networks.presets import PRESETS

    parser = OneLineErrorParser(
        prog="cm",
        description="Consistency models: one-step and few-step image generation (Song et al. 2023).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=OneLineErrorParser)

    sample = sub.add_parser(
        "sample",
        help="generate images from a model",
        description="Generate images with one-step or multistep consistency sampling (Algorithm 1).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sample.add_argument("--model", default="digits",
                        help="embedded model name (digits, digits-teacher, digits-color), pipeline folder (diffusers format) "
                             "or Hugging Face Hub id such as openai/diffusers-cd_imagenet64_l2")
    sample.add_argument("--out", required=True,
                        help="samples.png (a grid), DIR/ (one PNG per image) or samples.npz "
                             "(arr_0: uint8 NHWC, arr_1: labels)")
    sample.add_argument("--batch-size", type=_positive_int, default=16,
                        help="number of images (with --num: images per network call)")
    sample.add_argument("--num", "--num-samples", dest="num", type=_positive_int, default=None,
                        help="generate this many images into an .npz with per-image seeds, resumable, "
                             "sharded over processes under torchrun (for FID); under torchrun spell it "
                             "--num-samples (torchrun's own parser mistakes --num for --numa-binding)")
    steps = sample.add_mutually_exclusive_group()
    steps.add_argument("--steps", type=_positive_int, default=None,
                       help="sampling steps: evenly spaced grid points for a consistency model (default 1); "
                            "Heun steps for a diffusion (EDM) model (default 18)")
    steps.add_argument("--timesteps", type=_int_list, default=None,
                       help="descending grid indices, e.g. 22,0 (index 0 = sigma_max)")
    steps.add_argument("--sigmas", type=_float_list, default=None,
                       help="descending noise levels to evaluate at, e.g. 80,1.38 (sigma_min is appended)")
    sample.add_argument("--class-labels", type=_int_list, default=None,
                        help="one label for all images or one per image, e.g. 0,5,9; random when omitted")
    sample.add_argument("--seed", type=int, default=0, help="seed of the noise and of random labels")
    sample.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu, cuda or cuda:N")
    sample.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                        help="network precision; bfloat16/float16 keep GroupNorm and the skip path in float32")
    sample.add_argument("--compile", action="store_true",
                        help="torch.compile the consistency function (fullgraph; the first call compiles)")
    sample.add_argument("--fast-kernels", action=argparse.BooleanOptionalAction, default=True,
                        help="Winograd 3x3 convolutions and channels_last for wide networks on CPU (~1e-6 off)")
    sample.add_argument("--cuda-graph", action="store_true", help="capture the sampling loop as one CUDA graph")
    sample.set_defaults(func=cmd_sample)

    _add_edit_parser(sub)
    _add_eval_parsers(sub)

    new = sub.add_parser(
        "new",
        help="create an untrained model folder from a preset",
        description="Write a pipeline folder holding a randomly initialised network of a preset.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    new.add_argument("out_dir", help="folder to write")
    new.add_argument("--preset", choices=sorted(PRESETS), default="test", help="network architecture")
    new.add_argument("--unconditional", action="store_true", help="drop the class embedding")
    new.add_argument("--grid", type=_positive_int, default=40, help="points N of the sampling grid")
    new.add_argument("--seed", type=int, default=0, help="seed of the initial weights")
    new.set_defaults(func=cmd_new)

    from .training.config import METHODS, OPTIMIZERS, PRECISIONS, TrainConfig
    from .training.distances import DISTANCES

    defaults = TrainConfig(method="ict", data="digits", out=".")
    train = sub.add_parser(
        "train",
        help="train a model (EDM teacher, CD, CT, iCT, ECT)",
        description="Train a diffusion teacher or a consistency model. The run folder is a pipeline folder "
                    "holding the EMA weights, checkpoints, metrics.jsonl and sample grids. Run it under "
                    "torchrun for several processes; --batch-size is the global batch.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    train.add_argument("--method", choices=METHODS, required=True,
                       help="edm: EDM denoiser (a CD teacher); cd: distillation from --teacher; ct: consistency "
                            "training; ict: improved CT; ect: consistency tuning of --teacher")
    train.add_argument("--data", required=True,
                       help="digits, digits:test, toy:mog8|moons|checkerboard, an image folder, an EDM .zip "
                            "or an ADM .npz")
    train.add_argument("--out", required=True, help="run folder (created; must be new unless --resume)")
    train.add_argument("--preset", default=None, help="network preset (default: from the data: tiny16, small32, mlp2d)")
    train.add_argument("--resolution", type=_positive_int, default=None, help="resize images to this size")
    train.add_argument("--unconditional", action="store_true", help="ignore class labels")
    train.add_argument("--xflip", action="store_true", help="random horizontal flips")
    train.add_argument("--teacher", default=None, help="EDM denoiser folder for cd and ect")
    train.add_argument("--init-from-teacher", dest="init_from_teacher", action=argparse.BooleanOptionalAction,
                       default=None, help="start the student from the teacher's weights (default: yes for ect)")
    train.add_argument("--init-from", dest="init_from", default=None,
                       help="start from this pipeline folder's network (fine-tuning; same shape and classes)")
    train.add_argument("--batch-size", type=_positive_int, default=defaults.batch_size, help="global batch size")
    train.add_argument("--steps", type=_positive_int, default=defaults.steps, help="optimizer steps")
    train.add_argument("--lr", type=float, default=defaults.lr, help="learning rate")
    train.add_argument("--optimizer", choices=OPTIMIZERS, default=defaults.optimizer)
    train.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    train.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps, help="linear LR warm-up")
    train.add_argument("--grad-clip", type=float, default=defaults.grad_clip, help="max gradient norm (0: off)")
    train.add_argument("--accumulation", type=_positive_int, default=defaults.accumulation,
                       help="micro-batches per step")
    train.add_argument("--ema-rates", type=_float_list, default=list(defaults.ema_rates),
                       help="EMA rates of the exported weights, e.g. 0.999,0.9999 (the first is exported)")
    train.add_argument("--precision", choices=PRECISIONS, default=defaults.precision, help="autocast dtype")
    train.add_argument("--dropout", type=float, default=None, help="override the preset's dropout")
    train.add_argument("--seed", type=int, default=defaults.seed)
    train.add_argument("--distance", choices=[*DISTANCES, "lpips"], default=None,
                       help="consistency distance (default: l2 for cd/ct, pseudo_huber for ict/ect); lpips needs "
                            "--lpips-vgg and --lpips-lin")
    train.add_argument("--lpips-vgg", default=None, help="VGG-16 weights file (torchvision layout) for lpips")
    train.add_argument("--lpips-lin", default=None, help="LPIPS linear-layer weights file (vgg.pth v0.1) for lpips")
    train.add_argument("--num-scales", type=_positive_int, default=defaults.num_scales, help="CD grid size N")
    train.add_argument("--target-mu", type=float, default=defaults.target_mu, help="CD target EMA rate")
    train.add_argument("--solver", choices=["heun", "euler"], default=defaults.solver, help="CD teacher step")
    train.add_argument("--s0", type=_positive_int, default=None, help="CT/iCT curriculum start (2 / 10)")
    train.add_argument("--s1", type=_positive_int, default=None, help="CT/iCT curriculum end (150 / 1280)")
    train.add_argument("--mu0", type=float, default=None, help="CT initial target EMA rate (0.9)")
    train.add_argument("--mu-form", choices=["openai", "paper"], default=defaults.mu_form,
                       help="CT mu(k): OpenAI's code (N-1) or the paper (N)")
    train.add_argument("--ect-stages", type=_positive_int, default=defaults.ect_stages, help="ECT stages")
    train.add_argument("--log-every", type=_positive_int, default=defaults.log_every)
    train.add_argument("--save-every", type=_positive_int, default=defaults.save_every, help="checkpoint interval")
    train.add_argument("--sample-every", type=_positive_int, default=defaults.sample_every, help="sample-grid interval")
    train.add_argument("--keep", type=_positive_int, default=defaults.keep, help="checkpoints kept")
    train.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    train.add_argument("--device", default=None, help="cpu, cuda (default: cuda when available)")
    train.add_argument("--tensorboard", action="store_true", help="also log to RUN_DIR/tensorboard")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(func=cmd_train)

    convert = sub.add_parser("convert", help="convert checkpoints from other formats",
                             description="Convert checkpoints into diffusers pipeline folders.")
    convert_sub = convert.add_subparsers(dest="source", metavar="SOURCE", required=True,
                                         parser_class=OneLineErrorParser)
    openai = convert_sub.add_parser(
        "openai",
        help="OpenAI consistency_models .pt checkpoint",
        description="Convert an OpenAI consistency_models checkpoint (cd_*, ct_*, edm_* .pt) into a pipeline "
                    "folder. The file is read without running pickle code.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    openai.add_argument("checkpoint", help="the .pt file, e.g. cd_imagenet64_l2.pt")
    openai.add_argument("out_dir", help="new folder to write (must not exist or be empty)")
    openai.add_argument("--preset", choices=sorted(PRESETS), default="imagenet64", help="network architecture")
    openai.add_argument("--scheduler", choices=list(SCHEDULERS), default="cd",
                        help="sampling grid: cd (40 points), ct-imagenet64 (201), ct-lsun256 (151)")
    openai.add_argument("--parametrization", choices=["consistency", "edm"], default=None,
                        help="edm for the edm_* teachers; default: from the file name")
    openai.set_defaults(func=cmd_convert_openai)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], None] = args.func
    keep_freed_memory()  # the long-running commands reuse big tensors step after step
    try:
        func(args)
    except InvalidInputError as exc:
        print(f"cm: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        from .training.loop import TrainingDiverged

        if not isinstance(exc, TrainingDiverged):
            raise
        print(f"cm: training stopped: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cm: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
