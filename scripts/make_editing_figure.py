"""Draw the README's editing figure: every zero-shot edit on the embedded digits model.

    python scripts/make_editing_figure.py [--out docs/images/editing.png] [--model digits] [--seed 0]
        [--color-model digits-color] [--count 4]

One row per edit (inpainting, super-resolution, colorization, stroke-guided generation,
denoising), each with up to four held-out digits as triples: original | masked or degraded input
| result; the last row is an interpolation between two noise draws. Colorization needs an RGB
model: its row is drawn with --color-model, the others with --model. Everything is made through
`consistency_models.editing`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from consistency_models import ConsistencyModelPipeline, InvalidInputError, editing
from consistency_models.data import load_dataset
from consistency_models.io.atomic import atomic_path
from consistency_models.io.images import to_uint8
from make_color_digits import color_digits

SCALE = 4          # pixels per model pixel in the figure
GAP = 6            # pixels between triples
LABEL_WIDTH = 150  # pixels for the row titles


def stroke_paintings(size: int = 16) -> tuple[torch.Tensor, list[int]]:
    """Coarse hand-drawn strokes of a 0, 1, 4 and 7 (white on black), and their labels."""
    drawings = {
        0: lambda d: d.ellipse((4, 2, 11, 13), outline=255, width=2),
        1: lambda d: d.line((8, 2, 8, 13), fill=255, width=2),
        4: lambda d: (d.line((10, 2, 10, 13), fill=255, width=2), d.line((4, 2, 4, 8), fill=255, width=2),
                      d.line((4, 8, 12, 8), fill=255, width=2)),
        7: lambda d: (d.line((3, 3, 12, 3), fill=255, width=2), d.line((12, 3, 6, 13), fill=255, width=2)),
    }
    images = []
    for draw in drawings.values():
        canvas = Image.new("L", (size, size), 0)
        draw(ImageDraw.Draw(canvas))
        images.append(torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255)[None])
    return torch.stack(images), list(drawings)


def tile(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [0, 1] → one uint8 RGB row, images side by side, magnified."""
    images = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
    row = torch.cat(list(images), dim=2)  # (C, H, N·W)
    row = row.expand(3, -1, -1) if row.shape[0] == 1 else row
    array = to_uint8(row.permute(1, 2, 0).numpy())
    return array.repeat(SCALE, 0).repeat(SCALE, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="docs/images/editing.png")
    parser.add_argument("--model", default="digits")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--color-model", default="digits-color", help="RGB model for the colorization row")
    parser.add_argument("--count", type=int, default=4, choices=range(1, 5), metavar="{1,2,3,4}",
                        help="digits per row (default 4: the held-out 2, 5, 6, 9 and four stroke paintings)")
    args = parser.parse_args()
    try:
        draw_figure(args)
    except InvalidInputError as exc:
        parser.exit(2, f"make_editing_figure: error: {exc}\n")


def draw_figure(args: argparse.Namespace) -> None:
    pipe = ConsistencyModelPipeline.from_pretrained(args.model)
    channels = pipe.sample_shape[0]
    data = load_dataset("digits:test")
    pick = torch.tensor([int((data.labels == d).nonzero()[0]) for d in (2, 5, 6, 9)][: args.count])
    images = (data.x[pick] / 2 + 0.5).expand(-1, channels, -1, -1)
    labels = data.labels[pick] if pipe.unet.config.num_classes else None

    def generator() -> torch.Generator:
        return torch.Generator().manual_seed(args.seed)

    rows: list[tuple[str, torch.Tensor]] = []
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 4:12, 4:12] = 1
    shown_mask = images * (1 - mask) + mask * 0.5  # mid-gray: the region to regenerate
    print("inpaint …", file=sys.stderr, flush=True)
    result = editing.inpaint(pipe, images, mask, generator=generator(), class_labels=labels)
    rows.append(("inpainting\n(gray: regenerated)", torch.stack([images, shown_mask, result], 1)))

    low = F.avg_pool2d(images, 4)
    print("super_resolve …", file=sys.stderr, flush=True)
    result = editing.super_resolve(pipe, low, 4, generator=generator(), class_labels=labels)
    rows.append(("super-resolution\n4x (4x4 input)", torch.stack([images, F.interpolate(low, scale_factor=4.0), result], 1)))

    color_pipe = ConsistencyModelPipeline.from_pretrained(args.color_model)
    colored, color_labels = color_digits("test", seed=1)
    colored = torch.from_numpy(colored[pick.numpy()]).permute(0, 3, 1, 2).float() / 255
    gray = editing._luminance(colored)
    print("colorize …", file=sys.stderr, flush=True)
    result = editing.colorize(color_pipe, gray, generator=generator(),
                              class_labels=torch.from_numpy(color_labels[pick.numpy()]))
    rows.append((f"colorization\n({args.color_model})", torch.stack([colored, gray.expand(-1, 3, -1, -1), result], 1)))

    strokes, stroke_labels = stroke_paintings()
    strokes = strokes[: args.count].expand(-1, channels, -1, -1)
    stroke_labels = torch.tensor(stroke_labels[: args.count]) if labels is not None else None
    print("stroke_guided …", file=sys.stderr, flush=True)
    result = editing.stroke_guided(pipe, strokes, generator=generator(), class_labels=stroke_labels)
    rows.append(("stroke-guided\n(strokes to image)", torch.stack([strokes, strokes, result], 1)))

    sigma = 0.4
    noise = torch.randn(images.shape, generator=generator())
    noisy = ((images * 2 - 1 + sigma * noise) / 2 + 0.5).clamp(0, 1)
    print("denoise …", file=sys.stderr, flush=True)
    result = editing.denoise(pipe, noisy, sigma, class_labels=labels)
    rows.append((f"denoising\n(sigma = {sigma})", torch.stack([images, noisy, result], 1)))

    print("interpolate …", file=sys.stderr, flush=True)
    frames = editing.interpolate(pipe, num=3 * args.count, generator=generator(),
                                 class_labels=3 if labels is not None else None)

    # -- layout: row title, then triples (original | input | result) separated by gaps
    cell = 16 * SCALE
    font = ImageFont.load_default()
    heading = "each triple: original | degraded input | result   (embedded digits model, held-out digits)"
    width = LABEL_WIDTH + max(args.count * (3 * cell + GAP), int(font.getlength(heading)) + GAP)
    height = (len(rows) + 1) * (cell + GAP) + 24
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((LABEL_WIDTH, 4), heading, fill=(0, 0, 0), font=font)
    y = 24
    for title, triples in rows:
        draw.multiline_text((4, y + 8), title, fill=(0, 0, 0), font=font)
        for i, triple in enumerate(triples):
            canvas.paste(Image.fromarray(tile(triple)), (LABEL_WIDTH + i * (3 * cell + GAP), y))
        y += cell + GAP
    draw.multiline_text((4, y + 8), "interpolation\n(class 3, one step)", fill=(0, 0, 0), font=font)
    canvas.paste(Image.fromarray(tile(frames)), (LABEL_WIDTH, y))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        canvas.save(tmp, format="PNG")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
