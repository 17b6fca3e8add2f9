"""The feature-network options shared by `cm eval` and `cm tune-timesteps`."""

from __future__ import annotations

import argparse

from ..errors import InvalidInputError
from ..metrics.features import FeatureExtractor, feature_extractor
from ..metrics.scores import recorded_extractor
from .arguments import add_device, device


def add_feature_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--features", choices=["inception", "digits"], default=None,
                   help="inception: the standard FID Inception-v3 (its weights file is needed offline); digits: the "
                        "embedded digits classifier, for 16×16 digit models (no download). Default: the one a "
                        "statistics file given as a set records (cm eval --save-stats), else inception")
    p.add_argument("--inception-weights", default=None,
                   help="pt_inception-2015-12-05-6726825d.pth (else $CM_INCEPTION_WEIGHTS or the cache folder)")
    add_device(p)


def choose_features(args: argparse.Namespace, **sets: str | None) -> str:
    """`--features` as given, else the extractor the statistics files among `sets` (option name →
    path) record, else inception (set on `args`, and returned)."""
    if args.features is None:
        recorded = {option: name for option, path in sets.items() if path and (name := recorded_extractor(path))}
        if len(set(recorded.values())) > 1:
            said = " and ".join(f"--{option} {name!r}" for option, name in recorded.items())
            raise InvalidInputError(f"features: the statistics files hold features of two extractors ({said}); "
                                    "compute both sets with one")
        args.features = next(iter(recorded.values()), "inception")
    return args.features


def extractor(args: argparse.Namespace, build: bool = True) -> FeatureExtractor | str:
    """The --features network, built on --device; with `build=False` only its name (the metrics
    build it if a set needs features, which statistics files do not)."""
    if args.inception_weights is not None and args.features != "inception":
        raise InvalidInputError("inception_weights: given, but --features is not inception")
    if not build:
        return args.features
    try:
        return feature_extractor(args.features, inception_weights=args.inception_weights, device=device(args.device))
    except InvalidInputError as exc:
        if args.features != "inception" or args.inception_weights is not None:
            raise
        raise InvalidInputError(f"{exc}; for 16×16 digit images --features digits needs no download") from None
