"""A folder of PNG/JPEG images, searched recursively, as an `ImageDataset`.

Labels (with `use_labels=True`): from a `dataset.json` at the top of the folder when there is
one (EDM's format, see `decode.labels_from_json`), otherwise the first-level subfolder names,
sorted, give the class indices (`cat/1.png` → the index of "cat"). A folder with all images at
its top level is unlabelled; a folder with some images in subfolders and some at the top is
an error. Image decoding, channels and sizes: see `consistency_models.data.decode`.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import numpy as np

from ..errors import InvalidInputError
from .dataset import ImageDataset
from .decode import check_resolution, decode_images, is_image_name, labels_from_json


def list_images(root: Path) -> list[str]:
    """Image files under `root`, as sorted '/'-separated relative paths; symlinked folders are
    followed (a class folder may be a link), each real folder once (a link cycle ends)."""
    names = []
    seen = {os.path.realpath(root)}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        kept = []
        for d in dirnames:
            real = os.path.realpath(os.path.join(dirpath, d))
            if not d.startswith(".") and real not in seen:
                seen.add(real)
                kept.append(d)
        dirnames[:] = kept
        rel = Path(dirpath).relative_to(root)
        names += [(rel / f).as_posix() for f in filenames if is_image_name(f)]
    return sorted(names)


def subfolder_labels(root: Path, names: list[str]) -> tuple[np.ndarray | None, int | None]:
    """Class index = position of the first-level subfolder among the sorted subfolder names."""
    top = [name for name in names if "/" not in name]
    if len(top) == len(names):
        return None, None
    if top:
        raise InvalidInputError(
            f"path: {root / top[0]} is not in a class subfolder of {root}; "
            "put every image in one, or train without labels (--unconditional; use_labels=False)"
        )
    classes = sorted({name.split("/", 1)[0] for name in names})
    index = {c: i for i, c in enumerate(classes)}
    return np.asarray([index[name.split("/", 1)[0]] for name in names], dtype=np.int64), len(classes)


def load_folder(
    path: str | os.PathLike,
    resolution: int | None = None,           # None: all images must share one size
    use_labels: bool = True,                 # classes from dataset.json or the subfolders
    xflip: bool = False,                     # random horizontal flips in `augment`
    image_mode: str = "auto",                # channels of a mix of gray and color files (see decode.py)
) -> ImageDataset:
    """All PNG/JPEG images under `path` as an `ImageDataset` (float32 in [−1, 1], NCHW)."""
    root = Path(path)
    check_resolution(resolution)
    if not root.is_dir():
        raise InvalidInputError(f"path: {root} is not a folder")
    names = list_images(root)
    if not names:
        raise InvalidInputError(f"path: the folder {root} holds no PNG/JPEG images")
    labels, num_classes = None, None
    if use_labels:
        meta = root / "dataset.json"
        if meta.is_file():
            labels = labels_from_json(meta.read_bytes(), names, str(meta))
        else:
            labels, num_classes = subfolder_labels(root, names)
    files = [(str(root / name), partial(open, root / name, "rb")) for name in names]
    notes: list[str] = []
    images = decode_images(files, resolution, image_mode, notes)
    return ImageDataset.from_uint8(images, labels, num_classes, xflip, source=str(root), notes=notes)
