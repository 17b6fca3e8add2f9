"""`cm train`: its options are generated from the settings every run has (`RunSettings`' fields) and
from each registered method's own (`option_fields`); help, choices and defaults live beside each
field."""

from __future__ import annotations

import argparse
import types
import typing
from dataclasses import MISSING, Field, fields

from ..distributed import teardown_distributed
from ..errors import InvalidInputError
from ..training import Trainer, TrainConfig
from ..training.config import option_defaults_text
from ..training.methods import METHODS, method_options
from ..training.recipes import RECIPES
from .arguments import float_list


def _base_type(hint: object) -> object:
    """int for `int | None`, and so on; tuple[float, ...] stays a tuple."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
    return hint


def _default_text(f: Field) -> str:
    if f.name == "init_from_teacher":
        starting = [m.name for m in METHODS.values() if m.init_from_teacher is True]
        chosen = [f"{m.name} {m.init_from_teacher}" for m in METHODS.values() if callable(m.init_from_teacher)]
        return f" (default: yes for {', '.join(starting)} when --teacher is given{''.join('; ' + c for c in chosen)})"
    if f.name in method_options():
        text = option_defaults_text(f.name)
        return f" (default: {text})" if text else ""
    if f.default is not MISSING and f.default is not None and f.default is not False:
        return f" (default: {f.default})"
    if f.default_factory is not MISSING:
        value = f.default_factory()
        return f" (default: {','.join(map(str, value))})" if value else ""
    return ""


def _add_option(p: argparse._ActionsContainer, f: Field, hint: object) -> None:
    meta = f.metadata
    flag = "--" + f.name.replace("_", "-")
    choices = meta["choices"]() if callable(meta["choices"]) else meta["choices"]
    options: dict = {"dest": f.name, "default": argparse.SUPPRESS, "help": meta["help"] + _default_text(f)}
    required = (f.default is MISSING and f.default_factory is MISSING and f.name not in ("method", "data")
                and f.name not in method_options())   # --method: or --recipe; both and --data: or --resume
    base = _base_type(hint)
    if base is bool:
        p.add_argument(flag, action=argparse.BooleanOptionalAction, **options)
    else:
        kind = float_list if typing.get_origin(base) is tuple else base
        p.add_argument(flag, type=kind, choices=choices, required=required,
                       metavar=None if choices else f.name.upper(), **options)
    for alias, value in meta["aliases"].items():
        p.add_argument(alias, dest=f.name, action="store_const", const=value, default=argparse.SUPPRESS,
                       help=f"same as {flag}={value}" if base is not bool else f"same as --no-{f.name.replace('_', '-')}")


EXAMPLES = """examples:
  cm train --method edm --data digits --out teacher --steps 800            an EDM teacher on the digits
  cm train --method cd --teacher teacher --data digits --out cd            distill it (consistency distillation)
  cm train --method ict --data toy:mog8 --out toy --steps 2000 --s1 160    consistency training, no teacher
  cm train --recipe toy-ict --data toy:mog8 --out toy                      a published run's settings
  cm train --out toy --resume                                              continue a stopped run (Ctrl-C saves it)
  torchrun --nproc_per_node 2 -m consistency_models train ...              several processes (global --batch-size)"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    methods = "; ".join(f"{m.name}: {m.summary}" for m in METHODS.values())
    p = sub.add_parser("train", help=f"train a model ({', '.join(METHODS)})",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
                       description="Train a diffusion teacher or a consistency model. The run folder is a pipeline "
                                   "folder holding the EMA weights, checkpoints, metrics.jsonl and sample grids. Run "
                                   "it under torchrun for several processes; --batch-size is the global batch. "
                                   f"Methods: {methods}.")
    p.add_argument("--recipe", choices=list(RECIPES), default=argparse.SUPPRESS, metavar="NAME",
                   help="every setting of a published run (see docs/recipes.md); options given override it, "
                        "--method excepted: "
                        + ", ".join(RECIPES))
    hints = typing.get_type_hints(TrainConfig)
    common = p.add_argument_group("settings of every run")
    for f in fields(TrainConfig):
        if f.metadata.get("cli", True):
            _add_option(common, f, hints[f.name])
    _add_method_groups(p)
    p.set_defaults(func=run)


def _add_method_groups(p: argparse.ArgumentParser) -> None:
    """One group per registered method with the options it declares (an option several methods
    read is listed under the first, and named in the others' description)."""
    added: set[str] = set()
    for entry in METHODS.values():
        hints = typing.get_type_hints(entry.options)
        own = [f for f in fields(entry.options) if f.name not in added]
        shared = [f.name for f in fields(entry.options) if f.name in added]
        if not own and not shared:
            continue
        also = f"also reads {', '.join('--' + n.replace('_', '-') for n in shared)} (above)" if shared else None
        group = p.add_argument_group(f"--method {entry.name}: {entry.summary}", also)
        for f in own:
            _add_option(group, f, hints[f.name])
            added.add(f.name)


def run(args: argparse.Namespace) -> None:
    options = {k: v for k, v in vars(args).items() if k not in ("func", "command", "recipe", "threads")}
    recipe = getattr(args, "recipe", None)
    cfg = None
    if recipe is None and options.get("resume"):  # the stopped run's own settings, those given over them
        cfg = TrainConfig.of_stopped_run(**options)
    nothing = f" ({options['out']} holds no run to resume)" if options.get("resume") and recipe is None else ""
    if cfg is None and recipe is None and "method" not in options:
        raise InvalidInputError(f"method: give --method ({', '.join(METHODS)}) or --recipe{nothing}")
    if cfg is None and "data" not in options:
        raise InvalidInputError(f"data: give --data (digits, toy:NAME, a folder of images, an EDM .zip or an .npz)"
                                f"{nothing}")
    trainer = None
    try:
        if cfg is None:
            cfg = TrainConfig.from_recipe(recipe, **options) if recipe else TrainConfig.from_settings(**options)
        trainer = Trainer(cfg)
        out = trainer.run()
        main, cfg = trainer.ctx.is_main, trainer.cfg
    finally:  # leave torchrun's process group (NCCL warns at exit otherwise), the trainer let go first
        trainer = None
        teardown_distributed()
    if main:
        print(f"trained {cfg.method} for {cfg.steps} steps; model in {out} (cm sample --model {out})")
