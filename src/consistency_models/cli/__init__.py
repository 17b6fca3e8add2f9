"""The `cm` command line: one module per subcommand, each parsing its options and calling the
public API, nothing more.

Bad input prints one line `cm: error: ...` and exits with code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from typing import Callable, Sequence

import torch
from PIL import Image

from .. import __version__
from ..errors import InvalidInputError
from ..training import TrainingDiverged
from . import convert, edit, evaluate, new, sample, train, tune_timesteps
from .allocator import keep_freed_memory
from .arguments import OneLineErrorParser, threads
from .out_of_memory import is_out_of_memory

SUBCOMMANDS = (sample, edit, evaluate, tune_timesteps, new, train, convert)
EXAMPLES = """examples:
  cm sample --model digits --out grid.png                 one-step samples of the embedded digits model
  cm sample --model digits --steps 2 --num 1000 --out samples.npz
  cm edit inpaint --image digit.png --mask mask.png --out filled.png       (16×16 digit.png, white = regenerate)
  cm train --method ict --data toy:mog8 --out toy --steps 2000
  cm COMMAND --help                                       every option of one command"""


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="cm",
        description="Consistency models: one-step and few-step image generation (Song et al. 2023).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXAMPLES,
    )
    parser.add_argument("--version", action="version", version=f"cm (consistency-models) {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=OneLineErrorParser)
    for command in SUBCOMMANDS:
        command.add_parser(sub)
    for leaf in leaf_parsers(parser):
        leaf.add_argument("--threads", type=threads, default=None,
                          help="CPU threads torch uses (default: torch's choice, one per core)")
    return parser


def leaf_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every parser that takes options of its own (`cm sample`, `cm edit inpaint`, ...)."""
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subparsers:
        return [parser]
    return [leaf for action in subparsers for child in action.choices.values() for leaf in leaf_parsers(child)]


def chosen_parser(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[argparse.ArgumentParser, list[str]]:
    """The (sub)subcommand's parser that the words of `argv` name (`cm edit inpaint`'s), and the words
    after its name."""
    subparsers = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    for i, word in enumerate(argv):
        if word == "--" or subparsers is None:
            break
        if word in subparsers.choices:
            return chosen_parser(subparsers.choices[word], argv[i + 1:])
    return parser, argv


def misspelt_option(parser: argparse.ArgumentParser, argv: list[str]) -> str | None:
    """The first `--option` in `argv` that `parser` does not take, not even abbreviated, said with
    the option it most resembles: argparse would report a missing required option first
    (`--outt x.png` as "--out is required")."""
    known = [name for action in parser._actions for name in action.option_strings if name.startswith("--")]
    for word in argv:
        if word == "--":
            break
        name = word.split("=", 1)[0]
        if name.startswith("--") and not any(option.startswith(name) for option in known):
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)  # --frob is not --rho (0.73)
            return name + (f" (did you mean {close[0]}?)" if close else "")
    return None


def _subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


def misplaced_option(parser: argparse.ArgumentParser, argv: list[str]) -> str | None:
    """An option written before the (sub)command it belongs to (`cm --threads 1 sample`, `cm edit
    --image x.png inpaint`, or no command at all), said with where it goes; argparse would call its
    value an invalid command. Only options some command below takes count (a typo is argparse's)."""
    subparsers = _subcommands(parser)
    if subparsers is None:
        return None
    own = {name for action in parser._actions for name in action.option_strings}
    below = {name for leaf in leaf_parsers(parser) for action in leaf._actions for name in action.option_strings}
    misplaced = None
    for i, word in enumerate(argv):
        if word == "--":
            return None
        if word in subparsers.choices:
            if misplaced is None:
                return misplaced_option(subparsers.choices[word], argv[i + 1:])
            leaf, _ = chosen_parser(subparsers.choices[word], argv[i + 1:])
            return f"{misplaced} goes after the command it belongs to: {leaf.prog} {misplaced} ..."
        name = word.split("=", 1)[0]
        if misplaced is None and word.startswith("-") and name not in own and name in below:
            misplaced = name
    if misplaced is None or not argv[0].startswith("-"):  # `cm edit inpait --image x`: the command is misspelt
        return None
    return (f"{misplaced} goes after the command it belongs to: {parser.prog} {subparsers.metavar} {misplaced} ... "
            f"({subparsers.metavar}: {', '.join(subparsers.choices)})")


def parse(argv: Sequence[str] | None) -> tuple[argparse.Namespace, argparse.ArgumentParser]:
    """Parse `argv`, and the (sub)subcommand's parser; an unknown option is reported by the
    subcommand it was given to, whose help lists what it takes. A misspelt (sub)command is left
    to argparse ("invalid choice"), not blamed on the options after it."""
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    if misplaced := misplaced_option(parser, words):
        parser.error(misplaced)
    leaf, rest = chosen_parser(parser, words)
    if leaf is not parser and _subcommands(leaf) is None and (misspelt := misspelt_option(leaf, rest)):
        leaf.error(f"unrecognized arguments: {misspelt}")
    args, unknown = parser.parse_known_args(words)
    if unknown:
        leaf.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args, leaf


# Library parameters that a command holds under another name: an error names the option the user
# typed ("steps: 40 ..." for --steps, not "num_inference_steps: ...", "class-label: 12" for cm edit's
# --class-label). Any other parameter is named by the option that stores it ("class-labels: ...").
CLI_DESTS = {"num_inference_steps": "steps", "sigma_start": "sigma", "class_labels": "class_label",
             "reference": "ref"}


def option_spelling(parser: argparse.ArgumentParser, dest: str, words: Sequence[str] = ()) -> str | None:
    """How the user wrote the option stored in `dest`, without its dashes: the spelling among
    `words` (`frames` for cm edit interpolate's --frames), else the one named like `dest`
    (`class-labels`); None when `parser` has no such option (a positional keeps its name)."""
    for action in parser._actions:
        if action.dest == dest and action.option_strings:
            names = [name[2:] for name in action.option_strings if name.startswith("--")]
            typed = [name for name in names if any(w == f"--{name}" or w.startswith(f"--{name}=") for w in words)]
            return next(iter(typed), next((name for name in names if name.replace("-", "_") == dest),
                                          names[0] if names else None))
    return None


def cli_message(message: str, parser: argparse.ArgumentParser, words: Sequence[str] = ()) -> str:
    """`message` with a library parameter's name replaced by the command's option for it, as typed."""
    name, sep, rest = message.partition(": ")
    if not sep:
        return message
    spelled = (name in CLI_DESTS and option_spelling(parser, CLI_DESTS[name], words)) or \
        option_spelling(parser, name, words)
    return f"{spelled}: {rest}" if spelled else message


def _say(line: str) -> None:
    """One line to stderr in one write: under torchrun every rank's line stays whole."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def main(argv: Sequence[str] | None = None) -> int:
    args, parser = parse(argv)
    func: Callable[[argparse.Namespace], None] = args.func
    keep_freed_memory()  # the long-running commands reuse big tensors step after step
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        func(args)
    except InvalidInputError as exc:
        _say(f"cm: error: {cli_message(str(exc), parser, sys.argv[1:] if argv is None else argv)}")
        return 2
    except TrainingDiverged as exc:
        _say(f"cm: training stopped: {exc}")
        return 1
    except KeyboardInterrupt as exc:  # Ctrl-C; cm train's TrainingInterrupted says what it saved
        _say(f"cm: interrupted: {exc}" if str(exc) else "cm: interrupted")
        return getattr(exc, "exit_code", 130)
    except Image.DecompressionBombError as exc:  # a crafted or huge image file
        _say(f"cm: error: image: {str(exc).splitlines()[0]}")
        return 2
    except (MemoryError, RuntimeError) as exc:  # torch.OutOfMemoryError is a RuntimeError
        if not is_out_of_memory(exc):
            raise
        _say("cm: error: out of memory; use a smaller --batch-size (or --num)")
        return 1
    except OSError as exc:  # a full disk, a folder that cannot be written, ...
        where = f"{exc.filename}: " if exc.filename else ""
        _say(f"cm: error: {where}{exc.strerror or exc}")
        return 1
    return 0


__all__ = ["build_parser", "main"]
