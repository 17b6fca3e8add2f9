"""`cm eval`: FID, IS, KID and precision/recall of a sample set against a reference; or a set's statistics."""

from __future__ import annotations

import argparse

from ..errors import InvalidInputError
from ..io.overwrite import check_output_file, refuse_existing, refuse_input_as_output
from ..metrics.scores import (METRICS, compute_statistics, evaluate, format_table, save_statistics,
                              statistics_file, write_results_json)
from .arguments import DefaultsHelpFormatter, add_progress, positive_int, seed
from .features import add_feature_arguments, choose_features, extractor


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="FID, IS, KID, precision/recall of samples against a reference",
                       description="Score a set of samples against a reference set. A set is a folder of images, an "
                                   "ADM .npz (arr_0: uint8 NHWC), a statistics .npz (cm eval --save-stats, or "
                                   "pytorch-fid/OpenAI reference statistics) or digits:test.",
                       formatter_class=DefaultsHelpFormatter)
    p.add_argument("--samples", required=True, help="the generated set")
    p.add_argument("--ref", default=None, help="the reference set")
    add_feature_arguments(p)
    p.add_argument("--metrics", type=lambda t: [m for m in t.split(",") if m], default=list(METRICS),
                   help="comma-separated: " + ",".join(METRICS))
    p.add_argument("--kid-subsets", type=positive_int, default=100, help="random subsets KID averages over")
    p.add_argument("--kid-subset-size", type=positive_int, default=1000, help="images per KID subset")
    p.add_argument("--seed", type=seed, default=0, help="seed of KID's subsets")
    p.add_argument("--save-stats", default=None, help="also write the statistics of --samples to this .npz")
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    p.add_argument("--overwrite", action="store_true", help="replace existing --save-stats/--json files")
    add_progress(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    if args.ref is None and args.save_stats is None:
        raise InvalidInputError("ref: give the reference set (--ref), or --save-stats to only save statistics")
    inputs = {"samples": args.samples, "ref": args.ref}
    refuse_input_as_output(args.save_stats, "save_stats", inputs)
    refuse_input_as_output(args.json, "json", inputs)
    check_output_file(args.save_stats, "save_stats")
    check_output_file(args.json, "json")
    if args.save_stats is not None and not str(args.save_stats).lower().endswith(".npz"):
        raise InvalidInputError(f"save_stats: {args.save_stats!r} must end in .npz for a statistics file")
    refuse_existing(args.save_stats, args.overwrite, "save_stats")
    refuse_existing(args.json, args.overwrite, "json")
    choose_features(args, samples=args.samples, ref=args.ref)
    features = extractor(args, build=not only_statistics(args))
    samples = args.samples
    if args.save_stats is not None:
        samples = compute_statistics(args.samples, features, progress=args.progress, argument="samples")
        save_statistics(samples, args.save_stats, replace=args.overwrite, argument="save-stats")
        print(f"wrote the {args.features} statistics of {samples.count} images to {args.save_stats}")
    if args.ref is None:
        return
    results = evaluate(samples, args.ref, features, metrics=args.metrics, kid_subsets=args.kid_subsets,
                       kid_subset_size=args.kid_subset_size, seed=args.seed, progress=args.progress)
    results = {"samples": str(args.samples), "reference": str(args.ref), "features": args.features, **results}
    print(format_table(results))
    if args.json is not None:
        write_results_json(results, args.json, replace=args.overwrite, argument="json")
        print(f"wrote {args.json}")


def only_statistics(args: argparse.Namespace) -> bool:
    """Both sets are statistics files (μ, Σ and no images): FID needs no feature network then."""
    return args.save_stats is None and args.ref is not None and statistics_file(args.samples) \
        and statistics_file(args.ref)
