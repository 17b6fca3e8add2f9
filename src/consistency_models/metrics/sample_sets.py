"""Sets of images to score, read as uint8 (N, C, H, W) chunks: a folder, an ADM .npz, the digits, an array.

- a folder of PNG/JPEG images, searched recursively, in sorted name order, decoded `CHUNK_SIZE`
  images at a time so memory stays bounded (decoding rules: `consistency_models.data.decode`;
  the first image of the set fixes the channels and the size for all of them);
- an ADM-style `.npz` (`arr_0` uint8 (N, H, W, C), as guided-diffusion writes and OpenAI's
  evaluator reads), loaded whole;
- "digits" / "digits:train" / "digits:test": the built-in 16-px digits, turned to uint8 as
  samples are saved: round((x/2 + 1/2)·255);
- a uint8 (N, C, H, W) numpy array or torch tensor already in memory.

Statistics files (`.npz` with `mu` and `sigma`) are told apart by `is_statistics(arrays)`;
`evaluate.compute_statistics` reads them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from ..data.archives import npz_images, read_npz
from ..data.decode import decode_images
from ..data.digits import load_digits
from ..data.folder import list_images
from ..errors import InvalidInputError
from ..io.images import to_uint8

ImageSource = str | os.PathLike | np.ndarray | torch.Tensor
BUILTIN_SETS = ("digits", "digits:train", "digits:test")
CHUNK_SIZE = 1000                                # images decoded at a time from a folder
STATISTICS_KEYS = ("mu", "sigma")                # the keys that make an .npz a statistics file
SOURCE_FORMS = "a folder of PNG/JPEG images, an ADM .npz (arr_0), a statistics .npz (mu, sigma), " \
               + ", ".join(BUILTIN_SETS)


@dataclass
class ImageSet:
    """`count` uint8 images that `chunks(size)` yields as (≤ size, C, H, W) arrays, in a fixed order."""

    name: str                                              # the path or built-in name, for messages
    count: int
    read: Callable[[int], Iterator[np.ndarray]]            # chunk size → uint8 NCHW chunks

    def chunks(self, size: int = CHUNK_SIZE) -> Iterator[np.ndarray]:
        return self.read(size)


def is_statistics(arrays: Collection[str]) -> bool:
    """True for the arrays (or array names) of a statistics file: ours, pytorch-fid's or an OpenAI
    reference batch."""
    return all(key in arrays for key in STATISTICS_KEYS)


def _nchw(images: np.ndarray) -> np.ndarray:
    """(N, H, W, C) → a fresh C-order (N, C, H, W) array. A transposed view with C = 1 counts as
    contiguous in numpy, but torch would treat its strides as channels-last and convolve in another
    order; a copy gives every source the same strides and so bit-identical features."""
    return images.transpose(0, 3, 1, 2).copy()


def _array_chunks(images: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(images), size):
        yield images[start:start + size]


def array_set(images: np.ndarray | torch.Tensor, name: str = "images") -> ImageSet:
    """A uint8 (N, C, H, W) array or tensor in memory as an `ImageSet`."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3) or len(images) == 0:
        raise InvalidInputError(
            f"{name}: {images.dtype} array of shape {images.shape}; need uint8 (N, C, H, W), N ≥ 1, C = 1 or 3"
        )
    return ImageSet(name, len(images), partial(_array_chunks, images))


def npz_set(arrays: dict[str, np.ndarray], path: str | os.PathLike) -> ImageSet:
    """The `arr_0` images of an ADM-style npz (already read with `read_npz`) as an `ImageSet`."""
    images = _nchw(npz_images(arrays, path))
    return ImageSet(str(path), len(images), partial(_array_chunks, images))


def digits_set(name: str) -> ImageSet:
    """A built-in digits split (16 px) as uint8 images, rounded as saved samples are."""
    split = "test" if name == "digits:test" else "train"
    x, _ = load_digits(split, use_labels=False).tensors()
    return array_set(to_uint8((x / 2 + 0.5).numpy()), name)


def _folder_chunks(root: Path, names: list[str], size: int) -> Iterator[np.ndarray]:
    files = [(str(root / name), partial(open, root / name, "rb")) for name in names]
    first = files[0]
    # The set's first image fixes the channels (the chunks are decoded one after another) and,
    # leading every chunk, the size.
    mode = "gray" if decode_images([first]).shape[-1] == 1 else "rgb"
    for start in range(0, len(files), size):
        chunk = files[start:start + size]
        images = decode_images(chunk if start == 0 else [first, *chunk], image_mode=mode)
        yield _nchw(images[-len(chunk):])


def folder_set(path: str | os.PathLike) -> ImageSet:
    """The PNG/JPEG images under a folder, in sorted order, decoded chunk by chunk."""
    root = Path(path)
    names = list_images(root)
    if not names:
        raise InvalidInputError(f"path: the folder {root} holds no PNG/JPEG images")
    return ImageSet(str(root), len(names), partial(_folder_chunks, root, names))


def check_names_a_set(source: ImageSource) -> None:
    """The one-line error `open_image_set` gives for a path that names no readable set (nothing
    there, or neither a folder nor an .npz), without reading anything: said before a long pass over
    another set."""
    if isinstance(source, (np.ndarray, torch.Tensor)) or os.fspath(source) in BUILTIN_SETS:
        return
    path = Path(os.fspath(source))
    if not (path.is_dir() or (path.is_file() and path.suffix.lower() == ".npz")):
        why = "no such file or folder" if not path.exists() else "not a folder or .npz"
        raise InvalidInputError(f"path: {os.fspath(source)!r} is not a set of images ({why}); use {SOURCE_FORMS}")


def open_image_set(source: ImageSource) -> ImageSet:
    """The images named by `source`: a folder, an ADM .npz, a built-in digits split or a uint8 NCHW array."""
    if isinstance(source, (np.ndarray, torch.Tensor)):
        return array_set(source)
    text = os.fspath(source)
    if text in BUILTIN_SETS:
        return digits_set(text)
    check_names_a_set(text)
    path = Path(text)
    if path.is_dir():
        return folder_set(path)
    arrays = read_npz(path)
    if is_statistics(arrays) and "arr_0" not in arrays:
        raise InvalidInputError(f"path: {path} holds statistics (mu, sigma), not images")
    return npz_set(arrays, path)
