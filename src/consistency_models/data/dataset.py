"""In-memory datasets: every sample of a small set held as one tensor.

`__getitem__` gives one `(x, label)` pair (label −1 when unlabelled); `tensors()` gives the whole
set for fast batching by index. Random augmentation (`augment`) acts on a batch with a
generator that the training loop owns, so a run is reproducible; it is never applied in
`__getitem__`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import InvalidInputError


class InMemoryDataset(Dataset):
    """Samples `x` (N, ...) float32 and labels (N,) int64 (−1 = unlabelled)."""

    kind: str = ""

    def __init__(
        self,
        x: torch.Tensor,                      # (N, ...) float32 samples
        labels: torch.Tensor | None = None,   # (N,) class indices ≥ 0, or None = unlabelled
        num_classes: int | None = None,       # classes when labelled (default max label + 1)
        source: str = "",                     # what the samples were read from, for messages
    ) -> None:
        super().__init__()
        self.notes: list[str] = []            # lines worth telling the user about how the data was read
        x = torch.as_tensor(x, dtype=torch.float32)
        if x.ndim < 2 or x.shape[0] == 0:
            raise InvalidInputError(f"x: need at least one sample with a shape, got a tensor of shape {tuple(x.shape)}")
        if labels is None:
            labels = torch.full((x.shape[0],), -1, dtype=torch.int64)
            num_classes = None
        else:
            labels = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
            if labels.shape[0] != x.shape[0]:
                raise InvalidInputError(f"labels: {labels.shape[0]} labels for {x.shape[0]} samples")
            if labels.min() < 0:
                raise InvalidInputError(f"labels: class indices must be ≥ 0, got {int(labels.min())}")
            top = int(labels.max()) + 1
            num_classes = top if num_classes is None else num_classes
            if num_classes < top:
                raise InvalidInputError(f"num_classes: {num_classes} is less than the largest label + 1 = {top}")
        self.x = x.contiguous()
        self.labels = labels
        self.num_classes: int | None = num_classes
        self.shape: tuple[int, ...] = tuple(x.shape[1:])
        self.source = source

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.x[index], int(self.labels[index])

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All samples (N, ...) float32 and all labels (N,) int64, −1 where unlabelled."""
        return self.x, self.labels

    def augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Random augmentation of a batch; none here."""
        return x

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.source or '<tensors>'}: {len(self)} × {self.shape}, "
                f"num_classes={self.num_classes})")


class ImageDataset(InMemoryDataset):
    """Images (N, C, H, W) float32 in [−1, 1], with optional random horizontal flips."""

    kind = "image"

    def __init__(
        self,
        x: torch.Tensor,                      # (N, C, H, W) float32 in [−1, 1]
        labels: torch.Tensor | None = None,   # (N,) class indices, or None
        num_classes: int | None = None,       # classes when labelled (default max label + 1)
        xflip: bool = False,                  # `augment` mirrors each image with probability 1/2
        source: str = "",
    ) -> None:
        super().__init__(x, labels, num_classes, source)
        if self.x.ndim != 4:
            raise InvalidInputError(f"x: images must be (N, C, H, W), got shape {tuple(self.x.shape)}")
        self.xflip = bool(xflip)

    @classmethod
    def from_uint8(
        cls,
        images: np.ndarray,                   # (N, H, W, C) uint8
        labels: np.ndarray | None = None,
        num_classes: int | None = None,
        xflip: bool = False,
        source: str = "",
        notes: list[str] | None = None,       # lines about how the images were read (see `notes`)
    ) -> "ImageDataset":
        """uint8 NHWC images → x = v/127.5 − 1 in [−1, 1], NCHW."""
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        labels_t = None if labels is None else torch.from_numpy(np.asarray(labels, dtype=np.int64))
        dataset = cls(x, labels_t, num_classes, xflip, source)
        dataset.notes = list(notes or [])
        return dataset

    def augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Mirror each image of the batch left–right with probability 1/2 when `xflip` is set."""
        if not self.xflip:
            return x
        flip = torch.rand(x.shape[0], generator=generator, device=generator.device).to(x.device) < 0.5
        return torch.where(flip[:, None, None, None], x.flip(-1), x)


class PointDataset(InMemoryDataset):
    """Points (N, D) float32 (the 2-D toy distributions); no augmentation."""

    kind = "points"

    def __init__(self, x: torch.Tensor, labels: torch.Tensor | None = None, num_classes: int | None = None,
                 source: str = "") -> None:
        super().__init__(x, labels, num_classes, source)
        if self.x.ndim != 2:
            raise InvalidInputError(f"x: points must be (N, D), got shape {tuple(self.x.shape)}")
