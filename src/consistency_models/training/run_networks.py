"""The networks of a run: the one it trains and the teacher it loads.

- `build_network`: the preset fitted to the data (channels, size, classes), the teacher's copy,
  or a saved pipeline's network (fine-tuning).
- `load_teacher`: the network of a diffusion model folder (trained here with `--method edm`, or converted).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import nn

from ..errors import InvalidInputError, about
from ..io.pipeline_folder import load_pipeline_folder
from ..kinds import ModelKind, get_kind
from ..networks.mlp import MLP
from ..networks.presets import MLP_PRESETS, PRESETS, preset
from ..networks.unet import UNetModel
from .config import TrainConfig
from .methods import get_method

if TYPE_CHECKING:
    from ..data import ImageDataset, PointDataset


def default_preset(dataset: ImageDataset | PointDataset) -> str:
    if dataset.kind == "points":
        return "mlp2d"
    return "tiny16" if dataset.shape[-1] <= 16 else "small32"


def check_same_time(what: str, path: str, given: ModelKind, kind: ModelKind, hint: str = "") -> None:
    """A network to start from must take the time the run's kind gives it (log σ, TrigFlow's t …)."""
    if given.network_time != kind.network_time:
        raise InvalidInputError(f"{what}: {path} holds {given.summary}, whose network takes {given.network_time} "
                                f"as its time; this run trains {kind.summary}, whose network takes "
                                f"{kind.network_time}{hint}")


def check_fits_data(what: str, path: str, network: nn.Module, dataset: ImageDataset | PointDataset,
                    use_labels: bool) -> None:
    """A saved network (to start from, or a teacher) must make samples of the data's shape and take
    the run's class labels (none for an unconditional run)."""
    got, wanted = network.config.sample_shape, tuple(dataset.shape)
    if got != wanted:
        raise InvalidInputError(f"{what}: {path} makes samples of shape {got}, but the data has {wanted}")
    classes, takes = dataset.num_classes if use_labels else None, network.config.num_classes
    if takes != classes:
        def labels(n: int | None) -> str:
            return f"{n} class labels" if n else "no class labels"

        hint = "; give --unconditional to train without labels" if takes is None else ""
        raise InvalidInputError(f"{what}: {path} takes {labels(takes)}, but this run has {labels(classes)}{hint}")


def check_same_sigma_data(what: str, path: str, saved: float, run: float) -> None:
    """A student started from a saved network keeps its preconditioning: the run's σ_data must be
    the one that network was trained with."""
    if saved != run:
        raise InvalidInputError(f"sigma_data: {run} for this run, but {what} {path} was trained with sigma_data "
                                f"{saved}; give --sigma-data {saved}")


def load_initial_network(path: str, dataset: ImageDataset | PointDataset, use_labels: bool,
                         kind: ModelKind, sigma_data: float | None = None) -> nn.Module:
    """The network of a pipeline folder to fine-tune; it must fit the data's shape and classes,
    take the time inputs of the run's model `kind` (their number and what they measure) and, where
    the kind has a σ_data (`sigma_data`: the run's), have been trained with the same."""
    try:
        parts = load_pipeline_folder(path, draw_initial_weights=True)  # the run's random numbers as before
    except InvalidInputError as exc:
        raise about("init_from", exc) from None
    network, given = parts.network.float(), get_kind(parts.parametrization)
    time_inputs = kind.time_inputs
    if network.config.time_inputs == time_inputs:
        check_same_time("init_from", path, given, kind)
    if network.config.time_inputs != time_inputs:
        raise InvalidInputError(f"init_from: {path} holds a network with {network.config.time_inputs} time input(s); "
                                f"this run trains one with {time_inputs}")
    check_fits_data("init_from", path, network, dataset, use_labels)
    if sigma_data is not None:
        check_same_sigma_data("--init-from", path, parts.scheduler_config.sigma_data, sigma_data)
    return network.train().requires_grad_(True)


def use_training_layout(network: nn.Module, jvp: bool = False) -> nn.Module:
    """The network (in place) in the memory layout its training step runs fastest in, where it is
    now: channels_last for wide UNets on CPU (the imagenet64 CT step 1.15× faster in bfloat16,
    1.04× in float32 on a 2-core AMX CPU; convolutions' weight and input gradients gain most),
    unless the loss takes a JVP of it (`jvp`: the sCT step measured 3–6 % slower in channels_last
    in float32 and no faster in bfloat16), unchanged otherwise. The values are the same; only the
    strides (and so oneDNN's summation order, ~1e-6) change."""
    pays_off = getattr(network, "channels_last_pays_off", None)
    if not jvp and pays_off is not None and pays_off():
        network.to(memory_format=torch.channels_last)
    return network


def build_network(cfg: TrainConfig, dataset: ImageDataset | PointDataset, teacher: nn.Module | None,
                  kind: ModelKind, teacher_kind: ModelKind | None = None,
                  teacher_sigma_data: float | None = None) -> nn.Module:
    """A fresh network for `dataset` for the model `kind` (its number of time inputs: MeanFlow's
    two), a copy of the teacher (`init_from_teacher`; of `teacher_kind`, trained with
    `teacher_sigma_data`) or a saved one (`init_from`)."""
    time_inputs = kind.time_inputs
    network = None
    if cfg.init_from:
        network = load_initial_network(cfg.init_from, dataset, cfg.use_labels, kind,
                                       cfg.sigma_data if kind.uses_sigmas else None)
    elif teacher is not None and cfg.init_from_teacher:
        if teacher_kind is not None:
            method = get_method(cfg.method)
            hint = ("; give --no-init-from-teacher for a fresh student" if method.teacher_in_loss
                    else "; drop --teacher for a fresh student" if method.teacher == "optional" else "")
            check_same_time("init_from_teacher", cfg.teacher, teacher_kind, kind, hint)
        if teacher_sigma_data is not None and kind.uses_sigmas:
            check_same_sigma_data("the teacher", cfg.teacher, teacher_sigma_data, cfg.sigma_data)
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
        base.update(dim=dataset.shape[0], num_classes=num_classes, time_inputs=time_inputs)
        if cfg.dropout is not None:
            base["dropout"] = cfg.dropout
        return MLP(type(MLP_PRESETS[name])(**base)).train()
    if name not in PRESETS:
        raise InvalidInputError(f"preset: {name!r} is not an image preset; use one of {', '.join(sorted(PRESETS))}")
    channels, height, width = dataset.shape
    if height != width:
        raise InvalidInputError(f"data: the images are {width}×{height}; the UNet makes square images — pass "
                                "--resolution N to center-crop and resize them")
    overrides = dict(image_size=height, in_channels=channels, out_channels=channels, num_classes=num_classes,
                     time_inputs=time_inputs)
    if cfg.dropout is not None:
        overrides["dropout"] = cfg.dropout
    base = PRESETS[name]
    scale = height / base.image_size  # keep attention at the same levels when the size changes
    overrides["attention_resolutions"] = tuple(int(r * scale) for r in base.attention_resolutions)
    try:
        return UNetModel(preset(name, **overrides)).train()
    except ValueError as exc:
        raise InvalidInputError(f"preset: {name!r} does not fit {height}-px data: {exc}") from None


class LoadedTeacher(NamedTuple):
    network: nn.Module      # frozen, in eval mode
    kind: ModelKind         # an EDM denoiser or a TrigFlow diffusion model
    sigma_data: float       # its own preconditioning's, from its folder
    sigma_min: float


def load_teacher(path: str, device: torch.device, dataset: ImageDataset | PointDataset,
                 use_labels: bool) -> LoadedTeacher:
    """The network of a diffusion model folder (an EDM denoiser or a TrigFlow diffusion model),
    frozen, in eval mode, with its kind and σ settings; it must fit the data's shape and classes."""
    try:
        parts = load_pipeline_folder(path, draw_initial_weights=True)  # the run's random numbers as before
    except InvalidInputError as exc:
        raise about("teacher", exc) from None
    kind = get_kind(parts.parametrization)
    if not kind.teacher:
        raise InvalidInputError(
            f"teacher: {path} holds {kind.summary}; the teacher must be a diffusion model (trained with "
            "--method edm, or an OpenAI edm_* checkpoint converted with cm convert openai)"
        )
    check_fits_data("teacher", path, parts.network, dataset, use_labels)
    config = parts.scheduler_config
    return LoadedTeacher(parts.network.to(device).eval().requires_grad_(False), kind, config.sigma_data,
                         config.sigma_min)
