"""The training loop: optimizer, EMA, distributed, checkpoints, logging — and nothing else.

The loss (a callable from `losses.py`) decides what is learned; this file decides how the
steps are taken. Randomness is a pure function of (seed, step): the data order of each epoch,
and the noise/σ draws of each step come from generators seeded from them, so a resumed run
continues exactly where the interrupted one stopped.
"""

from __future__ import annotations

import copy
import gc
import json
import math
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..data import ImageDataset, PointDataset, load_dataset
from ..distributed import DistributedContext, setup_distributed
from ..errors import InvalidInputError, about
from ..io.atomic import atomic_path, remove_leftovers, write_json
from ..io.lock import hold_folder
from ..io.hub import shadowing_note
from ..kinds import get_kind, teacher_kind
from ..networks.half_compute import half_arithmetic
from ..parametrization import Preconditioned
from ..pipeline import ConsistencyModelPipeline
from .batch_rng import BatchRNG, local_rows
from .fast_step import compiled, compiles
from .checkpoint import capture_rng_state, latest_checkpoint, load_checkpoint, restore_rng_state, save_checkpoint
from .config import TrainConfig
from .interrupts import StopRequests, TrainingInterrupted, stop_requests
from .ema import EMA
from .export import export_run, run_parts
from .methods import Loss, LossInputs, get_method
from .run_networks import LoadedTeacher, build_network, default_preset, load_teacher, use_training_layout
from .optimizer import build_optimizer
from .preview import preview
from .run_folder import CONFIG_NAME, absolute_inputs, absolute_paths, check_run_folder

AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}  # --precision → autocast dtype


def slow_precision_note(precision: str, device: torch.device) -> str | None:
    """What to tell a user whose half-precision autocast this CPU has no arithmetic for (None
    where it has, as `half_arithmetic` asks oneDNN, or on a GPU)."""
    dtype = AUTOCAST_DTYPES.get(precision)
    if device.type != "cpu" or dtype is None or half_arithmetic(dtype):
        return None
    fast = "bfloat16" if half_arithmetic(torch.bfloat16) else "float32"
    measured = {"float16": "a digits step on an AVX-512 CPU: 8x", "bfloat16": "a digits step on an AVX2 CPU: 15x"}
    return (f"precision: this CPU has no {precision} arithmetic, so {precision} autocast runs at several times "
            f"the float32 time ({measured[precision]}); {fast} is its fast precision")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    """A generator for one purpose (`stream`) at one step, the same on every process."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 16 + stream)


def rank_seed(seed: int, rank: int, step: int) -> int:
    """The seed of rank `rank`'s global RNG (dropout's) from `step` on, for ranks ≥ 1: a stream of
    its own (numpy's SeedSequence of (seed, rank, step)), so no two ranks draw the same masks.
    Rank 0 keeps the stream of `torch.manual_seed(seed)`, the one a single process draws."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1, np.uint64)[0])


def epoch_order(num_items: int, seed: int, epoch: int) -> torch.Tensor:
    """The data order of an epoch: a permutation seeded by (seed, epoch)."""
    return torch.randperm(num_items, generator=step_generator(seed, epoch, 15))


def _comparable(settings: dict, dataset: ImageDataset | PointDataset) -> dict:
    """Settings with local input paths absolute and the preset the data chooses written out, so the
    same run given another way compares equal."""
    out = absolute_paths(settings)
    if not (out.get("preset") or out.get("init_from") or out.get("init_from_teacher")):
        out["preset"] = default_preset(dataset)
    return out


def summary_writer_class() -> type:
    """TensorBoard's writer (`--tensorboard`), or a one-line refusal when its package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise InvalidInputError("tensorboard: the tensorboard package is not installed; pip install tensorboard") from None
    return SummaryWriter


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up to `lr` over `warmup_steps`, then constant; times the method's own factor
    for the step (1 but for methods with stages, e.g. TCM's second)."""
    factor = get_method(cfg.method).lr_factor(cfg, step)
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return cfg.lr * factor * (step + 1) / cfg.warmup_steps
    return cfg.lr * factor


class Trainer:
    """Runs one training configuration from scratch or from its newest checkpoint."""

    def __init__(
        self,
        cfg: TrainConfig,
        ctx: DistributedContext | None = None,
        teacher: Callable[..., torch.Tensor] | None = None,
    ) -> None:
        """`teacher`: a denoiser D(x, σ, class_labels) to use instead of loading `cfg.teacher`
        (e.g. the exact denoiser of a known distribution)."""
        self.notes = [note for argument in ("teacher", "init_from")   # said when the run starts
                      if (note := shadowing_note(getattr(cfg, argument), argument.replace("_", "-")))]
        self.cfg = cfg = absolute_inputs(cfg)  # what the run records: the same files from any folder
        self.method = get_method(cfg.method)
        self.ctx = ctx or setup_distributed(cfg.device)
        self.out = Path(cfg.out)
        self.rows = self._local_rows()
        if cfg.tensorboard:
            summary_writer_class()  # refused before anything is written
        self._check_run_folder()
        self.dataset = self._load_data()
        self.data_x, self.data_y = self.dataset.tensors()
        torch.manual_seed(cfg.seed)
        loaded = self._load_teacher()
        teacher_network, self.teacher_kind = (loaded.network, loaded.kind) if loaded else (None, None)
        self.parametrization = self.method.parametrization_of(cfg)
        self.network = use_training_layout(build_network(cfg, self.dataset, teacher_network,
                                                         get_kind(self.parametrization), self.teacher_kind,
                                                         loaded.sigma_data if loaded else None).to(self.ctx.device),
                                           jvp=self.method.takes_jvp)
        if teacher is None and loaded is not None:  # the teacher in its own preconditioning (its folder's σ_data)
            teacher = self.teacher_kind.wrapper(teacher_network, loaded.sigma_data, loaded.sigma_min)
        elif teacher is not None and self.teacher_kind is None:
            self.teacher_kind = teacher_kind()   # a given denoiser D(x, σ): EDM's time
        self.teacher = teacher
        start_only = not self.method.teacher_in_loss   # the teacher is only the network to start from (ECT)
        if self.method.teacher == "required" and teacher is None and not (start_only and cfg.init_from):
            also = " (or --init-from, a saved network to start from)" if start_only else ""
            raise InvalidInputError(f"teacher: --method {cfg.method} ({self.method.summary}) needs --teacher, "
                                    f"a diffusion model folder{also}")
        self.loss, self.target_network = self._build_loss()
        params = [p for p in self.network.parameters() if p.requires_grad] + self.loss.parameters()
        self.optimizer = build_optimizer(cfg.optimizer, params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.ema = EMA(self.network, cfg.ema_rates, warmup=True) if cfg.ema_rates else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.precision == "float16" and self.ctx.device.type == "cuda")
        self.step = 0
        self.saved_step: int | None = None   # the step of this process's newest checkpoint
        self.resume_note = ""                 # where --resume continues, said when the run starts
        if self.ctx.rank > 0:  # after everything the ranks build alike: its own dropout stream
            torch.manual_seed(rank_seed(cfg.seed, self.ctx.rank, 0))
        if cfg.resume:
            self._resume()

    # -- setup ----------------------------------------------------------------------------
    def _check_run_folder(self) -> None:
        cfg = self.cfg
        check_run_folder(self.out, cfg.resume, {"data": cfg.data, "teacher": cfg.teacher, "init_from": cfg.init_from})

    def _load_data(self):
        cfg = self.cfg
        try:
            dataset = load_dataset(cfg.data, resolution=cfg.resolution, use_labels=cfg.use_labels, xflip=cfg.xflip,
                                   image_mode=cfg.image_mode)
        except InvalidInputError as exc:
            raise about("data", exc, ("spec", "path")) from None
        if len(dataset) < cfg.batch_size:
            raise InvalidInputError(f"batch_size: {cfg.batch_size} is larger than the data set ({len(dataset)} items)")
        return dataset

    def _load_teacher(self) -> LoadedTeacher | None:
        if not self.cfg.teacher:
            return None
        try:
            loaded = load_teacher(self.cfg.teacher, self.ctx.device, self.dataset, self.cfg.use_labels)
            return loaded._replace(network=use_training_layout(loaded.network, jvp=self.method.takes_jvp))
        except InvalidInputError as exc:
            raise about("teacher", exc) from None

    def _build_loss(self) -> tuple[Loss, nn.Module | None]:
        """The method's loss, and its EMA target network θ⁻ when it keeps one. With the fast step
        (`compile`) the loss gets compiled wrappers of the student, the target and the teacher."""
        trained = self.network
        if self.ctx.enabled:
            trained = nn.parallel.DistributedDataParallel(
                self.network, device_ids=[self.ctx.device.index] if self.ctx.device.type == "cuda" else None
            )
        target = copy.deepcopy(self.network).requires_grad_(False) if self.method.target_network else None
        teacher = self.teacher
        fast = compiles(self.cfg, self.ctx.device)
        if fast and isinstance(teacher, Preconditioned):
            teacher = type(teacher)(compiled(teacher.network), teacher.sigma_data, teacher.sigma_min)
        inputs = LossInputs(student=compiled(trained) if fast else trained, network=self.network,
                            target=compiled(target) if fast else target, teacher=teacher,
                            config=self.cfg, device=self.ctx.device, distributed=self.ctx.enabled,
                            teacher_kind=self.teacher_kind)
        return self.method.build_loss(inputs), target

    def _local_rows(self) -> slice:
        """This process's rows of each micro-batch; a batch that does not split is refused in one line."""
        cfg, processes = self.cfg, self.ctx.world_size
        if (cfg.batch_size // cfg.accumulation) % processes:
            needed = processes * cfg.accumulation
            split = f"--accumulation {cfg.accumulation} micro-batches over " if cfg.accumulation > 1 else ""
            raise InvalidInputError(f"batch_size: {cfg.batch_size} does not split into {split}{processes} processes; "
                                    f"use a multiple of {needed}")
        return local_rows(cfg.batch_size // cfg.accumulation, self.ctx.rank, processes)

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self, rng_ranks: list[dict] | None = None) -> dict:
        """What a checkpoint holds; `rng_ranks`: every rank's random state (`save` gathers them)
        when several processes train, saved beside rank 0's ("rng")."""
        state = {
            "config": self.cfg.to_dict(),
            "step": self.step,
            "network": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": capture_rng_state(),
            "scaler": self.scaler.state_dict(),
        }
        if rng_ranks is not None:
            state["rng_ranks"] = rng_ranks
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        if self.target_network is not None:
            state["target"] = self.target_network.state_dict()
        if self.loss.state_dict():
            state["loss"] = self.loss.state_dict()  # a loss's own trained parts (sCM's w_φ)
        return state

    def _resume(self) -> None:
        path = latest_checkpoint(self.out)
        if path is None:
            self.resume_note = (f"resume: no complete checkpoint in {self.out / 'checkpoints'} (the run stopped "
                                "before its first); training starts from step 0"
                                if (self.out / CONFIG_NAME).exists() else
                                f"resume: {self.out} holds no run yet; training starts from step 0")
            return
        state = load_checkpoint(path)
        saved = _comparable(TrainConfig.from_dict(state["config"]).to_dict(), self.dataset)
        now = _comparable(self.cfg.to_dict(), self.dataset)
        changed = [k for k in now if k not in TrainConfig.RESUMABLE and saved.get(k) != now[k]]
        if changed:
            details = ", ".join(f"{k}={saved.get(k)!r} (now {now[k]!r})" for k in changed[:4])
            raise InvalidInputError(f"resume: {self.out} was trained with other settings: {details}; resume with "
                                    f"its settings, or train on with new ones in a new run that starts from its "
                                    f"weights: --method {self.cfg.method} --data {self.cfg.data} --init-from "
                                    f"{self.out} --out NEW_FOLDER")
        self.network.load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        if self.target_network is not None:
            self.target_network.load_state_dict(state["target"])
        if "loss" in state:
            self.loss.load_state_dict(state["loss"])
        self.step = self.saved_step = int(state["step"])  # metrics.jsonl is cut back to it when run() holds the lock
        self.resume_note = f"resume: continuing from step {self.step} of {self.cfg.steps} ({path})"
        self._restore_rng(state)

    def _restore_rng(self, state: dict) -> None:
        """Each rank takes back its own random state; where the checkpoint holds none for it (it was
        written by another number of processes), rank 0 takes the saved rank 0's and the others
        start new streams at this step."""
        rank, world_size = self.ctx.rank, self.ctx.world_size
        saved = state.get("rng_ranks", [state["rng"]])
        if len(saved) == world_size:
            restore_rng_state(saved[rank])
            return
        if rank == 0:
            restore_rng_state(state["rng"])
        else:
            torch.manual_seed(rank_seed(self.cfg.seed, rank, self.step))
        held = "the random state of one process (rank 0's)" if len(saved) == 1 else \
            f"the random states of {len(saved)} processes"
        self.resume_note += (f"; the checkpoint holds {held}, this run has {world_size} process(es): the dropout "
                             "masks differ from an uninterrupted run's")

    def _truncate_metrics(self) -> None:
        """Drop log lines written after the step the run continues from (all of them for a run that
        restarts at step 0), and lines a kill tore, so no step is logged twice."""
        log = self.out / "metrics.jsonl"
        if not log.is_file():
            return
        kept = []
        for line in log.read_text(errors="replace").splitlines():
            try:
                step = json.loads(line)["step"]
            except (ValueError, TypeError, KeyError):
                continue  # a line torn by a kill, or not ours
            if isinstance(step, int) and step <= self.step:
                kept.append(line)
        with atomic_path(log) as tmp:
            tmp.write_text("".join(line + "\n" for line in kept))

    def _diverged(self, what: str) -> str:
        if self.step == 0:  # before the first update: the learning rate has changed nothing yet
            largest = float(self.data_x.abs().max()) if self.data_x.numel() else 0.0
            scale = f"--sigma-data {self.cfg.sigma_data:g}" if get_kind(self.parametrization).uses_sigmas else "1"
            return (f"{what} at step 0, before any update (so not for --lr): the data's largest |value| is "
                    f"{largest:.3g}, where the model's scalings expect values of about {scale}; rescale the data "
                    "or check the other settings")
        if latest_checkpoint(self.out) is None:
            return f"{what} at step {self.step}; the run stopped before writing any checkpoint (try a lower --lr)"
        return (f"{what} at step {self.step}; the run stopped and its last good checkpoint in "
                f"{self.out / 'checkpoints'} is kept (try a lower --lr or --grad-clip)")

    def save(self) -> None:
        """Checkpoint (rank 0), then refresh the run folder's pipeline files (EMA weights).

        Weights that are no longer finite are never saved: the run stops instead.
        """
        if not all(bool(torch.isfinite(p).all()) for p in self.network.parameters()):
            raise TrainingDiverged(self._diverged("the weights became non-finite"))
        rng_ranks = self.ctx.gather(capture_rng_state()) if self.ctx.enabled else None
        if self.ctx.is_main:
            save_checkpoint(self.out, self.step, self.state_dict(rng_ranks), keep=self.cfg.keep)
            export_run(self.out, self.exported())
        self.saved_step = self.step
        self.ctx.barrier()

    # -- the loop -----------------------------------------------------------------------------
    def batch(self, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This process's rows of micro-batch `micro` of global step `step`."""
        cfg = self.cfg
        micro_batch = cfg.batch_size // cfg.accumulation
        per_epoch = len(self.dataset) // micro_batch
        index = step * cfg.accumulation + micro
        epoch, position = divmod(index, per_epoch)
        order = epoch_order(len(self.dataset), cfg.seed, epoch)
        rows = order[position * micro_batch:(position + 1) * micro_batch]
        x = self.data_x[rows]
        if cfg.xflip:  # flip the whole global micro-batch, so every process draws alike
            x = self.dataset.augment(x, step_generator(cfg.seed, index, 14))
        x, rows = x[self.rows], rows[self.rows]
        y = self.data_y[rows] if self.dataset.num_classes and cfg.use_labels else None
        device = self.ctx.device
        return x.to(device), (y.to(device) if y is not None else None)

    def train_step(self) -> float:
        cfg = self.cfg
        device = self.ctx.device
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(cfg, self.step)
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=device)
        micro_batch = cfg.batch_size // cfg.accumulation
        autocast_dtype = AUTOCAST_DTYPES.get(cfg.precision)
        for micro in range(cfg.accumulation):
            x, y = self.batch(self.step, micro)
            rng = BatchRNG(step_generator(cfg.seed, self.step * cfg.accumulation + micro, 0), micro_batch,
                           self.rows, device)
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                per_sample = self.loss(x, y, self.step, rng)
            # Mean over the global micro-batch: DDP averages gradients over ranks.
            loss = per_sample.mean() / cfg.accumulation
            self.scaler.scale(loss).backward()
            total += loss.detach()
        total = self.ctx.mean(total)
        value = float(total)
        if not math.isfinite(value):
            raise TrainingDiverged(self._diverged(f"the loss became {value}"))
        self.scaler.unscale_(self.optimizer)
        grad_norm = None
        if cfg.grad_clip:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.network.parameters(), cfg.grad_clip))
            if not math.isfinite(grad_norm) and not self.scaler.is_enabled():
                raise TrainingDiverged(self._diverged(f"the gradient norm became {grad_norm}"))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.loss.after_step(self.step)
        if self.ema is not None:
            self.ema.update(self.network)
        self.step += 1
        self.last_grad_norm = grad_norm
        return value

    def run(self) -> Path:
        """Train until `steps`; returns the run folder (a pipeline folder). The folder is locked
        while the run writes it."""
        main = self.ctx.is_main
        if main:
            self.out.mkdir(exist_ok=True)
        with hold_folder(self.out, "cm train") if main else nullcontext():
            return self._run_locked(main)

    def _run_locked(self, main: bool) -> Path:
        cfg = self.cfg
        first_step = self.step
        if main and self.resume_note:  # said once the run holds its folder
            print(self.resume_note, file=sys.stderr)
        for note in self.dataset.notes if main else ():
            print(f"data: {cfg.data}: {note}", file=sys.stderr)
        if main and first_step < cfg.steps and compiles(cfg, self.ctx.device):  # else a silent bar at 0 for minutes
            print("compile: the first step compiles the networks (torch.compile; minutes on a CPU, less on a GPU)",
                  file=sys.stderr)
        notes = [*self.notes, *cfg.notes(), slow_precision_note(cfg.precision, self.ctx.device)]
        for note in notes if main and first_step < cfg.steps else ():
            if note:
                print(note, file=sys.stderr)
        if main:
            for folder in (self.out, self.out / "unet", self.out / "scheduler", self.out / "samples"):
                remove_leftovers(folder)  # temp files of a killed write (checkpoints clean their own)
            self._truncate_metrics()  # a restart from step 0 drops what an earlier attempt logged
            write_json(self.out / CONFIG_NAME, cfg.to_dict())
        writer = self._tensorboard() if main and cfg.tensorboard else None
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not (main and cfg.progress), desc=f"train {cfg.method}",
                   dynamic_ncols=True)
        started, images = time.perf_counter(), 0
        # One process: a signal ends the step in progress and saves it (under torchrun a signal
        # stops every rank where it is: the last periodic checkpoint stays).
        with stop_requests(enabled=not self.ctx.enabled) as stop:
            try:
                self._steps(bar, writer, stop, started, images)
            finally:
                bar.close()
                if writer is not None:
                    writer.close()
        if self.step == first_step and first_step > 0:  # resumed at the end: finish an export a kill cut short
            if main:
                export_run(self.out, self.exported())
                self.preview()
            self.ctx.barrier()
        return self.out

    def _steps(self, bar: tqdm, writer, stop: StopRequests, started: float, images: int) -> None:
        cfg, main = self.cfg, self.ctx.is_main
        while self.step < cfg.steps:
            value = self.train_step()
            images += cfg.batch_size
            rate = images / max(time.perf_counter() - started, 1e-9)
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4g}", img_s=f"{rate:.0f}")
            if main and (self.step % cfg.log_every == 0 or self.step == cfg.steps):
                self._log({"step": self.step, "loss": value, "lr": learning_rate(cfg, self.step - 1),
                           "grad_norm": self.last_grad_norm, "images_per_s": rate}, writer)
            if self.step % cfg.save_every == 0 or self.step == cfg.steps:
                self.save()
            if main and (self.step % cfg.sample_every == 0 or self.step == cfg.steps):
                self.preview()
            if stop.requested:
                self._stop(stop.requested)

    def _stop(self, signal_name: str) -> None:
        """Save the steps done (unless this step was just saved) and end the run on `signal_name`."""
        if self.saved_step != self.step:
            self.save()
        raise TrainingInterrupted(f"{signal_name} at step {self.step} of {self.cfg.steps}; the checkpoint of step "
                                  f"{self.step} is in {self.out / 'checkpoints'}: the same command with --resume "
                                  "continues from it", signal_name)

    def exported(self):
        """The pipeline parts this run exports (the first EMA's weights)."""
        return run_parts(self.cfg, self.network, self.ema, images=self.dataset.kind == "image")

    def preview(self) -> Path:
        """Samples of the exported model as samples/step-K.png (a grid, or a scatter plot over the data)."""
        path = self.out / "samples" / f"step-{self.step:08d}.png"
        reference = None if self.dataset.kind == "image" else self.data_x[:2000].numpy()
        preview(ConsistencyModelPipeline.from_parts(self.exported()), path, self.cfg.seed, reference)
        return path

    def _log(self, record: dict, writer) -> None:
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if writer is not None:
            for key, value in record.items():
                if key != "step" and value is not None:
                    writer.add_scalar(key, value, record["step"])

    def _tensorboard(self):
        return summary_writer_class()(str(self.out / "tensorboard"))


def train(cfg: TrainConfig) -> Path:
    """Run `cfg` (in this process, or as one rank of a torchrun job)."""
    out = Trainer(cfg).run()
    gc.collect()  # the finished trainer (reference cycles) lets go of its DDP wrapper before the caller ends
    return out


__all__ = ["Trainer", "TrainingDiverged", "TrainingInterrupted", "train"]
