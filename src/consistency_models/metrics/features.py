"""Feature extractors for the sample-quality metrics: uint8 images in, float features out.

One interface, `FeatureExtractor`, with two networks behind it:

- "inception": the FID Inception-v3 (`inception.py`), 2048-d pool3 features and 1008 logits,
  the features of FID, KID, precision/recall and the Inception Score on natural images;
- "digits": the package's `DigitsClassifier` (16-px grayscale digits), 128-d features and 10
  logits, the same metrics on the built-in digits set.

Both take uint8 (N, C, H, W) batches (torch or numpy), run them in batches of `batch_size` on
the extractor's device, and return float32 CPU tensors; the metrics do their sums in float64.
"""

from __future__ import annotations

import contextlib
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import InvalidInputError
from .digits_classifier import FEATURE_DIM as DIGITS_FEATURE_DIM
from .digits_classifier import IMAGE_SIZE as DIGITS_IMAGE_SIZE
from .digits_classifier import NUM_CLASSES as DIGITS_NUM_CLASSES
from .digits_classifier import DigitsClassifier, load_digits_classifier
from .inception import (
    FEATURE_DIM,
    NUM_LOGITS,
    InceptionV3FID,
    as_uint8_images,
    load_inception,
)

EXTRACTORS = ("inception", "digits")
# ITU-R BT.601 luma, as PIL's convert("L") (without its rounding to integers).
_LUMA = (0.299, 0.587, 0.114)


@contextlib.contextmanager
def _full_float32(device: torch.device) -> Iterator[None]:
    """Convolutions in true float32 on CUDA (cuDNN would use TF32 by default on Ampere and later)."""
    if device.type != "cuda":
        yield
        return
    cudnn = torch.backends.cudnn
    with cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic,
                     allow_tf32=False):
        yield


class FeatureExtractor(ABC):
    """uint8 (N, C, H, W) images → (N, `dim`) float features, and (N, `num_logits`) class logits."""

    name: str
    dim: int
    num_logits: int

    def __init__(self, device: str | torch.device | None = None, batch_size: int = 64) -> None:
        if batch_size < 1:
            raise InvalidInputError(f"batch_size: {batch_size!r} is not a positive number of images per batch")
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.batch_size = batch_size

    @abstractmethod
    def _forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One uint8 batch, already checked and on `self.device` → (features, logits)."""

    def check_size(self, height: int, width: int) -> None:
        """Refuse images this network cannot read, before any are made (default: any size)."""

    @torch.no_grad()
    def features_and_logits(self, images: torch.Tensor | np.ndarray,
                            progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, dim) features and (N, num_logits) logits, float32 on the CPU, in one pass over the images."""
        images = as_uint8_images(images)
        features, logits = [], []
        with _full_float32(self.device), tqdm(total=len(images), disable=not progress, desc=f"{self.name} features",
                                              unit="img", leave=False) as bar:
            for start in range(0, len(images), self.batch_size):
                batch = images[start:start + self.batch_size].to(self.device)
                f, logit = self._forward(batch)
                features.append(f.float().cpu())
                logits.append(logit.float().cpu())
                bar.update(len(batch))
        if not features:
            return torch.zeros(0, self.dim), torch.zeros(0, self.num_logits)
        return torch.cat(features), torch.cat(logits)

    def features(self, images: torch.Tensor | np.ndarray, progress: bool = False) -> torch.Tensor:
        """(N, dim) float32 features of uint8 (N, C, H, W) images."""
        return self.features_and_logits(images, progress)[0]

    def logits(self, images: torch.Tensor | np.ndarray, progress: bool = False) -> torch.Tensor:
        """(N, num_logits) float32 class logits of uint8 (N, C, H, W) images."""
        return self.features_and_logits(images, progress)[1]


class InceptionFeatures(FeatureExtractor):
    """The FID Inception-v3: 2048-d pool3 features, 1008 bias-free logits (see `InceptionV3FID`)."""

    name = "inception"
    dim = FEATURE_DIM
    num_logits = NUM_LOGITS

    def __init__(self, model: InceptionV3FID, device: str | torch.device | None = None, batch_size: int = 64) -> None:
        super().__init__(device, batch_size)
        self.model = model.to(self.device).eval().requires_grad_(False)

    def _forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(images)


class DigitsFeatures(FeatureExtractor):
    """The digits classifier: 16×16 images, v/127.5 − 1 as the digits set; RGB turned to gray (BT.601 luma)."""

    name = "digits"
    dim = DIGITS_FEATURE_DIM
    num_logits = DIGITS_NUM_CLASSES

    def __init__(self, model: DigitsClassifier, device: str | torch.device | None = None,
                 batch_size: int = 512) -> None:
        super().__init__(device, batch_size)
        self.model = model.to(self.device).eval().requires_grad_(False)

    def check_size(self, height: int, width: int) -> None:
        if (height, width) != (DIGITS_IMAGE_SIZE, DIGITS_IMAGE_SIZE):
            raise InvalidInputError(
                f"images: {height}×{width} px; the digits classifier takes "
                f"{DIGITS_IMAGE_SIZE}×{DIGITS_IMAGE_SIZE} images (generate or load digits at resolution 16)"
            )

    def _forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.check_size(*images.shape[2:])
        x = images.float()
        if x.shape[1] == 3:
            x = (x * torch.tensor(_LUMA, device=x.device).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
        features = self.model.features(x / 127.5 - 1.0)
        return features, self.model.head(features)


def feature_extractor(
    name: str,                                              # "inception" or "digits"
    inception_weights: str | os.PathLike | None = None,     # the Inception .pth (see `load_inception`)
    device: str | torch.device | None = None,
    batch_size: int | None = None,                          # images per forward; default 64 / 512
) -> FeatureExtractor:
    """The feature extractor called `name`, its network loaded and frozen on `device`."""
    if name == "inception":
        model = load_inception(inception_weights)
        return InceptionFeatures(model, device, 64 if batch_size is None else batch_size)
    if name == "digits":
        if inception_weights is not None:
            raise InvalidInputError(
                f"inception_weights: {inception_weights} was given, but the 'digits' extractor uses the shipped "
                "digits classifier; leave it out"
            )
        return DigitsFeatures(load_digits_classifier(), device, 512 if batch_size is None else batch_size)
    raise InvalidInputError(f"name: {name!r} is not a feature extractor; use one of {', '.join(EXTRACTORS)}")
