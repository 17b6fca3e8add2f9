"""Write `src/consistency_models/data/digits.npz`: scikit-learn's bundled 8×8 handwritten digits.

Source: `sklearn.datasets.load_digits()` — 1,797 grayscale 8×8 images with values 0..16 and
10 classes. scikit-learn is BSD-3-Clause licensed; the data are the test set of the UCI ML
"Optical Recognition of Handwritten Digits" data set (Alpaydin & Kaynak 1998),
https://archive.ics.uci.edu/dataset/80, licensed CC BY 4.0.

scikit-learn is needed only to run this script, never at runtime:

    pip install scikit-learn
    python scripts/make_digits.py

The file holds `images` (uint8, (1797, 8, 8), values 0..16) and `labels` (int64, (1797,)) in
scikit-learn's order; the train/held-out split is made at load time
(`consistency_models.data.digits`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "consistency_models" / "data" / "digits.npz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the .npz")
    args = parser.parse_args()

    try:
        from sklearn.datasets import load_digits
    except ImportError:
        parser.error("needs scikit-learn, the source of the digits: pip install scikit-learn")

    digits = load_digits()
    raw = np.asarray(digits.images)
    images = raw.astype(np.uint8)
    labels = np.asarray(digits.target, dtype=np.int64)
    if images.shape != (1797, 8, 8) or labels.shape != (1797,):
        raise SystemExit(f"unexpected shapes {images.shape}, {labels.shape} from scikit-learn")
    if not np.array_equal(images, raw) or images.max() > 16:
        raise SystemExit("expected integer pixel values 0..16 from scikit-learn")
    np.savez_compressed(args.out, images=images, labels=labels)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes): images {images.shape} uint8, labels {labels.shape} int64")


if __name__ == "__main__":
    main()
