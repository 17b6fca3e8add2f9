"""Training data: image folders, EDM zips, ADM npz files, the built-in digits and 2-D toys.

`load_dataset(spec)` picks the source from `spec`; every source is held in memory as one
tensor (`ImageDataset`: (N, C, H, W) float32 in [−1, 1]; `PointDataset`: (N, D) float32).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InvalidInputError
from .archives import load_npz, load_zip
from .dataset import ImageDataset, InMemoryDataset, PointDataset
from .decode import IMAGE_MODES, check_image_mode
from .digits import load_digits
from .folder import load_folder
from .toy import TOYS, GaussianMixture, gmm_denoiser, load_toy, mog8_denoiser, mog8_mixture

SPEC_FORMS = (
    "digits, digits:test, " + ", ".join(f"toy:{name}" for name in TOYS)
    + ", a folder of PNG/JPEG images, an EDM .zip, an ADM .npz of images or an .npz of float points (N, D)"
)


DIGITS_SETS = ("digits", "digits:train", "digits:test")


def is_named_set(spec: str | os.PathLike) -> bool:
    """Whether `spec` names a built-in set (digits, digits:test, toy:NAME), which a file or folder
    of the same name does not hide."""
    text = os.fspath(spec)
    return text in DIGITS_SETS or text.startswith("toy:")


def load_dataset(
    spec: str | os.PathLike,
    resolution: int | None = None,           # image side in px (digits: 16 by default)
    use_labels: bool = True,                 # class labels when the source has them
    xflip: bool = False,                     # random horizontal flips in `augment` (images only)
    image_mode: str = "auto",                # a folder's or zip's mix of gray and color files (decode.py)
) -> ImageDataset | PointDataset:
    """The dataset named by `spec`: "digits" (train split), "digits:test" (held out), "toy:NAME",
    a folder path, a .zip or a .npz."""
    text = os.fspath(spec)
    path = Path(text)
    if check_image_mode(image_mode) != "auto" and not (path.is_dir() or path.suffix.lower() == ".zip"):
        raise InvalidInputError(f"image_mode: {image_mode!r} applies to image folders and zips; {text} is neither")
    if text in DIGITS_SETS:
        split = "test" if text == "digits:test" else "train"
        return load_digits(split, resolution, use_labels, xflip)
    if text.startswith("toy:"):
        name = text[len("toy:"):]
        if name not in TOYS:
            raise InvalidInputError(f"spec: {text!r} is not a toy distribution; use one of "
                                    + ", ".join(f"toy:{n}" for n in TOYS))
        if resolution is not None:
            raise InvalidInputError(f"resolution: {resolution!r} was given, but {text} is a set of 2-D points")
        if xflip:
            raise InvalidInputError(f"xflip: only image datasets can be flipped; {text} is a set of 2-D points")
        return load_toy(name)
    suffix = path.suffix.lower()
    if path.is_dir():
        return load_folder(path, resolution, use_labels, xflip, image_mode)
    if path.is_file() and suffix == ".zip":
        return load_zip(path, resolution, use_labels, xflip, image_mode)
    if path.is_file() and suffix == ".npz":
        return load_npz(path, resolution, use_labels, xflip)
    why = "no such file or folder" if not path.exists() else "not a folder, .zip or .npz"
    raise InvalidInputError(f"spec: {text!r} is not a dataset ({why}); use {SPEC_FORMS}")


__all__ = [
    "GaussianMixture",
    "ImageDataset",
    "InMemoryDataset",
    "PointDataset",
    "TOYS",
    "gmm_denoiser",
    "load_dataset",
    "load_digits",
    "load_folder",
    "load_npz",
    "load_toy",
    "load_zip",
    "mog8_denoiser",
    "mog8_mixture",
]
