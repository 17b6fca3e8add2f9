"""The `cm` command line: one module per subcommand, each parsing its options and calling the
public API, nothing more.

Bad input prints one line `cm: error: ...` and exits with code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

import torch
from PIL import Image

from ..errors import InvalidInputError
from ..training import TrainingDiverged
from . import convert, edit, evaluate, new, sample, train, tune_timesteps
from .allocator import keep_freed_memory
from .arguments import OneLineErrorParser

SUBCOMMANDS = (sample, edit, evaluate, tune_timesteps, new, train, convert)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="cm",
        description="Consistency models: one-step and few-step image generation (Song et al. 2023).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=OneLineErrorParser)
    for command in SUBCOMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], None] = args.func
    keep_freed_memory()  # the long-running commands reuse big tensors step after step
    try:
        func(args)
    except InvalidInputError as exc:
        print(f"cm: error: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"cm: training stopped: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cm: interrupted", file=sys.stderr)
        return 130
    except Image.DecompressionBombError as exc:  # a crafted or huge image file
        print(f"cm: error: image: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    except (MemoryError, torch.OutOfMemoryError):
        print("cm: error: out of memory; use a smaller --batch-size (or --num)", file=sys.stderr)
        return 1
    except OSError as exc:  # a full disk, a folder that cannot be written, ...
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"cm: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


__all__ = ["build_parser", "main"]
