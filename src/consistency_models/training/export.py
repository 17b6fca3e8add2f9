"""What a run writes for people to use: the run folder is itself a pipeline folder holding the EMA weights."""

from __future__ import annotations

import copy
from pathlib import Path

from torch import nn

from ..io.pipeline_folder import PipelineParts, save_pipeline_folder
from ..schedule import SchedulerConfig
from .config import TrainConfig
from .ema import EMA
from .methods import get_method


def exported_network(network: nn.Module, ema: EMA | None, rate: float) -> nn.Module:
    """A copy of `network` holding the EMA weights of `rate` (the raw weights when there is no EMA)."""
    copied = copy.deepcopy(network).eval().requires_grad_(False)
    if ema is not None:
        copied.load_state_dict(ema.averaged(rate))
    return copied


def run_parts(cfg: TrainConfig, network: nn.Module, ema: EMA | None, images: bool) -> PipelineParts:
    """The pipeline a run exports: its first EMA's weights, the grid its method records, its σ range
    and parametrization; images are clipped to [−1, 1] when sampled, points are not."""
    method = get_method(cfg.method)
    scheduler_config = SchedulerConfig(
        num_train_timesteps=method.grid_size(cfg), sigma_min=cfg.sigma_min, sigma_max=cfg.sigma_max,
        sigma_data=cfg.sigma_data, rho=cfg.rho, clip_denoised=images,
    )
    return PipelineParts(exported_network(network, ema, cfg.ema_rates[0]), scheduler_config, method.parametrization_of(cfg))


def export_run(out: Path, parts: PipelineParts) -> None:
    """Refresh model_index.json, unet/ and scheduler/ of the run folder."""
    save_pipeline_folder(out, parts)
