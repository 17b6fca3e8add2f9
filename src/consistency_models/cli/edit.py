"""`cm edit KIND`: zero-shot editing of one image (Algorithm 4); `interpolate` writes a strip of frames.

Each edit is declared once in `EDITS`: its help, its own options, whether it takes an input
image and noise levels, and the call of `consistency_models.editing` it makes.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .. import editing
from ..errors import InvalidInputError
from ..io.hub import COLOR_MODEL, DEFAULT_MODEL, is_embedded, shadowing_note
from ..io.images import make_grid, output_kind, read_image, read_mask, save_png, to_uint8
from ..io.overwrite import check_output_file, names_a_folder, refuse_existing, refuse_input_as_output
from ..pipeline import ConsistencyModelPipeline
from .arguments import (
    DefaultsHelpFormatter,
    OneLineErrorParser,
    plural,
    add_device,
    add_model,
    add_noise_levels,
    add_progress,
    add_variant,
    chosen_model,
    device,
    noise_levels,
    positive_int,
    seed,
)

Reader = Callable[..., torch.Tensor]  # read(path, channels=None, size=None, argument="image", **kw)


@dataclass(frozen=True)
class Edit:
    help: str
    run: Callable[[ConsistencyModelPipeline, argparse.Namespace, Reader, dict[str, Any]], torch.Tensor]
    options: list[tuple[tuple[str, ...], dict[str, Any]]] = field(default_factory=list)  # add_argument calls
    image: bool = True           # takes --image (and --resize)
    levels: bool = True          # takes --steps/--timesteps/--sigmas
    model: str = DEFAULT_MODEL
    image_help: str = "input PNG/JPEG at the model's size (see --resize)"
    steps_help: str = ("levels as cm sample --steps takes them (a consistency model: evenly spaced points of its own "
                       "grid, 18 for digits); default: every level of a 40-point editing grid (39 evaluations)")


def _inpaint(pipe, args, read, common):
    mask = read_mask(args.mask, pipe.sample_shape[1], args.resize)
    return editing.inpaint(pipe, read(args.image), mask, **common)


def _superres(pipe, args, read, common):
    size = pipe.sample_shape[1]
    editing.check_factor(args.factor, size)
    low = read(args.image, size=size // args.factor, argument="image (the low-resolution input)")
    return editing.super_resolve(pipe, low, args.factor, **common)


def _stroke(pipe, args, read, common):
    extra = {} if args.sigma is None else {"sigma_start": args.sigma}
    return editing.stroke_guided(pipe, read(args.image), **extra, **common)


EDITS: dict[str, Edit] = {
    "inpaint": Edit("regenerate the masked pixels (mask: white = regenerate)", _inpaint,
                    [(("--mask",), {"required": True, "help": "mask PNG: white = regenerate, black = keep (any bright "
                                                              "colour counts as white; transparent pixels keep)"})]),
    "colorize": Edit("color a grayscale image (needs an RGB model; default: the embedded digits-color)",
                     lambda pipe, args, read, common: editing.colorize(pipe, read(args.image, channels=1), **common),
                     model=COLOR_MODEL),
    "superres": Edit("upsample a low-resolution image by --factor", _superres,
                     [(("--factor",), {"type": positive_int, "default": 4,
                                       "help": "upsampling factor: 2 or more, dividing the model's size"})],
                     image_help="low-resolution input PNG/JPEG: the model's size divided by --factor (see --resize)"),
    "stroke": Edit("turn a coarse stroke painting into an image (SDEdit)", _stroke,
                   [(("--sigma",), {"type": float, "default": None,
                                    "help": "starting noise level (default 1; higher gives the model more freedom); "
                                            "not with --timesteps/--sigmas, whose first level is the start"})],
                   steps_help="that many levels of the 40-point editing grid, evenly spaced from --sigma down "
                              "(default: every level at or below --sigma)"),
    "denoise": Edit("remove Gaussian noise of std --sigma (in [-1, 1] units) in one step",
                    lambda pipe, args, read, common: editing.denoise(pipe, read(args.image), args.sigma, **common),
                    [(("--sigma",), {"type": float, "required": True,
                                     "help": "noise std of the input, in [-1, 1] units"})], levels=False),
    "interpolate": Edit("samples along a spherical path between two noise draws (one step for a consistency "
                        "model; a diffusion model's own sampler, e.g. 18 Heun steps)",
                        lambda pipe, args, read, common: editing.interpolate(pipe, num=args.num, **common),
                        [(("--frames", "--num"), {"dest": "num", "type": positive_int, "default": 8,
                                                  "help": "frames, both ends included (--num: its old name)"})],
                        image=False, levels=False),
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("edit", help="zero-shot editing: " + ", ".join(EDITS),
                       description="Zero-shot image editing with a consistency model (Algorithm 4).")
    kinds = p.add_subparsers(dest="edit", metavar="EDIT", required=True, parser_class=OneLineErrorParser)
    for name, spec in EDITS.items():
        e = kinds.add_parser(name, help=spec.help, description=spec.help[0].upper() + spec.help[1:] + ".",
                             formatter_class=DefaultsHelpFormatter)
        add_model(e, spec.model)
        add_variant(e)
        if spec.image:
            e.add_argument("--image", required=True, help=spec.image_help)
            e.add_argument("--resize", action="store_true", help="center-crop and resize inputs of another size")
        e.add_argument("--out", required=True, help="output PNG")
        e.add_argument("--overwrite", action="store_true", help="replace an existing --out (else it is refused)")
        for flags, options in spec.options:
            e.add_argument(*flags, **options)
        if spec.levels:
            add_noise_levels(e, spec.steps_help)
        e.add_argument("--class-label", "--class-labels", dest="class_label", type=int, default=None,
                       help="class of a conditional model (random if omitted)")
        e.add_argument("--seed", type=seed, default=0, help="seed of the noise")
        add_device(e)
        add_progress(e)
        e.set_defaults(func=run, resize=False)


def run(args: argparse.Namespace) -> None:
    args.model = chosen_model(args)
    if not str(args.out).strip():
        raise InvalidInputError("out: '' is empty; give the PNG to write, e.g. edited.png")
    if not str(args.out).lower().endswith(".png") or names_a_folder(args.out):
        raise InvalidInputError(f"out: {args.out!r} must be a .png file (cm edit writes one image or one strip)")
    check_output_file(args.out, "out")  # not a folder: refused before the edit, not after it
    output_kind(args.out)  # a name, and a folder that exists
    for name in ("image", "mask"):
        if getattr(args, name, None) is not None and not str(getattr(args, name)).strip():
            raise InvalidInputError(f"{name}: '' is empty; give a PNG/JPEG file")
        if getattr(args, name, None) is not None and Path(getattr(args, name)).is_dir():  # before "out lies in it"
            raise InvalidInputError(f"{name}: {getattr(args, name)} is a folder, not an image file")
    refuse_existing(args.out, args.overwrite)
    model = None if is_embedded(args.model) else args.model  # an embedded model lies in the package: no output is it
    refuse_input_as_output(args.out, "out", {"model": model, "image": getattr(args, "image", None),
                                             "mask": getattr(args, "mask", None)})
    spec = EDITS[args.edit]
    pipe = ConsistencyModelPipeline.from_pretrained(args.model, device=device(args.device), variant=args.variant)
    if not args.progress:
        pipe.set_progress_bar_config(disable=True)
    if note := shadowing_note(args.model):
        print(note, file=sys.stderr)
    if not pipe.is_image_model:
        raise InvalidInputError(f"model: {args.model} makes points, not images; editing needs an image model")
    channels, size, _ = pipe.sample_shape

    def read(path: str, channels: int = channels, size: int = size, argument: str = "image", **kw) -> torch.Tensor:
        return read_image(path, channels, size, args.resize, argument, **kw)

    common: dict[str, Any] = {"generator": torch.Generator().manual_seed(args.seed), "class_labels": args.class_label}
    if spec.levels:
        common["levels"] = noise_levels(args)
    result = spec.run(pipe, args, read, common)
    images = to_uint8(result.cpu().permute(0, 2, 3, 1).numpy())
    save_png(make_grid(images, nrow=len(images)) if len(images) > 1 else images[0], args.out, replace=args.overwrite)
    print(f"wrote {args.out} ({args.edit}, {plural(len(images), 'image')})")
