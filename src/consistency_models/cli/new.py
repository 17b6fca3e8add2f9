"""`cm new`: an untrained model folder of a preset (`pipeline.create_model_folder`)."""

from __future__ import annotations

import argparse
import sys

from ..errors import InvalidInputError, about
from ..io.hub import refuse_embedded_folder, shadowing_note
from ..networks.presets import PRESETS
from ..pipeline import create_model_folder
from .arguments import DefaultsHelpFormatter, positive_int, seed


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("new", help="create an untrained model folder from a preset",
                       description="Write a pipeline folder holding a randomly initialised network of a preset.",
                       formatter_class=DefaultsHelpFormatter)
    p.add_argument("out_dir", help="folder to write")
    p.add_argument("--preset", choices=sorted(PRESETS), default="test",
                   help="UNet architecture (image models; cm train makes point models): " + ", ".join(
                       f"{name} {c.image_size}px×{c.in_channels}" for name, c in sorted(PRESETS.items()))
                   + "; imagenet64 writes 1.2 GB, lsun256 2.1 GB of float32 weights")
    p.add_argument("--unconditional", action="store_true", help="drop the class embedding")
    p.add_argument("--grid", type=positive_int, default=40, help="points N of the sampling grid")
    p.add_argument("--seed", type=seed, default=0, help="seed of the initial weights")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    refuse_embedded_folder("out_dir", args.out_dir)
    try:
        create_model_folder(args.out_dir, args.preset, unconditional=args.unconditional, num_train_timesteps=args.grid,
                            seed=args.seed)
    except InvalidInputError as exc:  # the grid's size is the library's num_train_timesteps
        raise about("grid", exc, "num_train_timesteps") if str(exc).startswith("num_train_timesteps:") else exc from None
    print(f"wrote an untrained '{args.preset}' model to {args.out_dir}")
    if note := shadowing_note(args.out_dir):
        print(note, file=sys.stderr)
