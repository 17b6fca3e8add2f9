"""Sample quality of a digits consistency model (and its diffusion teacher): one markdown table.

    python bench/quality_digits.py                                   # the embedded "digits" model and teacher
    python bench/quality_digits.py --model RUN/cd --teacher RUN/teacher --json quality.json

Rows: the consistency model at 1 step, 2 steps (the scheduler's default grid) and 2 steps with
the intermediate σ that gives the lowest Fréchet distance among `--search-sigmas` and the
default grid's (σ = [σ_max, s]); the teacher's deterministic Heun sampler (EDM Algorithm 1) on the 18- and
40-point Karras grids when `--teacher` is given; and real training digits as the floor.

Columns: NFE (network evaluations per sample); label accuracy = share of the 1,000
class-conditional samples (100 per label 0–9) that the shipped `DigitsClassifier` assigns to
the label they were drawn for (the floor row: its accuracy on the real training digits);
Fréchet distance between Gaussians fitted to the classifier's 128-d penultimate features of
the 1,000 samples and of the 300 held-out `digits:test` images (the floor row uses 1,000
training digits, 100 per class). Every row starts from the same seeded noise (one generator
per row, drawn batch by batch), so the numbers are reproducible by rerunning the printed
command; they depend on --seed and --batch-size, not on --threads.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from consistency_models import ConsistencyModelPipeline, InvalidInputError
from consistency_models.data import load_dataset
from consistency_models.io.atomic import write_json
from consistency_models.kinds import KINDS
from consistency_models.metrics import frechet_distance, gaussian_statistics
from consistency_models.metrics.digits_classifier import DigitsClassifier, load_digits_classifier
from consistency_models.parametrization import karras_sigmas
from consistency_models.sampling import sample_heun
from consistency_models.schedule import NoiseLevels

NUM_CLASSES = 10
HEUN_GRIDS = (18, 40)
FEW_STEP = ("consistency", "trigflow", "trigflow_edm")  # the --model rows: a consistency model or an sCM
SHAPE = (1, 16, 16)

# Draws (num_samples, labels, generator) → images in [0, 1], (N, 1, 16, 16).
Sampler = Callable[[int, torch.Tensor, torch.Generator], torch.Tensor]


@dataclass
class Row:
    sampler: str
    nfe: int | None
    label_accuracy: float
    frechet: float
    seconds: float


class Scorer:
    """Label accuracy and Fréchet distance to the held-out digits of images in [−1, 1]."""

    def __init__(self, classifier: DigitsClassifier, batch_size: int) -> None:
        self.classifier = classifier
        self.batch_size = batch_size
        x_test, _ = load_dataset("digits:test").tensors()
        self.mu_ref, self.sigma_ref = gaussian_statistics(self.features_and_logits(x_test)[0])

    @torch.no_grad()
    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats, logits = [], []
        for chunk in x.split(self.batch_size):
            f = self.classifier.features(chunk)
            feats.append(f)
            logits.append(self.classifier.head(f))
        return torch.cat(feats), torch.cat(logits)

    def score(self, x: torch.Tensor, labels: torch.Tensor | None) -> tuple[float, float]:
        """(label accuracy — NaN without labels —, Fréchet distance to digits:test)."""
        feats, logits = self.features_and_logits(x)
        acc = float("nan") if labels is None else float((logits.argmax(1) == labels).float().mean())
        mu, sigma = gaussian_statistics(feats)
        return acc, frechet_distance(mu, sigma, self.mu_ref, self.sigma_ref)


def load_pipeline(name: str, option: str, parametrization: str | tuple[str, ...]) -> ConsistencyModelPipeline:
    """A pipeline folder (or embedded/Hub name) that must have (one of) the given parametrization(s) and 16-px shape."""
    try:
        pipe = ConsistencyModelPipeline.from_pretrained(name)
    except Exception as exc:  # a missing folder, a damaged file, an unknown name: all end here
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InvalidInputError(
            f"{option}: could not load {name!r} ({reason}); pass a pipeline folder, e.g. a `cm train --out` folder"
        ) from None
    allowed = (parametrization,) if isinstance(parametrization, str) else parametrization
    if pipe.parametrization not in allowed:
        raise InvalidInputError(
            f"{option}: {name!r} has parametrization {pipe.parametrization!r}; this row needs {' or '.join(allowed)}"
        )
    if pipe.sample_shape != SHAPE:
        raise InvalidInputError(f"{option}: {name!r} makes samples of shape {pipe.sample_shape}; digits need {SHAPE}")
    pipe.set_progress_bar_config(disable=True)
    return pipe.to("cpu").to(dtype=torch.float32)


def is_conditional(pipe: ConsistencyModelPipeline, option: str) -> bool:
    """Whether the model takes the digit labels (an unconditional one gets no label accuracy)."""
    num_classes = pipe.unet.config.num_classes
    if num_classes not in (None, NUM_CLASSES):
        raise InvalidInputError(f"{option}: the model has {num_classes} classes; digits models have {NUM_CLASSES} or none")
    return num_classes is not None


def consistency_sampler(pipe: ConsistencyModelPipeline, **schedule) -> Sampler:
    """The pipeline's Algorithm 1 with `num_inference_steps` or `sigmas`, images in [0, 1]."""
    def sample(n: int, labels: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        return pipe(n, class_labels=labels, generator=generator, output_type="pt", **schedule).images
    return sample


def heun_sampler(pipe: ConsistencyModelPipeline, num_points: int) -> Sampler:
    """The deterministic Heun sampler on the `num_points` Karras grid + [0], clipped like the pipeline."""
    cfg = pipe.scheduler.config
    sigmas = karras_sigmas(num_points, cfg.sigma_min, cfg.sigma_max, cfg.rho).tolist() + [0.0]

    def sample(n: int, labels: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        x = pipe.prepare_latents(n, None, generator) * sigmas[0]
        x = sample_heun(pipe.denoiser, x, sigmas, class_labels=labels)
        return (x.clamp(-1, 1) / 2 + 0.5).clamp(0, 1)
    return sample


def run_row(name: str, nfe: int, sampler: Sampler, labels: torch.Tensor, conditional: bool, seed: int,
            batch_size: int, scorer: Scorer) -> Row:
    """Draw len(labels) samples in batches from one seeded generator and score them.

    `conditional`: the model is given the labels (else it draws unconditionally, no accuracy).
    """
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    images = []
    for chunk in labels.split(batch_size):
        images.append(sampler(len(chunk), chunk if conditional else None, generator).float().cpu())
    x = torch.cat(images) * 2 - 1  # [0, 1] → [−1, 1], the classifier's range
    acc, fd = scorer.score(x, labels if conditional else None)
    row = Row(name, nfe, acc, fd, time.perf_counter() - start)
    print(f"  {row.sampler}: done in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return row


def floor_row(scorer: Scorer, per_class: int, seed: int) -> Row:
    """Real training digits (`per_class` of each class, seeded choice) against the held-out ones."""
    start = time.perf_counter()
    x, y = load_dataset("digits").tensors()
    generator = torch.Generator().manual_seed(seed)
    picks = []
    for c in range(NUM_CLASSES):
        index = (y == c).nonzero().flatten()
        picks.append(index[torch.randperm(len(index), generator=generator)[:per_class]])
    pick = torch.cat(picks)
    acc, fd = scorer.score(x[pick], y[pick])
    return Row(f"real: {len(pick):,} training digits", None, acc, fd, time.perf_counter() - start)


def parse_sigmas(text: str) -> list[float]:
    try:
        values = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise InvalidInputError(f"--search-sigmas: {text!r} must be comma-separated numbers, e.g. 0.3,0.5,0.8") from None
    if not values:
        raise InvalidInputError("--search-sigmas: give at least one noise level, e.g. 0.3,0.5,0.8")
    return values


def table(rows: list[Row]) -> str:
    lines = ["| sampler | NFE | label accuracy | Fréchet distance |", "|---|---:|---:|---:|"]
    for r in rows:
        nfe = "—" if r.nfe is None else str(r.nfe)
        acc = "—" if r.label_accuracy != r.label_accuracy else f"{r.label_accuracy * 100:.1f} %"
        lines.append(f"| {r.sampler} | {nfe} | {acc} | {r.frechet:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="digits", help="consistency-model pipeline folder (default: embedded 'digits')")
    parser.add_argument("--teacher", default=None,
                        help="diffusion model pipeline folder (EDM or TrigFlow): adds Heun rows (default: 'digits-teacher' with the "
                             "embedded model, 'none' to skip)")
    parser.add_argument("--search-sigmas", default="0.3,0.5,0.8,1.2,2.0",
                        help="intermediate σ values tried for the 2-step row (σ = [σ_max, s])")
    parser.add_argument("--per-class", type=int, default=100, help="samples per label 0–9 (default 100: 1,000 in all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a busy 2-core machine 2 threads spin and run ~6× slower)")
    parser.add_argument("--json", type=Path, default=None, help="also write the table's numbers to this JSON file")
    args = parser.parse_args(argv)
    for name, value in (("--batch-size", args.batch_size), ("--threads", args.threads)):
        if value < 1:
            parser.error(f"{name}: {value} must be at least 1")
    if args.json is not None and not args.json.parent.is_dir():
        parser.error(f"--json: the folder {args.json.parent} does not exist")
    try:
        return run(args)
    except InvalidInputError as exc:
        print(f"quality_digits: error: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    """Sample, score and print; raises InvalidInputError on bad options or models."""
    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    if args.per_class < 2:
        raise InvalidInputError(f"--per-class: {args.per_class} is too few; give at least 2")
    search = parse_sigmas(args.search_sigmas)
    model = load_pipeline(args.model, "--model", FEW_STEP)
    if args.teacher is None and args.model == "digits":
        args.teacher = "digits-teacher"
    if args.teacher == "none":
        args.teacher = None
    teachers = tuple(kind.name for kind in KINDS.values() if kind.teacher)   # EDM or TrigFlow diffusion
    teacher = None if args.teacher is None else load_pipeline(args.teacher, "--teacher", teachers)
    cfg = model.scheduler.config
    for s in search:
        if not cfg.sigma_min < s < cfg.sigma_max:
            raise InvalidInputError(
                f"--search-sigmas: {s:g} is not in (sigma_min={cfg.sigma_min:g}, sigma_max={cfg.sigma_max:g})"
            )
    scorer = Scorer(load_digits_classifier(), args.batch_size)
    labels = torch.arange(NUM_CLASSES).repeat(args.per_class)  # 0..9, 0..9, …
    conditional = is_conditional(model, "--model")

    def cm_row(name: str, nfe: int, **schedule) -> Row:
        sampler = consistency_sampler(model, **schedule)
        return run_row(name, nfe, sampler, labels, conditional, args.seed, args.batch_size, scorer)

    rows = [cm_row("consistency model, 1 step", 1, num_inference_steps=1)]
    two_step = model.noise_schedule(NoiseLevels(steps=2))[1]  # the grid's for a CM, t = 1.1 for an sCM
    rows.append(cm_row(f"consistency model, 2 steps (σ = {cfg.sigma_max:g}, {two_step:.3g})", 2, num_inference_steps=2))
    tried = {s: cm_row(f"s={s:g}", 2, sigmas=[cfg.sigma_max, s]) for s in search}
    # The default grid's σ competes too, so the searched row is never worse than the default one.
    candidates = {two_step: rows[-1], **tried}
    best = min(candidates, key=lambda s: candidates[s].frechet)
    shown = f"{best:g}" if best in tried else f"{best:.3g}"  # as given, or as the default row shows it
    rows.append(replace(candidates[best], sampler=f"consistency model, 2 steps, searched σ "
                                                  f"(σ = {cfg.sigma_max:g}, {shown})"))
    if teacher is not None:
        teacher_conditional = is_conditional(teacher, "--teacher")
        for n in HEUN_GRIDS:
            rows.append(run_row(f"teacher, Heun, {n}-point grid", 2 * n - 1, heun_sampler(teacher, n),
                                labels, teacher_conditional, args.seed, args.batch_size, scorer))
    rows.append(floor_row(scorer, args.per_class, args.seed))
    seconds = time.perf_counter() - start

    command = shlex.join(["python", "bench/quality_digits.py", *sys.argv[1:]])
    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    print(f"command: `{command}`")
    print(f"torch {torch.__version__}, threads: {torch.get_num_threads()}, {date}")
    print(f"model: {args.model}" + (f", teacher: {args.teacher}" if args.teacher else "")
          + f"; {len(labels):,} samples ({args.per_class} per label), seed {args.seed}; "
          f"Fréchet distance of DigitsClassifier features vs the 300 digits:test images")
    print("σ search (2 steps, σ = [{:g}, s]): ".format(cfg.sigma_max)
          + ", ".join(f"s={s:g}: {tried[s].frechet:.3f}" for s in search)
          + f", default s={two_step:.3g}: {rows[1].frechet:.3f} → best s={shown}")
    print()
    print(table(rows))
    print()
    print(f"runtime: {seconds:.0f} s")
    if args.json is not None:
        write_json(args.json, {
            "command": command, "torch": torch.__version__, "date": date, "seed": args.seed,
            "model": args.model, "teacher": args.teacher, "num_samples": len(labels),
            "search": {f"{s:g}": tried[s].frechet for s in search}, "default_sigma": two_step, "best_sigma": best,
            "rows": [{k: (None if isinstance(v, float) and v != v else v) for k, v in asdict(r).items()} for r in rows],
            "runtime_s": seconds,
        })
    return 0


if __name__ == "__main__":
    sys.exit(main())
