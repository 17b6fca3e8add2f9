"""Argument types and option groups shared by the subcommands, and the one-line error format."""

from __future__ import annotations

import argparse

import torch

from ..distributed import check_device, default_device
from ..errors import InvalidInputError
from ..io.hub import EMBEDDED, embedded_folder

from ..schedule import NoiseLevels

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse with the CLI's error format: one line `cm: error: ...`, exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"cm: error: {message} (see '{self.prog} --help')\n")


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Help that shows an option's default when it has a meaningful one: not for required options
    or options without a default, lists as comma lists, and never twice."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (action.required or default is None or default is False or default is argparse.SUPPRESS
                or "default" in text or not action.option_strings):
            return text
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        return f"{text} (default: {shown})".replace("%", "%%")


def plural(count: int, noun: str) -> str:
    """'1 image', '16 images'."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None


def number_list(text: str) -> list[int | float]:
    """Comma-separated numbers, integers kept as int (grid indices) and others as float (TrigFlow times)."""
    try:
        return [int(v) if v.strip().lstrip("+-").isdigit() else float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None


def float_list(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


MAX_THREADS = 1024  # far above any CPU's cores; torch's own setting is a C int


def threads(text: str) -> int:
    """--threads: 1 to MAX_THREADS (a huge count would start that many OpenMP threads, or overflow)."""
    value = positive_int(text)
    if value > MAX_THREADS:
        raise argparse.ArgumentTypeError(f"{text!r} is more than {MAX_THREADS} threads")
    return value


MAX_SEED = 2**32 - 1


def seed(text: str) -> int:
    """A seed in [0, 2^32 − 1] (torch's generators and NumPy's SeedSequence both take these)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"{text!r} is not a seed from 0 to {MAX_SEED}")
    return value


def device(name: str | None) -> torch.device:
    """`--device` checked against this machine (the one-line error names what is allowed); not
    given: cuda where there is a GPU, else cpu."""
    return check_device(default_device() if name is None else name)


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda where this machine has a "
                                                      "GPU, else cpu)")


def add_model(parser: argparse.ArgumentParser, default: str) -> None:
    """--model, read back by `chosen_model`."""
    parser.add_argument("--model", default=None, help=f"embedded model name ({', '.join(EMBEDDED)}), pipeline "
                        "folder (diffusers format) or Hugging Face Hub id such as openai/diffusers-cd_imagenet64_l2 "
                        f"(default: the embedded {default} model)")
    parser.set_defaults(default_model=default)


def chosen_model(args: argparse.Namespace) -> str:
    """--model as given, else the embedded default model's own folder: a folder of that name in the
    working folder does not stand in for a model the user did not name."""
    if args.model is not None and not args.model.strip():   # Path('') is the working folder
        raise InvalidInputError(f"model: {args.model!r} is empty; give a pipeline folder, an embedded model's name "
                                f"({', '.join(EMBEDDED)}) or a Hub id like owner/name")
    return str(embedded_folder(args.default_model)) if args.model is None else args.model


def add_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="show progress bars (--no-progress: none, e.g. in a batch job's log)")


def add_variant(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variant", default=None,
                        help="read the model's weights of this variant (unet/diffusion_pytorch_model.VARIANT."
                             "safetensors, e.g. fp16), as diffusers' from_pretrained(variant=...)")


def add_noise_levels(parser: argparse.ArgumentParser, steps_help: str) -> None:
    """--steps | --timesteps | --sigmas, read back by `noise_levels`."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--steps", type=positive_int, default=None, help=steps_help)
    group.add_argument("--timesteps", type=number_list, default=None,
                       help="descending indices into the model's N-point grid (index 0 = sigma_max), e.g. 9,0 on "
                            "the digits consistency model's 18 points or 22,0 on OpenAI's 40; for an sCM (TrigFlow "
                            "consistency) model descending times t in (0, pi/2), e.g. 1.56454,1.1; for a MeanFlow "
                            "model descending flow times t in (0, 1], 1 = pure noise (the end, 0, is implied), e.g. 1,0.5")
    group.add_argument("--sigmas", type=float_list, default=None,
                       help="descending noise levels to evaluate at, e.g. 80,1.38 (sigma_min is appended)")


def noise_levels(args: argparse.Namespace) -> NoiseLevels:
    return NoiseLevels.of(args.steps, args.timesteps, args.sigmas)
