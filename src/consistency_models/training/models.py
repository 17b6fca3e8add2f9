"""The networks a run trains, the teacher it loads, and what it writes for people to use.

- `build_network`: the preset fitted to the data (channels, size, classes), or the teacher's copy.
- `load_teacher`: an EDM denoiser folder (trained here with `--method edm`, or converted).
- `export_pipeline`: the run folder is itself a pipeline folder holding the EMA weights.
- `preview`: a PNG of samples (a grid of images, or a scatter plot of 2-D points).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from ..errors import InvalidInputError
from ..io.images import make_grid, save_png, to_uint8
from ..networks.mlp import MLP
from ..networks.presets import MLP_PRESETS, PRESETS, preset
from ..networks.unet import UNetModel
from ..scheduler import CMStochasticIterativeScheduler
from .config import TrainConfig
from .curricula import ict_schedule, ct_schedule

if TYPE_CHECKING:
    from ..data import ImageDataset, PointDataset
    from .loop import Trainer


def default_preset(dataset: ImageDataset | PointDataset) -> str:
    if dataset.kind == "points":
        return "mlp2d"
    return "tiny16" if dataset.shape[-1] <= 16 else "small32"


def load_initial_network(path: str, dataset: ImageDataset | PointDataset, use_labels: bool) -> nn.Module:
    """The network of a pipeline folder to fine-tune; it must fit the data's shape and classes."""
    from ..pipeline import ConsistencyModelPipeline

    network = ConsistencyModelPipeline.from_pretrained(path).unet.float()
    got, wanted = tuple(ConsistencyModelPipeline(network).sample_shape), tuple(dataset.shape)
    if got != wanted:
        raise InvalidInputError(f"init_from: {path} makes samples of shape {got}, but the data has {wanted}")
    classes = dataset.num_classes if use_labels else None
    if network.config.num_classes != classes:
        raise InvalidInputError(
            f"init_from: {path} has num_classes={network.config.num_classes}, but the run needs {classes}"
        )
    return network.train().requires_grad_(True)


def build_network(cfg: TrainConfig, dataset: ImageDataset | PointDataset, teacher: nn.Module | None = None) -> nn.Module:
    """A fresh network for `dataset`, a copy of the teacher (`init_from_teacher`) or a saved one (`init_from`)."""
    network = None
    if cfg.init_from:
        network = load_initial_network(cfg.init_from, dataset, cfg.use_labels)
    elif teacher is not None and cfg.init_from_teacher:
        network = copy.deepcopy(teacher).requires_grad_(True)
    if network is not None:
        if cfg.dropout is not None:
            for module in network.modules():
                if isinstance(module, nn.Dropout):
                    module.p = cfg.dropout
        return network.train()
    name = cfg.preset or default_preset(dataset)
    num_classes = dataset.num_classes if cfg.use_labels else None
    if dataset.kind == "points":
        if name not in MLP_PRESETS:
            raise InvalidInputError(f"preset: {name!r} is not a point-data preset; use one of {', '.join(MLP_PRESETS)}")
        base = MLP_PRESETS[name].to_dict()
        base.update(dim=dataset.shape[0], num_classes=num_classes)
        if cfg.dropout is not None:
            base["dropout"] = cfg.dropout
        return MLP(type(MLP_PRESETS[name])(**base)).train()
    if name not in PRESETS:
        raise InvalidInputError(f"preset: {name!r} is not an image preset; use one of {', '.join(sorted(PRESETS))}")
    channels, height, _ = dataset.shape
    overrides = dict(image_size=height, in_channels=channels, out_channels=channels, num_classes=num_classes)
    if cfg.dropout is not None:
        overrides["dropout"] = cfg.dropout
    base = PRESETS[name]
    scale = height / base.image_size  # keep attention at the same levels when the size changes
    overrides["attention_resolutions"] = tuple(int(r * scale) for r in base.attention_resolutions)
    try:
        return UNetModel(preset(name, **overrides)).train()
    except ValueError as exc:
        raise InvalidInputError(f"preset: {name!r} does not fit {height}-px data: {exc}") from None


def load_teacher(path: str, device: torch.device) -> nn.Module:
    """The network of an EDM denoiser folder, frozen, in eval mode."""
    from ..pipeline import ConsistencyModelPipeline

    pipe = ConsistencyModelPipeline.from_pretrained(path)
    if pipe.parametrization != "edm":
        raise InvalidInputError(
            f"teacher: {path} holds a {pipe.parametrization} model; the teacher must be an EDM denoiser "
            "(trained with --method edm, or an OpenAI edm_* checkpoint converted with cm convert openai)"
        )
    return pipe.unet.to(device).eval().requires_grad_(False)


def sampling_grid_size(cfg: TrainConfig) -> int:
    """The grid N recorded in the run's scheduler (what `--timesteps` indexes)."""
    if cfg.method == "cd":
        return cfg.num_scales
    if cfg.method == "ct":
        return ct_schedule(cfg.steps, cfg.steps, cfg.s0, cfg.s1, cfg.mu0, cfg.mu_form)[0]
    if cfg.method == "ict":
        return ict_schedule(cfg.steps, cfg.steps, cfg.s0, cfg.s1)
    return 40


def exported_network(trainer: "Trainer") -> nn.Module:
    """A copy of the network holding the first EMA's weights (the raw weights without EMA)."""
    network = copy.deepcopy(trainer.network).eval().requires_grad_(False)
    if trainer.ema is not None:
        network.load_state_dict(trainer.ema.averaged(trainer.cfg.ema_rates[0]))
    return network


def make_pipeline(trainer: "Trainer"):
    from ..pipeline import ConsistencyModelPipeline

    cfg = trainer.cfg
    scheduler = CMStochasticIterativeScheduler(
        num_train_timesteps=sampling_grid_size(cfg), sigma_min=cfg.sigma_min, sigma_max=cfg.sigma_max,
        sigma_data=cfg.sigma_data, rho=cfg.rho, clip_denoised=trainer.dataset.kind == "image",
    )
    return ConsistencyModelPipeline(exported_network(trainer), scheduler, trainer.parametrization)


def export_pipeline(trainer: "Trainer", out: Path) -> None:
    """Refresh model_index.json, unet/ and scheduler/ of the run folder from the EMA weights."""
    make_pipeline(trainer).save_pretrained(out)


def scatter_png(points: np.ndarray, reference: np.ndarray, path: Path, size: int = 384, extent: float = 2.0) -> None:
    """Samples (blue dots) over data (gray) on a square canvas spanning ±extent."""
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)

    def pixels(pts: np.ndarray) -> np.ndarray:
        pix = np.clip((pts / (2 * extent) + 0.5) * (size - 1), 0, size - 1)
        pix[:, 1] = size - 1 - pix[:, 1]
        return pix

    for x, y in pixels(reference):
        draw.point((float(x), float(y)), fill=(170, 170, 170))
    for x, y in pixels(points):
        draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=(30, 80, 200))
    save_png(np.asarray(image), path)


@torch.no_grad()
def preview(trainer: "Trainer", path: Path, count: int | None = None) -> None:
    """Sample with the EMA network (1 step; the EDM teacher: 18 Heun steps) to a PNG grid or scatter plot."""
    from ..sampling import sample_heun
    from ..parametrization import karras_sigmas

    pipe = make_pipeline(trainer)
    count = count or (64 if pipe.is_image_model else 512)
    generator = torch.Generator().manual_seed(trainer.cfg.seed)
    labels = None
    if trainer.network.config.num_classes:
        labels = torch.arange(count) % trainer.network.config.num_classes
    if trainer.parametrization == "edm":
        x = pipe.prepare_latents(count, None, generator) * trainer.cfg.sigma_max
        sigmas = [*karras_sigmas(18, trainer.cfg.sigma_min, trainer.cfg.sigma_max).tolist(), 0.0]
        x = sample_heun(pipe.model, x, sigmas, class_labels=labels.to(x.device) if labels is not None else None)
        if pipe.is_image_model:
            x = (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
        else:
            x = x.cpu().numpy()
    else:
        x = pipe(batch_size=count, class_labels=labels, generator=generator, output_type="np").images
    path.parent.mkdir(parents=True, exist_ok=True)
    if pipe.is_image_model:
        save_png(make_grid(to_uint8(x), nrow=int(np.ceil(np.sqrt(count)))), path)
    else:
        scatter_png(x, trainer.data_x[:2000].numpy(), path)
