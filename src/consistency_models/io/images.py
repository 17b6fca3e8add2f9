"""Writing sampled images (a PNG grid, a folder of PNGs, an ADM-style `.npz`) and reading one image.

Every file is written to a temporary name and renamed, so an interrupted run never leaves a
half-written image behind.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InvalidInputError, about
from .atomic import atomic_path, write_error, write_npz
from .overwrite import names_a_folder, require_parent_folder


def to_uint8(images: np.ndarray) -> np.ndarray:
    """NHWC floats in [0, 1] → uint8, rounded to nearest (as diffusers' `numpy_to_pil`)."""
    return np.clip(np.rint(images * 255), 0, 255).astype(np.uint8)


def make_grid(images: np.ndarray, nrow: int | None = None, padding: int = 2) -> np.ndarray:
    """Tile uint8 NHWC images into one HWC image, `nrow` per row (default ⌈√N⌉)."""
    n, h, w, c = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = np.zeros((rows * (h + padding) + padding, nrow * (w + padding) + padding, c), dtype=np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, nrow)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        grid[y:y + h, x:x + w] = img
    return grid


def read_image(
    path: str | os.PathLike,
    channels: int,                # 1: grayscale (RGB is converted by luminance), 3: RGB (gray is replicated)
    size: int,                    # the square size the caller needs
    resize: bool = False,         # center-crop and resize a different size instead of refusing it
    argument: str = "image",      # the name in error messages
    resample: int = Image.LANCZOS,
) -> Image.Image:
    """One PNG/JPEG file → a PIL image of mode L or RGB, size × size; another size is an error unless `resize`."""
    if channels not in (1, 3):
        raise InvalidInputError(f"{argument}: images with {channels} channels cannot be read from PNG/JPEG files")
    image = _open(path, argument).convert("L" if channels == 1 else "RGB")
    return _sized(image, path, size, resize, argument, resample)


def read_mask(path: str | os.PathLike, size: int, resize: bool = False, argument: str = "mask") -> Image.Image:
    """A mask file → mode L, size × size (resized without interpolation): each pixel's brightest
    channel over black, times its opacity — a red or blue brush marks as white does (luminance
    would leave pure red below 50 %), and strokes on a transparent layer mark where they are."""
    rgba = np.asarray(_open(path, argument).convert("RGBA")).astype(np.float64)
    value = rgba[..., :3].max(axis=2) * rgba[..., 3] / 255
    return _sized(Image.fromarray(np.rint(value).astype(np.uint8), mode="L"), path, size, resize, argument,
                  Image.NEAREST)


def _open(path: str | os.PathLike, argument: str) -> Image.Image:
    """One image file, decoded; a missing, empty or non-file path is one line naming `argument`."""
    from ..data.decode import open_image

    where = Path(path)
    if not str(path).strip():
        raise InvalidInputError(f"{argument}: '' is empty; give a PNG/JPEG file")
    if where.is_dir():
        raise InvalidInputError(f"{argument}: {path} is a folder, not an image file")
    if where.exists() and not where.is_file():
        raise InvalidInputError(f"{argument}: {path} is not a regular file")
    if not where.is_file():
        raise InvalidInputError(f"{argument}: no such file {str(path)!r}")
    try:
        return open_image(lambda: open(path, "rb"), str(path))
    except InvalidInputError as exc:  # named as the argument the file was given with
        raise about(argument, exc, "path") from None


def _sized(image: Image.Image, path: str | os.PathLike, size: int, resize: bool, argument: str,
           resample: int) -> Image.Image:
    """`image` if it is size × size; else center-cropped and resized with `resize`, or refused."""
    from ..data.decode import center_crop_resize

    if image.size != (size, size):
        if not resize:
            raise InvalidInputError(
                f"{argument}: {path} is {image.size[0]}×{image.size[1]} but {size}×{size} is needed; "
                "give --resize to center-crop and resize it"
            )
        image = center_crop_resize(image, size, resample)
    return image


def pil_image(image: np.ndarray) -> Image.Image:
    """One uint8 HWC image → PIL ('L' for one channel)."""
    return Image.fromarray(image[..., 0], mode="L") if image.shape[-1] == 1 else Image.fromarray(image)


def save_png(image: np.ndarray, path: Path, replace: bool = True, argument: str = "out") -> None:
    """One PNG, atomically; with `replace` False a file that appeared meanwhile is kept (`atomic_path`)."""
    with atomic_path(path, replace=replace, argument=argument) as tmp:
        pil_image(image).save(tmp, format="PNG")


def output_kind(out: str | os.PathLike, folders: bool = True) -> str:
    """'grid' for *.png, 'npz' for *.npz, 'dir' for a folder (trailing slash or existing folder).
    `folders` False: the caller writes no folder output (it refuses one itself)."""
    text = str(out)
    if not text.strip():
        raise InvalidInputError("out: '' is empty; give samples.png (a grid), DIR/ (PNGs) or samples.npz")
    path = Path(text)
    if folders and path.is_dir() and not names_a_folder(text) and path.suffix.lower() in (".png", ".npz"):
        raise InvalidInputError(f"out: {text} is a folder, but its name asks for a {path.suffix.lower()} file; give "
                                f"another name, or {text}/ to write one PNG per image into that folder")
    if names_a_folder(text) or path.is_dir():
        kind = "dir"
        here = Path.cwd().resolve()
        if path.resolve() == here or path.resolve() in here.parents:  # replaced as a whole: never the working folder
            raise InvalidInputError(f"out: {text!r} is the current folder or one above it; a folder of PNGs is "
                                    "written as a whole, give a new one such as samples/")
    elif path.name.lower() in (".png", ".npz"):   # Path(".png").suffix is ''
        raise InvalidInputError(f"out: {text!r} has no name before its {path.name.lower()}; give e.g. "
                                f"samples{path.name.lower()}")
    elif path.suffix.lower() == ".png":
        kind = "grid"
    elif path.suffix.lower() == ".npz":
        kind = "npz"
    else:
        raise InvalidInputError(f"out: {text!r} must end in .png (a grid), .npz (ADM arrays) or / (a folder of PNGs)")
    require_parent_folder(path, "out")
    return kind


def save_points(points: np.ndarray, out: str | os.PathLike, labels: np.ndarray | None = None,
                replace: bool = True) -> None:
    """Low-dimensional samples (N, D) as an .npz: arr_0 float32, arr_1 labels when given (`replace`
    False: a file that appeared at `out` meanwhile is kept, the write refused)."""
    if output_kind(out) != "npz":
        raise InvalidInputError(f"out: {str(out)!r} must end in .npz for a model that makes points, not images")
    arrays = {"arr_0": np.asarray(points, dtype=np.float32)}
    if labels is not None:
        arrays["arr_1"] = np.asarray(labels, dtype=np.int64)
    write_npz(out, arrays, replace, "out")


FOLDER_IMAGE = r"\d{6}\.png"   # the names save_images gives the images of a folder output


def save_images(images: np.ndarray, out: str | os.PathLike, labels: np.ndarray | None = None,
                replace: bool = True) -> list[Path]:
    """Write uint8 NHWC `images` as `out` says (see `output_kind`); returns the files written.
    `replace` False: a grid or .npz that appeared at `out` meanwhile is kept, the write refused."""
    kind = output_kind(out)
    path = Path(out)
    if kind == "grid":
        save_png(make_grid(images), path, replace)
        return [path]
    if kind == "npz":
        arrays = {"arr_0": images}
        if labels is not None:
            arrays["arr_1"] = np.asarray(labels, dtype=np.int64)
        write_npz(path, arrays, replace, "out")
        return [path]
    try:
        path.mkdir(exist_ok=True)
    except OSError as exc:  # the folder above is not writable, ...: one line naming the user's folder
        raise write_error(exc, path) from exc
    files = []
    for i, img in enumerate(images):
        file = path / f"{i:06d}.png"  # FOLDER_IMAGE
        save_png(img, file)
        files.append(file)
    return files
