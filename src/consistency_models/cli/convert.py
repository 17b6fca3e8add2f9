"""`cm convert openai`: an OpenAI consistency_models `.pt` checkpoint → a diffusers pipeline folder."""

from __future__ import annotations

import argparse

from ..io.hub import refuse_embedded_folder
from ..io.openai import SCHEDULERS, convert_openai_checkpoint
from ..kinds import openai_kinds
from ..networks.presets import PRESETS
from .arguments import DefaultsHelpFormatter, OneLineErrorParser


def add_parser(sub: argparse._SubParsersAction) -> None:
    convert = sub.add_parser("convert", help="convert checkpoints from other formats",
                             description="Convert checkpoints into diffusers pipeline folders.")
    sources = convert.add_subparsers(dest="source", metavar="SOURCE", required=True, parser_class=OneLineErrorParser)
    p = sources.add_parser("openai", help="OpenAI consistency_models .pt checkpoint",
                           description="Convert an OpenAI consistency_models checkpoint (cd_*, ct_*, edm_* .pt) into a "
                                       "pipeline folder. The file is read without running pickle code.",
                           formatter_class=DefaultsHelpFormatter)
    p.add_argument("checkpoint", help="the .pt file, e.g. cd_imagenet64_l2.pt")
    p.add_argument("out_dir", help="new folder to write (must not exist or be empty)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="imagenet64", help="network architecture")
    p.add_argument("--scheduler", choices=list(SCHEDULERS), default="cd",
                   help="sampling grid: cd (40 points), ct-imagenet64 (201), ct-lsun256 (151)")
    p.add_argument("--parametrization", choices=openai_kinds(), default=None,
                   help="edm for the edm_* teachers; default: from the file name")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    refuse_embedded_folder("out_dir", args.out_dir)
    parts = convert_openai_checkpoint(args.checkpoint, args.out_dir, args.preset, args.scheduler, args.parametrization)
    how = "" if args.parametrization else (f"; {parts.parametrization} chosen from the file name, --parametrization "
                                           "to choose (edm for a teacher)")
    print(f"wrote {args.out_dir} ({parts.parametrization}, {parts.scheduler_config.num_train_timesteps}-point grid"
          f"{how})")
