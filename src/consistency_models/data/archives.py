"""Image archives: an EDM-style `.zip` and an ADM-style `.npz`, as `ImageDataset`s.

- zip (NVlabs EDM `dataset_tool.py` output): PNG/JPEG files anywhere inside, taken in sorted
  name order, and an optional top-level `dataset.json` `{"labels": [["path", label], ...]}`
  (or `"labels": null`). Decoding rules: `consistency_models.data.decode`.
- npz (guided-diffusion / ADM sample and reference batches): `arr_0` uint8 images
  (N, H, W, C) with C = 1 or 3 (or (N, H, W) grayscale), optional `arr_1` integer labels (N,).
  With `resolution`, images of another size are center-cropped and resized (Lanczos).
- npz of points: `arr_0` float32/float64 (N, D), optional `arr_1` integer labels (N,): a
  `PointDataset` trained like the built-in 2-D toys (the points are used as they are; the
  preconditioning assumes a spread of about σ_data = 0.5 per coordinate).
"""

from __future__ import annotations

import os
import zipfile
import zlib
from functools import partial
from pathlib import Path

import numpy as np
import torch

from ..errors import InvalidInputError
from .dataset import ImageDataset, PointDataset
from .decode import check_resolution, crop_resize_array, decode_images, is_image_name, labels_from_json


def load_zip(
    path: str | os.PathLike,
    resolution: int | None = None,           # None: all images must share one size
    use_labels: bool = True,                 # labels from dataset.json when it has them
    xflip: bool = False,                     # random horizontal flips in `augment`
    image_mode: str = "auto",                # channels of a mix of gray and color files (see decode.py)
) -> ImageDataset:
    """The images of an EDM-style zip as an `ImageDataset` (float32 in [−1, 1], NCHW)."""
    path = Path(path)
    check_resolution(resolution)
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise InvalidInputError(f"path: {path} is not a readable zip file ({type(exc).__name__})") from None
    with archive:
        names = sorted(n for n in archive.namelist() if not n.endswith("/") and is_image_name(n))
        if not names:
            raise InvalidInputError(f"path: the zip {path} holds no PNG/JPEG images")
        labels, notes = None, []
        top = zip_top_folder(names)  # `zip -r data.zip data/` puts everything, dataset.json too, in data/
        meta = next((m for m in ("dataset.json", f"{top}dataset.json") if m in archive.namelist()), None)
        if use_labels and meta is not None:
            relative = [name.removeprefix(top) if meta != "dataset.json" else name for name in names]
            try:
                text = archive.read(meta)
            except (zipfile.BadZipFile, zlib.error, RuntimeError) as exc:  # damaged, or encrypted
                raise InvalidInputError(f"path: {path}:{meta} cannot be read ({exc})") from None
            labels = labels_from_json(text, relative, f"{path}:{meta}")
        if use_labels and labels is None:
            notes.append("no labels (a dataset.json with \"labels\" at the top of the zip or of its one folder; "
                         "subfolders are not classes in a zip): the run is unconditional")
        files = [(f"{path}:{name}", partial(archive.open, name)) for name in names]
        images = decode_images(files, resolution, image_mode, notes)
    return ImageDataset.from_uint8(images, labels, None, xflip, source=str(path), notes=notes)


def zip_top_folder(names: list[str]) -> str:
    """'data/' when every name lies in one top-level folder, else ''."""
    first = names[0].split("/", 1)[0] + "/"
    return first if "/" in names[0] and all(name.startswith(first) for name in names) else ""


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of an .npz file (no pickles); an unreadable file is an InvalidInputError naming it."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise InvalidInputError(f"path: {path} is not a readable .npz file ({type(exc).__name__})") from None


def npz_images(arrays: dict[str, np.ndarray], path: str | os.PathLike) -> np.ndarray:
    """The checked `arr_0` of an ADM-style npz as uint8 (N, H, W, C), C = 1 or 3 ((N, H, W) gains C = 1)."""
    if "arr_0" not in arrays:
        raise InvalidInputError(f"path: {path} has no arr_0 (found {', '.join(sorted(arrays)) or 'nothing'})")
    images = arrays["arr_0"]
    if images.ndim == 3:
        images = images[..., None]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3) or len(images) == 0:
        raise InvalidInputError(
            f"path: {path} arr_0 is {images.dtype} {images.shape}; need uint8 (N, H, W, C), N ≥ 1, C = 1 or 3"
        )
    return images


def npz_labels(arrays: dict[str, np.ndarray], count: int, path: str | os.PathLike) -> np.ndarray | None:
    """The checked `arr_1` (int64, one label ≥ 0 per item), or None when there is none."""
    if "arr_1" not in arrays:
        return None
    labels = arrays["arr_1"]
    if labels.shape != (count,) or not np.issubdtype(labels.dtype, np.integer) or (count and labels.min() < 0):
        raise InvalidInputError(f"path: {path} arr_1 is {labels.dtype} {labels.shape}; need {count} integer labels ≥ 0")
    return labels.astype(np.int64)


def npz_points(arrays: dict[str, np.ndarray], path: str | os.PathLike) -> np.ndarray:
    """The checked float `arr_0` (N, D) of a points npz, as float32."""
    points = arrays["arr_0"]
    if points.ndim != 2 or points.shape[0] == 0 or points.shape[1] == 0:
        raise InvalidInputError(f"path: {path} arr_0 is {points.dtype} {points.shape}; need float points (N, D) "
                                "with N, D ≥ 1, or uint8 images (N, H, W, C)")
    if not np.isfinite(points).all():
        bad = int((~np.isfinite(points)).any(axis=1).sum())
        raise InvalidInputError(f"path: {path} arr_0 has {bad} point(s) with NaN or infinite coordinates")
    return points.astype(np.float32)


def is_points(arrays: dict[str, np.ndarray]) -> bool:
    """Float `arr_0`: points (images are uint8)."""
    return "arr_0" in arrays and arrays["arr_0"].dtype in (np.float32, np.float64)


def load_points_npz(path: Path, arrays: dict[str, np.ndarray], resolution: int | None, use_labels: bool,
                    xflip: bool) -> PointDataset:
    if resolution is not None:
        raise InvalidInputError(f"resolution: {resolution!r} was given, but {path} holds points, not images")
    if xflip:
        raise InvalidInputError(f"xflip: only image datasets can be flipped; {path} holds points")
    points = npz_points(arrays, path)
    labels = npz_labels(arrays, len(points), path) if use_labels else None
    return PointDataset(torch.from_numpy(points), None if labels is None else torch.from_numpy(labels),
                        source=str(path))


def load_npz(
    path: str | os.PathLike,
    resolution: int | None = None,           # None: keep the stored size
    use_labels: bool = True,                 # use arr_1 when present
    xflip: bool = False,                     # random horizontal flips in `augment`
) -> ImageDataset | PointDataset:
    """`arr_0` (uint8 NHWC images, or float (N, D) points) and optional `arr_1` (labels) of an npz."""
    path = Path(path)
    check_resolution(resolution)
    arrays = read_npz(path)
    if is_points(arrays):
        return load_points_npz(path, arrays, resolution, use_labels, xflip)
    images = npz_images(arrays, path)
    labels = npz_labels(arrays, len(images), path) if use_labels else None
    if resolution is not None:
        images = crop_resize_array(images, resolution)
    return ImageDataset.from_uint8(images, labels, None, xflip, source=str(path))
