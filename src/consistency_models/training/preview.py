"""The sample pictures a run writes while it trains: a grid of images or a scatter plot of 2-D points."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..io.images import make_grid, save_png, to_uint8
from ..pipeline import ConsistencyModelPipeline


def scatter_png(points: np.ndarray, reference: np.ndarray, path: Path, size: int = 384, extent: float = 2.0) -> None:
    """Samples (blue dots) over data (gray) on a square canvas spanning ±extent: the first two
    coordinates (one-dimensional points on a horizontal line)."""
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)

    def pixels(pts: np.ndarray) -> np.ndarray:
        pts = np.concatenate([pts, np.zeros((len(pts), 2))], axis=1)[:, :2] if pts.shape[1] < 2 else pts[:, :2]
        pix = np.clip((pts / (2 * extent) + 0.5) * (size - 1), 0, size - 1)
        pix[:, 1] = size - 1 - pix[:, 1]
        return pix

    for x, y in pixels(reference):
        draw.point((float(x), float(y)), fill=(170, 170, 170))
    for x, y in pixels(points):
        draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=(30, 80, 200))
    save_png(np.asarray(image), path)


@torch.no_grad()
def preview(
    pipe: ConsistencyModelPipeline,
    path: Path,
    seed: int,
    reference: np.ndarray | None = None,
    count: int | None = None,
) -> None:
    """Sample with the pipeline's default sampler (a consistency model: 1 step; an EDM denoiser: 18
    Heun steps), labels cycling through the classes, to a PNG grid — or, for points, a scatter
    plot over `reference` data."""
    count = count or (64 if pipe.is_image_model else 512)
    num_classes = pipe.unet.config.num_classes
    labels = torch.arange(count) % num_classes if num_classes else None
    pipe.set_progress_bar_config(disable=True)
    x = pipe(batch_size=count, class_labels=labels, generator=torch.Generator().manual_seed(seed),
             output_type="np").images
    path.parent.mkdir(parents=True, exist_ok=True)
    if pipe.is_image_model:
        save_png(make_grid(to_uint8(x), nrow=int(np.ceil(np.sqrt(count)))), path)
    else:
        scatter_png(x, reference if reference is not None else np.zeros((0, 2)), path)
