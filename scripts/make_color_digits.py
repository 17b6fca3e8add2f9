"""Write the colored-digits training set: the embedded digits, each stroke painted one random hue.

    python scripts/make_color_digits.py OUT.npz [--split train] [--seed 0]

An ADM-style `.npz` (arr_0: uint8 NHWC RGB 16×16, arr_1: labels) that `cm train --data OUT.npz`
reads. Pixel = intensity × color, with the color a fully saturated hue drawn uniformly per image
(HSV with S = 1, V = 1), on black. Grayscale digits carry no color, so an RGB model is needed for
colorization; this set gives the `digits-color` embedded model something to learn.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from consistency_models import InvalidInputError
from consistency_models.data import load_dataset
from consistency_models.io.images import save_images


def hue_to_rgb(hue: np.ndarray) -> np.ndarray:
    """Hues in [0, 1) → (N, 3) RGB in [0, 1] at full saturation and value (the HSV hexcone)."""
    k = (np.array([5.0, 3.0, 1.0]) + hue[:, None] * 6) % 6
    return 1 - np.clip(np.minimum(k, 4 - k), 0, 1)


def color_digits(split: str = "train", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    data = load_dataset(f"digits:{split}" if split != "train" else "digits")
    intensity = (data.x.numpy()[:, 0] / 2 + 0.5).clip(0, 1)              # (N, 16, 16)
    colors = hue_to_rgb(np.random.default_rng(seed).random(len(intensity)))  # (N, 3)
    images = intensity[..., None] * colors[:, None, None, :]
    return np.rint(images * 255).astype(np.uint8), data.labels.numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", help="the .npz to write")
    parser.add_argument("--split", choices=["train", "test"], default="train")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if Path(args.out).suffix != ".npz":
        parser.error(f"out: {args.out!r} must end in .npz (the training set: images and their labels)")
    images, labels = color_digits(args.split, args.seed)
    try:
        save_images(images, Path(args.out), labels)
    except InvalidInputError as exc:
        parser.exit(2, f"make_color_digits: error: {exc}\n")
    print(f"wrote {len(images)} colored digits to {args.out}")


if __name__ == "__main__":
    main()
