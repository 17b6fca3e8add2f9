"""Scoring a set of samples against a reference set: the API behind `cm eval`.

Each set is a folder of images, an ADM .npz, a built-in digits split, a uint8 array (see
`sample_sets`), a statistics file, or `SetStatistics` already computed. A set's statistics are
its features (N, D) and logits (N, K) from one `FeatureExtractor`, and the Gaussian fitted to
the features (μ, Σ in float64). From two of them:

- FID, the Fréchet distance of the two Gaussians (Heusel et al. 2017, "GANs Trained by a Two
  Time-Scale Update Rule Converge to a Local Nash Equilibrium");
- IS of the samples (Salimans et al. 2016), from their logits;
- KID (Bińkowski et al. 2018), from both feature sets;
- improved precision and recall (Kynkäänniemi et al. 2019, k = 3), from both feature sets.

Statistics files (`save_statistics`) are .npz files holding `mu`, `sigma` (the keys pytorch-fid
reads, so it can read ours), `features`, `logits`, the extractor's name, the image count and a
format marker. Foreign files load too: pytorch-fid's (only `mu`, `sigma`) give FID and
nothing else; an OpenAI reference batch (`arr_0` images with `mu`, `sigma` of a larger set)
gives FID from its stored μ, Σ, as OpenAI's evaluator does, and the other metrics from the
features of its images. A metric that cannot be computed is None, never estimated.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.archives import read_npz
from ..errors import InvalidInputError, about
from ..io.atomic import write_json, write_npz
from ..io.overwrite import require_parent_folder
from .features import DigitsFeatures, FeatureExtractor, InceptionFeatures, feature_extractor
from .frechet import RunningStatistics, frechet_distance
from .inception_score import inception_score
from .kid import kernel_inception_distance
from .precision_recall import precision_recall
from .sample_sets import (CHUNK_SIZE, ImageSet, ImageSource, check_names_a_set, is_statistics, npz_set,
                          open_image_set)

STATISTICS_FORMAT = "consistency-models/set-statistics/1"
METRICS = ("fid", "is", "kid", "pr")
# Feature dimension of each extractor, to check foreign statistics without building a network.
FEATURE_DIMS = {cls.name: cls.dim for cls in (InceptionFeatures, DigitsFeatures)}
# Each metric's result keys, in table order.
RESULT_KEYS = {
    "fid": ("fid",),
    "is": ("is_mean", "is_std"),
    "kid": ("kid_mean", "kid_std"),
    "pr": ("precision", "recall"),
}


@dataclass
class SetStatistics:
    """What the metrics need of one set of images, all from one feature extractor."""

    mu: np.ndarray                  # (D,) float64 mean of the features
    sigma: np.ndarray               # (D, D) float64 covariance (unbiased)
    features: np.ndarray | None     # (N, D) float32, for KID and precision/recall; None: FID only
    logits: np.ndarray | None       # (N, K) float32 class logits, for IS; None: no IS
    extractor: str | None           # the extractor's name; None: unknown (a foreign mu/sigma file)
    count: int | None               # images behind the features; None when a file does not say
    source: str = ""                # where it came from, for messages

    @property
    def dim(self) -> int:
        return int(self.mu.shape[0])


Source = ImageSource | SetStatistics


class _Extractor:
    """A `FeatureExtractor`, or a name whose network `feature_extractor` builds when first needed."""

    def __init__(self, extractor: FeatureExtractor | str) -> None:
        if isinstance(extractor, FeatureExtractor):
            self.name, self._built = extractor.name, extractor
        elif extractor in FEATURE_DIMS:
            self.name, self._built = extractor, None
        else:
            raise InvalidInputError(
                f"extractor: {extractor!r} is not a feature extractor; use one of {', '.join(FEATURE_DIMS)}"
            )
        self.dim = self._built.dim if self._built is not None else FEATURE_DIMS[self.name]

    def get(self) -> FeatureExtractor:
        if self._built is None:
            self._built = feature_extractor(self.name)
        return self._built

    @property
    def device(self) -> torch.device | None:
        """Where the metric sums run: the extractor's device, the CPU if no network was needed."""
        return self._built.device if self._built is not None else None


def _check_extractor(stats: SetStatistics, extractor: _Extractor, argument: str) -> SetStatistics:
    """`stats` if they are of `extractor`'s features; otherwise an InvalidInputError."""
    where = stats.source or "the statistics"
    if stats.extractor is not None and stats.extractor != extractor.name:
        raise InvalidInputError(
            f"{argument}: {where} holds {stats.extractor!r} statistics, but {extractor.name!r} features were "
            "asked for; compute both sets with one extractor"
        )
    if stats.dim != extractor.dim:
        raise InvalidInputError(
            f"{argument}: {where} holds {stats.dim}-d statistics, but the {extractor.name!r} extractor gives "
            f"{extractor.dim}-d features; compute both sets with one extractor"
        )
    return stats


def _extract(images: ImageSet, extractor: FeatureExtractor, progress: bool, argument: str) -> SetStatistics:
    """Features, logits and the streamed float64 μ, Σ of an `ImageSet`, chunk by chunk."""
    if images.count < 2:
        raise InvalidInputError(f"{argument}: {images.name} holds {images.count} image; statistics need at least 2")
    running = RunningStatistics()
    features, logits = [], []
    with tqdm(total=images.count, disable=not progress, desc=f"{extractor.name} features", unit="img") as bar:
        for chunk in images.chunks(CHUNK_SIZE):
            f, logit = extractor.features_and_logits(chunk)
            running.update(f)
            features.append(f.numpy())
            logits.append(logit.numpy())
            bar.update(len(chunk))
    mu, sigma = running.finalize()
    return SetStatistics(mu.numpy(), sigma.numpy(), np.concatenate(features), np.concatenate(logits),
                         extractor.name, running.count, images.name)


def _statistics_from_arrays(arrays: dict[str, np.ndarray], path: str) -> SetStatistics:
    """A statistics file's arrays (ours or a foreign mu/sigma file) as checked `SetStatistics`."""
    marker = arrays.get("format")
    if marker is not None and str(marker) != STATISTICS_FORMAT:
        raise InvalidInputError(f"path: {path} has format {str(marker)!r}; this version reads {STATISTICS_FORMAT!r}")
    mu = np.asarray(arrays["mu"], dtype=np.float64)
    sigma = np.asarray(arrays["sigma"], dtype=np.float64)
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise InvalidInputError(f"path: {path} has mu {mu.shape} and sigma {sigma.shape}; need (D,) and (D, D)")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise InvalidInputError(f"path: {path} holds NaN or infinite statistics (mu/sigma); make them again")
    features = arrays.get("features") if marker is not None else None
    logits = arrays.get("logits") if marker is not None else None
    if features is not None and not np.isfinite(features).all():
        raise InvalidInputError(f"path: {path} holds NaN or infinite features; make the statistics again")
    if features is not None and (features.ndim != 2 or features.shape[1] != len(mu)):
        raise InvalidInputError(f"path: {path} has features {features.shape}; need (N, {len(mu)}) for mu {mu.shape}")
    if logits is not None and features is not None and (logits.ndim != 2 or len(logits) != len(features)):
        raise InvalidInputError(f"path: {path} has logits {logits.shape}; need (N, K) with N = {len(features)}")
    extractor = str(arrays["extractor"]) if marker is not None and "extractor" in arrays else None
    count = int(arrays["count"]) if marker is not None and "count" in arrays else None
    return SetStatistics(mu, sigma, None if features is None else features.astype(np.float32),
                         None if logits is None else logits.astype(np.float32), extractor, count, path)


def load_statistics(path: str | os.PathLike) -> SetStatistics:
    """A statistics .npz: ours (`save_statistics`), or a foreign one with only `mu` and `sigma`
    (pytorch-fid, OpenAI's reference batches), which loads with features = logits = None."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"path: {str(path)!r} is not a statistics file (no such file)")
    arrays = read_npz(path)
    if not is_statistics(arrays):
        raise InvalidInputError(
            f"path: {path} is not a statistics file: it has no mu and sigma (found {', '.join(sorted(arrays)) or 'nothing'})"
        )
    return _statistics_from_arrays(arrays, str(path))


def save_statistics(stats: SetStatistics, path: str | os.PathLike, replace: bool = True,
                    argument: str = "path") -> None:
    """Write `stats` as an uncompressed .npz (mu, sigma, features, logits, extractor, count, format),
    atomically (`replace` False: a file that appeared meanwhile is kept, the write refused)."""
    path = Path(path)
    if path.suffix.lower() != ".npz":
        raise InvalidInputError(f"path: {str(path)!r} must end in .npz for a statistics file")
    require_parent_folder(path, "path")
    arrays = {"format": np.str_(STATISTICS_FORMAT), "mu": np.asarray(stats.mu, dtype=np.float64),
              "sigma": np.asarray(stats.sigma, dtype=np.float64)}
    if stats.features is not None:
        arrays["features"] = np.asarray(stats.features, dtype=np.float32)
    if stats.logits is not None:
        arrays["logits"] = np.asarray(stats.logits, dtype=np.float32)
    if stats.extractor is not None:
        arrays["extractor"] = np.str_(stats.extractor)
    if stats.count is not None:
        arrays["count"] = np.int64(stats.count)
    write_npz(path, arrays, replace, argument)


def _compute(source: Source, extractor: _Extractor, progress: bool, argument: str) -> SetStatistics:
    try:
        return _compute_set(source, extractor, progress, argument)
    except InvalidInputError as exc:  # a file that is no image set: named as the argument it was given as
        if str(exc).startswith("path: "):
            raise about(argument, exc, "path") from None
        raise


def _compute_set(source: Source, extractor: _Extractor, progress: bool, argument: str) -> SetStatistics:
    if isinstance(source, SetStatistics):
        return _check_extractor(source, extractor, argument)
    if not isinstance(source, (np.ndarray, torch.Tensor)):
        path = Path(source)
        if path.is_file() and path.suffix.lower() == ".npz":
            arrays = read_npz(path)
            if is_statistics(arrays):
                stats = _check_extractor(_statistics_from_arrays(arrays, str(path)), extractor, argument)
                if "arr_0" not in arrays or stats.features is not None:
                    return stats
                # An OpenAI reference batch: FID from its stored μ, Σ; the rest from its images' features.
                found = _extract(npz_set(arrays, path), extractor.get(), progress, argument)
                return SetStatistics(stats.mu, stats.sigma, found.features, found.logits, extractor.name,
                                     found.count, str(path))
            return _extract(npz_set(arrays, path), extractor.get(), progress, argument)
    return _extract(open_image_set(source), extractor.get(), progress, argument)


def statistics_file(source: Source) -> bool:
    """A path to a statistics .npz with no images in it (nothing to extract)."""
    if isinstance(source, (SetStatistics, np.ndarray, torch.Tensor)):
        return False
    path = Path(source)
    if not (path.is_file() and path.suffix.lower() == ".npz"):
        return False
    try:
        with np.load(path, allow_pickle=False) as data:  # member names only: no array is read here
            names = set(data.files)
    except (OSError, ValueError, zipfile.BadZipFile):
        return False
    return is_statistics(names) and "arr_0" not in names


def recorded_extractor(source: Source) -> str | None:
    """The feature extractor a statistics file of ours records (None: not a statistics file, or
    one that does not say, e.g. pytorch-fid's)."""
    if isinstance(source, SetStatistics):
        return source.extractor
    if not statistics_file(source):
        return None
    try:
        with np.load(Path(source), allow_pickle=False) as data:   # the small members only
            if "format" not in data.files or "extractor" not in data.files:
                return None
            return str(data["extractor"])
    except (OSError, ValueError, zipfile.BadZipFile):   # a damaged member: reading the file says what
        return None


def compute_statistics(
    source: Source,                            # images (see `sample_sets`), a statistics file or SetStatistics
    extractor: FeatureExtractor | str,         # or its name: then built with `feature_extractor(name)` if needed
    progress: bool = True,                     # a progress bar over the images
    argument: str = "source",                  # what errors call the source (a caller's own argument name)
) -> SetStatistics:
    """Features, logits and Gaussian (μ, Σ) of a set of images; a statistics source is loaded and checked."""
    return _compute(source, _Extractor(extractor), progress, argument)


def _check_metrics(metrics: Sequence[str]) -> tuple[str, ...]:
    if isinstance(metrics, str):
        metrics = (metrics,)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise InvalidInputError(f"metrics: {', '.join(unknown) or 'none'} given; choose from {', '.join(METRICS)}")
    return tuple(m for m in METRICS if m in metrics)


def evaluate(
    samples: Source,                           # the generated set
    reference: Source,                         # the real set (or its statistics)
    extractor: FeatureExtractor | str,         # or its name: then built with `feature_extractor(name)` if needed
    metrics: Sequence[str] = METRICS,          # any of "fid", "is", "kid", "pr"
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,               # capped at each set's size
    seed: int = 0,                             # KID's subset draws
    is_splits: int = 10,                       # capped at the number of samples ("is_splits" says how many)
    pr_k: int = 3,                             # neighbours of precision/recall
    progress: bool = True,
) -> dict[str, float | int | None]:
    """FID, IS (of the samples), KID and precision/recall: {"fid", "is_mean", "is_std", "kid_mean",
    "kid_std", "precision", "recall"} for the metrics asked, None where a set is statistics only;
    also "num_samples" and "num_reference" (None where a file does not say)."""
    chosen = _check_metrics(metrics)
    ex = _Extractor(extractor)
    real = None
    if statistics_file(reference):  # cheap to load: a bad one is refused before the samples' features are made
        real = _compute(reference, ex, progress, "reference")
    elif not isinstance(reference, SetStatistics):  # a reference that names nothing: said before that work too
        try:
            check_names_a_set(reference)
        except InvalidInputError as exc:
            raise about("reference", exc, "path") from None
    fake = _compute(samples, ex, progress, "samples")
    if real is None:
        real = _compute(reference, ex, progress, "reference")
    device = ex.device                         # the metric sums run where the features were made
    results: dict[str, float | int | None] = {"num_samples": fake.count, "num_reference": real.count}
    results.update({key: None for m in chosen for key in RESULT_KEYS[m]})
    if "fid" in chosen:
        results["fid"] = frechet_distance(real.mu, real.sigma, fake.mu, fake.sigma)
    if "is" in chosen and fake.logits is not None:
        results["is_splits"] = min(is_splits, len(fake.logits))  # a set smaller than 10 images still gets a score
        results["is_mean"], results["is_std"] = inception_score(fake.logits, results["is_splits"])
    have_features = real.features is not None and fake.features is not None
    if "kid" in chosen and have_features:
        results["kid_mean"], results["kid_std"] = kernel_inception_distance(
            real.features, fake.features, kid_subsets, kid_subset_size, seed, device)
        if kid_subset_size >= max(len(real.features), len(fake.features)):
            results["kid_std"] = None  # every subset is the whole set: there is no spread to report
    if "pr" in chosen and have_features:
        results["precision"], results["recall"] = precision_recall(real.features, fake.features, pr_k,
                                                                   device=device)
    return results


def _number(value: float | int | None) -> str:
    if value is None:
        return "n/a"
    return str(value) if isinstance(value, int) else f"{value:.6g}"


def few_images_note(count: int, features: str) -> str | None:
    """Said where a Fréchet distance comes from fewer images than its features have dimensions: the
    covariance is then singular and the distance far above its many-image value (its bias falls as
    1/N, Chong & Forsyth 2020), so only scores of equal image counts compare."""
    dim = FEATURE_DIMS.get(features)
    if dim is None or count >= dim:
        return None
    return (f"fewer images ({count}) than the {dim} {features} feature dimensions: far above the many-image value; "
            "compare only scores of equal image counts")


def format_table(results: dict[str, float | int | None]) -> str:
    """`evaluate`'s results as an aligned two-column table; "n/a" where a value could not be computed."""
    rows = []
    distance = "FID" if results.get("features", "inception") == "inception" else "FD"
    for label, mean, std in (("images (samples)", "num_samples", None), ("images (reference)", "num_reference", None),
                             (distance, "fid", None), ("IS (samples)", "is_mean", "is_std"),
                             ("KID", "kid_mean", "kid_std"), ("precision", "precision", None),
                             ("recall", "recall", None)):
        if mean not in results:
            continue
        text = _number(results[mean])
        if std is not None and results.get(std) is not None:
            text += f" ± {_number(results[std])}"
        elif mean == "kid_mean" and results.get(mean) is not None:
            text += " (one subset: every image; no spread)"
        counts = [results.get(k) for k in ("num_samples", "num_reference") if isinstance(results.get(k), int)]
        if mean == "fid" and results.get(mean) is not None and "features" in results and counts and \
                (note := few_images_note(min(counts), str(results["features"]))):
            text += f" ({note})"
        if mean == "is_mean" and results.get(mean) is not None and results.get("is_splits", 10) < 10:
            text += f" ({results['is_splits']} splits: fewer images than the usual 10)"
        rows.append((label, text))
    width = max((len(label) for label, _ in rows), default=0)
    return "\n".join(f"{label:<{width}}  {text}" for label, text in rows)


def write_results_json(results: dict[str, float | int | None], path: str | os.PathLike, replace: bool = True,
                       argument: str = "path") -> None:
    """Write `evaluate`'s results as JSON (None → null), atomically (`replace`: as `save_statistics`)."""
    write_json(require_parent_folder(path, "path"), dict(results), replace, argument)
