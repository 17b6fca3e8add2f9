"""The built-in `digits` set: scikit-learn's bundled 8×8 handwritten digits, shipped as `digits.npz`.

1,797 grayscale 8×8 images, integer values 0..16, classes 0–9. Source and licence: the test
set of the UCI ML "Optical Recognition of Handwritten Digits" data (CC BY 4.0), as bundled with
scikit-learn (BSD-3-Clause); `scripts/make_digits.py` wrote the file, see `data/README.md`.

Split (fixed): `perm = numpy.random.default_rng(0).permutation(1797)`; "train" = the images
`perm[:1497]` in that order, "test" (held out) = `perm[1497:]` (300 images).

Images: v ∈ 0..16 → v/8 − 1 ∈ [−1, 1], then resized from 8 px with
`F.interpolate(mode="bilinear", align_corners=False, antialias=False)`; 1 channel, float32.
Bilinear interpolation takes convex combinations, so the values stay in [−1, 1].
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InvalidInputError
from .dataset import ImageDataset

NUM_IMAGES = 1797
NUM_TRAIN = 1497
NUM_CLASSES = 10
SPLIT_SEED = 0
RESOLUTIONS = (8, 16, 32)
DEFAULT_RESOLUTION = 16


@lru_cache(maxsize=1)
def raw_digits() -> tuple[np.ndarray, np.ndarray]:
    """The shipped arrays in scikit-learn's order: images uint8 (1797, 8, 8), labels int64 (1797,)."""
    with resources.files(__package__).joinpath("digits.npz").open("rb") as f:
        with np.load(f) as data:
            images, labels = data["images"], data["labels"].astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def split_indices(split: str) -> np.ndarray:
    """Indices into `raw_digits()` of the "train" (1,497) or "test" (300) split."""
    perm = np.random.default_rng(SPLIT_SEED).permutation(NUM_IMAGES)
    if split == "train":
        return perm[:NUM_TRAIN]
    if split == "test":
        return perm[NUM_TRAIN:]
    raise InvalidInputError(f"split: {split!r} is not a digits split; use 'train' or 'test'")


def load_digits(
    split: str = "train",                    # "train" (1,497 images) or "test" (300 held out)
    resolution: int | None = None,           # 8, 16 (default) or 32 px
    use_labels: bool = True,                 # digit classes 0–9
    xflip: bool = False,                     # random horizontal flips in `augment`
) -> ImageDataset:
    """A digits split as an `ImageDataset` of (1, R, R) float32 images in [−1, 1]."""
    resolution = DEFAULT_RESOLUTION if resolution is None else resolution
    if resolution not in RESOLUTIONS:
        raise InvalidInputError(f"resolution: {resolution!r} is not available for digits; use 8, 16 or 32")
    index = split_indices(split)
    images, labels = raw_digits()
    x = torch.from_numpy(images[index].astype(np.float32))[:, None] / 8.0 - 1.0
    if resolution != x.shape[-1]:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=False)
    y = torch.from_numpy(labels[index].copy()) if use_labels else None
    return ImageDataset(x, y, NUM_CLASSES if use_labels else None, xflip, source=f"digits:{split}")
