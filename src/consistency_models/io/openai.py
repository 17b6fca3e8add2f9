"""Convert OpenAI's consistency-model checkpoints (`cm/unet.py` state dicts) to this package.

Covers cd_*/ct_* consistency models and the edm_* teachers: the same `UNetModel`, saved as a
plain state dict. Files are read with `torch.load(weights_only=True)`, so nothing pickled runs.
Every key is mapped; a key left over or one the network lacks is an error that lists them.

OpenAI's attention packs q, k and v as three contiguous channel blocks of its fused 1×1 `qkv`
convolution (the flash-attention layout the released weights use), so `qkv` splits into
thirds along the output dimension.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import InvalidInputError
from ..kinds import kind_of_openai_file
from ..networks.presets import PRESETS, preset
from ..networks.unet import UNetConfig, UNetModel
from ..schedule import SchedulerConfig
from .diffusers_format import load_state_into, load_weights
from .pipeline_folder import PipelineParts, new_folder, require_new_folder, save_pipeline_folder

# Grid sizes N of OpenAI's released models (launch.sh): CD uses 40 points, CT 201 on ImageNet-64
# and 151 on LSUN-256.
SCHEDULERS: dict[str, int] = {"cd": 40, "ct-imagenet64": 201, "ct-lsun256": 151}

_RESBLOCK = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}
_ATTENTION = {"norm": "group_norm", "qkv": None, "proj_out": "to_out.0"}
_PLAIN = {"": ""}


def module_map(cfg: UNetConfig) -> list[tuple[str, str, dict]]:
    """(OpenAI module, our module, sub-module names) for every layer of the network `cfg`."""
    pairs: list[tuple[str, str, dict]] = [
        ("time_embed.0", "time_embedding.linear_1", _PLAIN),
        ("time_embed.2", "time_embedding.linear_2", _PLAIN),
        ("input_blocks.0.0", "conv_in", _PLAIN),
        ("out.0", "conv_norm_out", _PLAIN),
        ("out.2", "conv_out", _PLAIN),
        ("middle_block.0", "mid_block.resnets.0", _RESBLOCK),
        ("middle_block.1", "mid_block.attentions.0", _ATTENTION),
        ("middle_block.2", "mid_block.resnets.1", _RESBLOCK),
    ]
    if cfg.num_classes:
        pairs.append(("label_emb", "class_embedding", _PLAIN))
    levels = len(cfg.channel_mult)
    k = 1
    for level in range(levels):
        attention = cfg.level_has_attention(level)
        for j in range(cfg.num_res_blocks):
            pairs.append((f"input_blocks.{k}.0", f"down_blocks.{level}.resnets.{j}", _RESBLOCK))
            if attention:
                pairs.append((f"input_blocks.{k}.1", f"down_blocks.{level}.attentions.{j}", _ATTENTION))
            k += 1
        if level < levels - 1:
            pairs.append((f"input_blocks.{k}.0", f"down_blocks.{level}.downsamplers.0", _RESBLOCK))
            k += 1
    k = 0
    for i, level in enumerate(reversed(range(levels))):
        attention = cfg.level_has_attention(level)
        for j in range(cfg.num_res_blocks + 1):
            pairs.append((f"output_blocks.{k}.0", f"up_blocks.{i}.resnets.{j}", _RESBLOCK))
            layer = 1
            if attention:
                pairs.append((f"output_blocks.{k}.1", f"up_blocks.{i}.attentions.{j}", _ATTENTION))
                layer = 2
            if j == cfg.num_res_blocks and level > 0:
                pairs.append((f"output_blocks.{k}.{layer}", f"up_blocks.{i}.upsamplers.0", _RESBLOCK))
            k += 1
    return pairs


def _split_module(rest: str) -> tuple[str, str]:
    module, _, param = rest.rpartition(".")
    return module, param


def convert_openai_state_dict(state: dict[str, torch.Tensor], cfg: UNetConfig) -> dict[str, torch.Tensor]:
    """OpenAI `UNetModel` state dict → this package's (= diffusers') key names, in float32."""
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    by_prefix = {src: (dst, sub) for src, dst, sub in module_map(cfg)}
    for key, value in state.items():
        src, dst, sub = None, None, None
        parts = key.split(".")
        for cut in range(len(parts) - 1, 0, -1):  # longest known prefix first
            prefix = ".".join(parts[:cut])
            if prefix in by_prefix:
                src, (dst, sub) = prefix, by_prefix[prefix]
                break
        if src is None:
            continue
        module, param = _split_module(key[len(src) + 1:])
        if module not in sub:
            continue
        value = value.to(torch.float32)
        if sub is _ATTENTION and module == "qkv":
            for name, chunk in zip(("to_q", "to_k", "to_v"), value.chunk(3, dim=0)):
                out[f"{dst}.{name}.{param}"] = chunk.reshape(chunk.shape[0], -1) if param == "weight" else chunk
        elif sub is _ATTENTION and module == "proj_out" and param == "weight":
            out[f"{dst}.to_out.0.weight"] = value.reshape(value.shape[0], -1)
        else:
            target = sub[module]
            out[".".join(p for p in (dst, target, param) if p)] = value
        used.add(key)
    unknown = sorted(set(state) - used)
    if unknown:
        shown = ", ".join(unknown[:8]) + (f", ... ({len(unknown)} in all)" if len(unknown) > 8 else "")
        raise InvalidInputError(f"checkpoint: keys that do not fit the {_describe(cfg)} network: {shown}")
    return out


def _describe(cfg: UNetConfig) -> str:
    for name, known in PRESETS.items():
        if known == cfg:
            return f"'{name}' preset"
    return "configured"


def load_openai_unet(path: str | os.PathLike, config: UNetConfig | str) -> UNetModel:
    """A `UNetModel` with the weights of an OpenAI `.pt` checkpoint."""
    cfg = preset(config) if isinstance(config, str) else config
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"checkpoint: {path} is not a regular file (a folder or a device); give the .pt file"
                                if path.exists() else f"checkpoint: no such file {path}")
    state = load_weights(path)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InvalidInputError(f"checkpoint: {path} does not hold a plain state dict of tensors")
    model = UNetModel(cfg)
    try:
        load_state_into(model, convert_openai_state_dict(state, cfg), str(path))
    except InvalidInputError as exc:
        raise InvalidInputError(f"{exc}{_preset_hint(state, cfg)}") from None
    return model


def fitting_presets(state: dict[str, torch.Tensor]) -> list[str]:
    """The presets whose network an OpenAI state dict fits, key for key and shape for shape
    (checked on the meta device: no weights are copied or allocated)."""
    shapes = {k: torch.empty(v.shape, device="meta") for k, v in state.items()}
    found = []
    for name, cfg in PRESETS.items():
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in UNetModel(cfg).state_dict().items()}
        try:
            converted = convert_openai_state_dict(shapes, cfg)
        except InvalidInputError:
            continue
        if {k: tuple(v.shape) for k, v in converted.items()} == expected:
            found.append(name)
    return found


def _preset_hint(state: dict[str, torch.Tensor], cfg: UNetConfig) -> str:
    """'; it fits the 'lsun256' preset' — or that it fits none of them."""
    fits = [name for name in fitting_presets(state) if PRESETS[name] != cfg]
    if fits:
        return f"; it fits the {' and the '.join(repr(n) for n in fits)} preset"
    return f"; it fits none of the presets ({', '.join(PRESETS)}): another architecture"


def convert_openai_checkpoint(
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: UNetConfig | str = "imagenet64",
    scheduler: str = "cd",
    parametrization: str | None = None,
) -> PipelineParts:
    """Convert an OpenAI checkpoint into a diffusers pipeline folder; returns what it wrote.

    `parametrization` defaults to "edm" for files named edm_* (the teachers), else "consistency".
    """
    if scheduler not in SCHEDULERS:
        raise InvalidInputError(f"scheduler: {scheduler!r} is not one of {', '.join(SCHEDULERS)}")
    require_new_folder(out_dir, "out_dir")   # before the checkpoint is read
    if parametrization is None:
        parametrization = kind_of_openai_file(Path(path).name).name
    parts = PipelineParts(load_openai_unet(path, config), SchedulerConfig(num_train_timesteps=SCHEDULERS[scheduler]),
                          parametrization)
    with new_folder(out_dir, "out_dir") as fresh:
        save_pipeline_folder(fresh, parts)
    return parts
