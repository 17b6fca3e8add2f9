"""`cm tune-timesteps`: ternary search of the two-step middle grid index by FID against reference statistics."""

from __future__ import annotations

import argparse
import sys

import torch

from ..errors import InvalidInputError
from ..evaluation.generation import MAX_IMAGES
from ..evaluation.timestep_search import search_range, tune_timesteps
from ..io.hub import DEFAULT_MODEL, shadowing_note
from ..metrics.scores import compute_statistics, few_images_note
from ..pipeline import ConsistencyModelPipeline
from .arguments import (DefaultsHelpFormatter, add_model, add_progress, add_variant, chosen_model, device,
                        positive_int, seed)
from .features import add_feature_arguments, choose_features, extractor


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune-timesteps", help="search the middle timestep of two-step sampling by FID",
                       description="OpenAI's ternary search of t in --timesteps t,0, scored by the FID (or digits "
                                   "FD) of --num samples against --ref.",
                       formatter_class=DefaultsHelpFormatter)
    add_model(p, DEFAULT_MODEL)
    add_variant(p)
    p.add_argument("--ref", required=True, help="reference set or statistics (see cm eval)")
    p.add_argument("--num", type=positive_int, default=5000, help="samples per candidate")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per network call")
    p.add_argument("--seed", type=seed, default=0, help="seed of the (shared) per-image noise")
    p.add_argument("--class-label", "--class-labels", dest="class_label", type=int, default=None,
                   help="one class for all samples (random if omitted)")
    p.add_argument("--lo", type=positive_int, default=1, help="lowest grid index tried")
    p.add_argument("--hi", type=positive_int, default=None, help="highest grid index tried (default N-2)")
    add_feature_arguments(p)
    add_progress(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    args.model = chosen_model(args)
    pipe = ConsistencyModelPipeline.from_pretrained(args.model, device=device(args.device), variant=args.variant)
    if note := shadowing_note(args.model):
        print(note, file=sys.stderr)
    search_range(pipe, args.lo, args.hi)  # refuse a model without a grid, a bad range or label before any work
    if args.class_label is not None:
        pipe.prepare_class_labels(1, [args.class_label], None)
    if not 2 <= args.num <= MAX_IMAGES:
        raise InvalidInputError(f"num: {args.num} must be a number of images from 2 to {MAX_IMAGES}")
    choose_features(args, ref=args.ref)
    features = extractor(args)
    features.check_size(*pipe.sample_shape[1:])  # before the reference's features are computed
    if note := few_images_note(args.num, args.features):  # the search compares noise then
        print(f"num: {note} (each candidate's score is of --num samples)", file=sys.stderr)
    reference = compute_statistics(args.ref, features, progress=args.progress, argument="ref")
    result = tune_timesteps(pipe, features, (torch.as_tensor(reference.mu), torch.as_tensor(reference.sigma)),
                            num=args.num, batch_size=args.batch_size, seed=args.seed,
                            class_labels=args.class_label, lo=args.lo, hi=args.hi, progress=args.progress)
    for index, score in result.scores.items():
        print(f"  t = {index:4d}  sigma = {result.sigmas[index]:9.4f}  FD = {score:.5g}")
    print(f"best: --timesteps {result.index},0  (sigma {result.sigma:.4g}), "
          f"{'FID' if args.features == 'inception' else 'FD'} {result.score:.5g} on {args.num} samples")
