"""Train the shipped `DigitsClassifier` (the feature extractor of the digits quality metrics).

Trains on the train split of `digits` only (1,497 images, random ±1 px shifts), reports the
accuracy on the 300 held-out `digits:test` images, and writes
`src/consistency_models/weights/digits_classifier.safetensors` (the shipped file) atomically plus
the classifier's section of `src/consistency_models/weights/README.md` (with `--out FILE`: that
file, and the section printed):

    python scripts/train_digits_classifier.py            # seed 0, 30 epochs, 2 threads

Reproducible: one seeded generator draws the initial weights, the batch order, the shifts and
the dropout masks, on two CPU threads.
"""

from __future__ import annotations

import argparse
import datetime
import re
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from consistency_models.data import load_dataset
from consistency_models.io.atomic import atomic_path
from consistency_models.metrics.digits_classifier import DigitsClassifier, default_weights_path

SECTION = "## Digits classifier"


def random_shift(x: torch.Tensor, generator: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Shift each image by an independent random (dy, dx) in [−max_shift, max_shift], filling with −1."""
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    dy = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]   # (B, H, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, :]   # (B, 1, W)
    return padded[torch.arange(b)[:, None, None], 0, rows, cols][:, None]


@torch.no_grad()
def accuracy(model: DigitsClassifier, x: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of images whose arg-max class is their label."""
    model.eval()
    return float((model(x).argmax(dim=1) == labels).float().mean())


def train(seed: int, epochs: int, batch_size: int, lr: float) -> DigitsClassifier:
    """Adam with a cosine learning-rate decay and label smoothing 0.05, on the train split."""
    x, labels = load_dataset("digits").tensors()
    torch.manual_seed(seed)  # initial weights and dropout masks
    generator = torch.Generator().manual_seed(seed)  # batch order and shifts
    model = DigitsClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = -(-x.shape[0] // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(x.shape[0], generator=generator)
        total = 0.0
        for i in range(steps_per_epoch):
            idx = order[i * batch_size:(i + 1) * batch_size]
            xb = random_shift(x[idx], generator)
            loss = F.cross_entropy(model(xb), labels[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * idx.numel()
        if (epoch + 1) % 10 == 0 or epoch + 1 == epochs:
            print(f"epoch {epoch + 1:3d}  loss {total / x.shape[0]:.4f}  train acc {accuracy(model, x, labels):.4f}",
                  flush=True)
    return model.eval()


def readme_section(args: argparse.Namespace, test_acc: float, train_acc: float, command: str, size: int) -> str:
    """The classifier's section of `weights/README.md`."""
    return f"""{SECTION}

`digits_classifier.safetensors` ({size:,} bytes): the `DigitsClassifier` of
`consistency_models.metrics.digits_classifier` (3×3 convs with batch norm: conv 32 → pool →
conv 64 → pool → conv 128 → global average pool = 128-d features → linear 10), the feature
extractor of `bench/quality_digits.py` (label accuracy and Fréchet distance of its features).

- Trained on the train split of `digits` only (1,497 images, random ±1 px shifts): {args.epochs} epochs
  of Adam, lr {args.lr:g} with cosine decay, batch {args.batch_size}, label smoothing 0.05;
  the 300 held-out `digits:test` images were used for nothing but the accuracy below.
- Held-out accuracy (digits:test, 300 images): **{test_acc * 100:.2f} %**; train split: {train_acc * 100:.2f} %.
- Seed: {args.seed}, 2 CPU threads, torch {torch.__version__}, {datetime.date.today().isoformat()}.
- Command: `{command}` (replaces the shipped file; `--out FILE` writes elsewhere)
"""


def write_readme(path: Path, section: str) -> None:
    """Replace (or add) the classifier's section of the weights README, keeping the others."""
    text = path.read_text() if path.exists() else "# Shipped weights\n\nWeights shipped inside the package, and how each file was made.\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text).rstrip("\n") + "\n"
    else:
        text = text.rstrip("\n") + "\n\n" + section
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--out", type=Path, default=default_weights_path(), help="the safetensors file to write")
    args = parser.parse_args()
    for name, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size)):
        if value < 1:
            parser.error(f"{name}: {value} must be at least 1")
    if not args.lr > 0:
        parser.error(f"--lr: {args.lr} must be a positive learning rate")
    torch.set_num_threads(2)
    command = shlex.join(["python", "scripts/train_digits_classifier.py", *sys.argv[1:]])

    start = time.perf_counter()
    model = train(args.seed, args.epochs, args.batch_size, args.lr)
    x_train, y_train = load_dataset("digits").tensors()
    x_test, y_test = load_dataset("digits:test").tensors()
    train_acc = accuracy(model, x_train, y_train)
    test_acc = accuracy(model, x_test, y_test)
    print(f"held-out accuracy (digits:test): {test_acc:.4f}  train: {train_acc:.4f}  "
          f"({time.perf_counter() - start:.0f} s)")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    # One metadata key: safetensors writes several in random order, and the file should be byte-reproducible.
    metadata = {"source": f"{command}  # seed {args.seed}, held-out accuracy {test_acc:.4f}"}
    with atomic_path(args.out) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    size = args.out.stat().st_size
    section = readme_section(args, test_acc, train_acc, command, size)
    if args.out.resolve() != default_weights_path().resolve():   # another file: its own folder's README stays
        print(f"wrote {args.out} ({size:,} bytes); its section of the weights README:\n{section}")
        return
    write_readme(args.out.parent / "README.md", section)
    print(f"wrote {args.out} ({size:,} bytes) and {args.out.parent / 'README.md'}")


if __name__ == "__main__":
    main()
