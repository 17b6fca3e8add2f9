"""Decoding PNG/JPEG files into one uint8 NHWC array, and EDM's `dataset.json` labels.

Rules shared by the image folder and the zip: the channels follow `image_mode` — "auto": RGB
(3 channels) unless every image is grayscale (1 channel), so a mix of gray, RGB and RGBA files
becomes RGB (gray replicated, alpha dropped, as EDM's `dataset_tool.py`); "rgb" or "gray": every
image converted to it; "same": a mix is refused, naming the first file that differs. All images
must have one size unless `resolution` is given, in which case each is center-cropped to a
square and resized to resolution × resolution with Lanczos (as EDM's `dataset_tool.py
--transform=center-crop`).
"""

from __future__ import annotations

import json
import warnings
import zipfile
import zlib
from collections.abc import Callable, Sequence
from typing import IO

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from ..errors import InvalidInputError, is_integer

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")
IMAGE_MODES = ("auto", "rgb", "gray", "same")   # how a data set's images get one channel count


def is_image_name(name: str) -> bool:
    """True for *.png, *.jpg, *.jpeg (any case), skipping hidden files such as macOS `._x.png`."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    return base.lower().endswith(IMAGE_SUFFIXES) and not base.startswith(".")


def check_resolution(resolution: int | None) -> int | None:
    if resolution is not None and (not is_integer(resolution) or resolution < 1):
        raise InvalidInputError(f"resolution: {resolution!r} must be a positive number of pixels or None")
    return None if resolution is None else int(resolution)


def center_crop_resize(image: Image.Image, resolution: int, resample: int = Image.LANCZOS) -> Image.Image:
    """Crop the largest centered square, then resize it to resolution × resolution (Lanczos by default)."""
    w, h = image.size
    if (w, h) == (resolution, resolution):
        return image
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    square = image.crop((left, top, left + side, top + side))
    return square.resize((resolution, resolution), resample)


def open_image(open_file: Callable[[], IO[bytes]], name: str) -> Image.Image:
    """Open and fully decode one image; an unreadable file (or a damaged or encrypted zip member,
    or one too large to decode) is an InvalidInputError naming it."""
    try:
        # Pillow warns (two lines) about 89-179 Mpixel images and refuses larger ones: a photo that
        # large is data asked for, decoded once and resized; only the refusal is said, in one line.
        with open_file() as f, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(f)
            image.load()
    except Image.DecompressionBombError as exc:
        raise InvalidInputError(f"path: {name} is too large to decode ({str(exc).splitlines()[0]})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, zipfile.BadZipFile, zlib.error) as exc:
        raise InvalidInputError(f"path: {name} is not a readable PNG/JPEG image ({type(exc).__name__})") from None
    except RuntimeError as exc:  # zipfile: an encrypted member
        raise InvalidInputError(f"path: {name} cannot be read ({exc})") from None
    return eight_bits(image)


SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


def eight_bits(image: Image.Image) -> Image.Image:
    """A 16-bit grayscale image scaled to 8 bits (v·255/65535, rounded): Pillow's convert("L")
    clips such values at 255 instead of scaling them."""
    if image.mode not in SIXTEEN_BIT_MODES:
        return image
    values = np.asarray(image, dtype=np.float64)
    return Image.fromarray(np.rint(values * (255 / 65535)).astype(np.uint8), mode="L")


def check_image_mode(image_mode: str) -> str:
    if image_mode not in IMAGE_MODES:
        raise InvalidInputError(f"image_mode: {image_mode!r} is not allowed; use one of {', '.join(IMAGE_MODES)}")
    return image_mode


def decode_images(
    files: Sequence[tuple[str, Callable[[], IO[bytes]]]],  # (name for messages, opener) per image
    resolution: int | None = None,                          # None = all must share one size
    image_mode: str = "auto",                               # see the module's docstring
    notes: list[str] | None = None,                         # gets one line when "auto" turns a mix into RGB
) -> np.ndarray:
    """Decode `files` into one uint8 array (N, H, W, C), C = 1 or 3 (see `image_mode`)."""
    check_image_mode(image_mode)
    size, first, first_gray = None, "", None
    example = {}                                            # gray / color → the first such file
    out = []
    # A bar on a terminal (tqdm's disable=None) for sets that take a while to decode.
    for name, open_file in tqdm(files, desc="decoding images", unit="img", disable=None if len(files) > 1000 else True,
                                leave=False, dynamic_ncols=True):
        image = open_image(open_file, name)
        gray = image.mode in GRAY_MODES
        example.setdefault(gray, name)
        if first_gray is None:
            first, first_gray = name, gray
        elif image_mode == "same" and gray != first_gray:
            kinds = {True: "grayscale", False: f"color ({image.mode})"}
            raise InvalidInputError(f"path: {name} is {kinds[gray]} but {first} is "
                                    f"{'grayscale' if first_gray else 'color'}; use --image-mode auto (RGB unless "
                                    "all are gray), rgb or gray to convert them")
        keep_gray = image_mode == "gray" or (gray and image_mode != "rgb")
        image = image.convert("L" if keep_gray else "RGB")
        if resolution is not None:
            image = center_crop_resize(image, resolution)
        if size is None:
            size = image.size
        elif image.size != size:
            raise InvalidInputError(
                f"path: {name} is {image.size[0]}×{image.size[1]} but {first} is {size[0]}×{size[1]}; the images "
                "must have one size (cm train --resolution N center-crops and resizes them)"
            )
        array = np.asarray(image, dtype=np.uint8)
        out.append(array[..., None] if array.ndim == 2 else array)
    channels = max(a.shape[-1] for a in out)  # auto: RGB as soon as one image is in color
    if notes is not None and image_mode == "auto" and len(example) == 2:
        notes.append(f"{len(out)} images mix grayscale ({example[True]}) and color ({example[False]}) files: all "
                     "are read as RGB, gray replicated (--image-mode gray keeps one channel, same refuses a mix)")
    return np.stack([np.repeat(a, channels, axis=-1) if a.shape[-1] != channels else a for a in out])


def labels_from_json(text: bytes | str, names: Sequence[str], where: str) -> np.ndarray | None:
    """EDM's `dataset.json` `{"labels": [["path", label], ...]}` (or `null`) → one int64 label per name."""
    try:
        table = json.loads(text).get("labels")
        if table is None:
            return None
        table = {str(path).replace("\\", "/"): label for path, label in table}
    except (ValueError, TypeError, AttributeError):
        raise InvalidInputError(
            f'path: {where} is not of the form {{"labels": [["path", label], ...]}}'
        ) from None
    labels = []
    for name in names:
        if name not in table:
            raise InvalidInputError(f"path: {where} has no label for the image {name}")
        label = table[name]
        if isinstance(label, bool) or not isinstance(label, int) or label < 0:
            raise InvalidInputError(f"path: {where} gives {name} the label {label!r}; labels must be integers ≥ 0")
        labels.append(label)
    return np.asarray(labels, dtype=np.int64)


def crop_resize_array(images: np.ndarray, resolution: int) -> np.ndarray:
    """`center_crop_resize` applied to every image of a uint8 (N, H, W, C) array."""
    n, h, w, c = images.shape
    if (h, w) == (resolution, resolution):
        return images
    out = np.empty((n, resolution, resolution, c), dtype=np.uint8)
    for i, image in enumerate(images):
        pil = Image.fromarray(image[..., 0] if c == 1 else image)
        resized = np.asarray(center_crop_resize(pil, resolution), dtype=np.uint8)
        out[i] = resized[..., None] if c == 1 else resized
    return out
