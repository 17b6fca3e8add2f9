"""`DigitsClassifier`: a small CNN on 16-px digits, the feature extractor of the digits quality metrics.

It plays the role Inception-v3 plays for FID (Heusel et al. 2017): `features(x)` gives the
128-d penultimate activations whose Gaussian statistics `frechet_distance` compares, and
`forward(x)` the class logits that score whether a class-conditional sample shows its label.
The shipped weights `weights/digits_classifier.safetensors` come from
`scripts/train_digits_classifier.py` (train split of `digits` only; see `weights/README.md`).
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from ..errors import InvalidInputError

WEIGHTS_NAME = "digits_classifier.safetensors"
IMAGE_SIZE = 16
NUM_CLASSES = 10
FEATURE_DIM = 128


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """3×3 convolution → batch norm → ReLU, size-preserving."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class DigitsClassifier(nn.Module):
    """conv 32 → pool → conv 64 → pool → conv 128 → global average pool (128-d features) → linear 10.

    Each conv is 3×3 + batch norm + ReLU; the poolings are 2×2 max (16 → 8 → 4 px).
    Inputs are (B, 1, 16, 16) images in [−1, 1], as `load_dataset("digits")` gives them.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = conv_block(1, 32)
        self.conv2 = conv_block(32, 64)
        self.conv3 = conv_block(64, FEATURE_DIM)
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 16, 16) images in [−1, 1] → (B, 128) penultimate features (post-ReLU, pooled)."""
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, IMAGE_SIZE, IMAGE_SIZE):
            raise InvalidInputError(
                f"x: shape {tuple(x.shape)} is not a batch of 16-px grayscale images; use (B, 1, 16, 16)"
            )
        h = F.max_pool2d(self.conv1(x), 2)
        h = F.max_pool2d(self.conv2(h), 2)
        return self.conv3(h).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 16, 16) images in [−1, 1] → (B, 10) class logits."""
        return self.head(self.dropout(self.features(x)))


def default_weights_path() -> Path:
    """Where the package ships the classifier's weights."""
    return Path(str(resources.files("consistency_models").joinpath("weights", WEIGHTS_NAME)))


def load_digits_classifier(
    path: str | os.PathLike | None = None,     # a safetensors file; default: the shipped weights
    device: str | torch.device | None = None,
) -> DigitsClassifier:
    """The trained `DigitsClassifier` in eval mode (the shipped weights unless `path` is given)."""
    path = default_weights_path() if path is None else Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"digits classifier weights not found at {path}; recreate them with "
            "`python scripts/train_digits_classifier.py`"
        )
    model = DigitsClassifier()
    model.load_state_dict(load_file(str(path)))
    return model.to(device).eval().requires_grad_(False)
