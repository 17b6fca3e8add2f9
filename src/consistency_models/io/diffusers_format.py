"""diffusers' network format: `unet/config.json` (a `UNet2DModel` config, or our `MLP`) and
`unet/diffusion_pytorch_model.safetensors` (or the older .bin: a plain state dict of tensors,
written with `torch.save` for `safe_serialization=False` and read without pickle code).

Only the UNet2DModel settings that describe the ADM UNet are accepted; anything else is
refused with the key, its value and what is allowed. The whole pipeline folder (model_index,
scheduler) is `pipeline_folder.py`.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import fields
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import InvalidInputError, first_line
from ..networks.mlp import MLP, MLPConfig
from ..networks.unet import UNetConfig, UNetModel
from .atomic import atomic_path, write_json
from .file_mapping import owned_tensors
from .shards import (
    ANY_VARIANT,
    DEFAULT_MAX_SHARD_SIZE,
    WEIGHT_FILES,
    index_data,
    index_name,
    max_shard_bytes,
    read_index,
    shard_names,
    split_into_shards,
    variant_of,
    weight_file_name,
    weight_file_pattern,
)

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
WEIGHTS_NAME_BIN = "diffusion_pytorch_model.bin"
CONFIG_NAME = "config.json"
DIFFUSERS_VERSION = "0.30.0"

# UNet2DModel settings that must hold for the ADM UNet (key: allowed value).
_FIXED = {
    "center_input_sample": False,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "freq_shift": 0,
    "flip_sin_to_cos": True,
    "mid_block_type": "UNetMidBlock2D",
    "mid_block_scale_factor": 1,
    "downsample_type": "resnet",
    "upsample_type": "resnet",
    "act_fn": "silu",
    "add_attention": True,
    "class_embed_type": None,
}


def read_json(path: Path, what: str) -> dict:
    """A JSON object from `path`, or a one-line error naming the file."""
    if not path.is_file():
        raise InvalidInputError(f"{what}: missing file {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"{what}: corrupt JSON in {path}: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidInputError(f"{what}: {path} does not hold a JSON object")
    return data


def unet_config_to_diffusers(cfg: UNetConfig) -> dict:
    """The `UNet2DModel` config that builds the same network as `cfg`."""
    levels = range(len(cfg.channel_mult))
    down = ["AttnDownBlock2D" if cfg.level_has_attention(i) else "ResnetDownsampleBlock2D" for i in levels]
    up = ["AttnUpBlock2D" if cfg.level_has_attention(i) else "ResnetUpsampleBlock2D" for i in reversed(levels)]
    return {
        "_class_name": "UNet2DModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        "sample_size": cfg.image_size,
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels,
        "block_out_channels": [cfg.model_channels * m for m in cfg.channel_mult],
        "layers_per_block": cfg.num_res_blocks,
        "down_block_types": down,
        "up_block_types": up,
        "attention_head_dim": cfg.num_head_channels,
        "resnet_time_scale_shift": "scale_shift" if cfg.use_scale_shift_norm else "default",
        "num_class_embeds": cfg.num_classes,
        "dropout": cfg.dropout,
        "norm_num_groups": cfg.norm_num_groups,
        "attn_norm_num_groups": cfg.norm_num_groups,
        "norm_eps": cfg.norm_eps,
        "downsample_padding": 1,
        **_FIXED,
        **({} if cfg.time_inputs == 1 else {"time_inputs": cfg.time_inputs}),  # ours: diffusers has no such UNet
    }


def unet_config_from_diffusers(d: dict, source: str = "unet config") -> UNetConfig:
    """The ADM `UNetConfig` of a `UNet2DModel` config; refuses what the ADM UNet cannot be."""
    try:
        return _unet_config_from_diffusers(d, source)
    except (TypeError, ValueError, ZeroDivisionError, KeyError) as exc:  # a value of an unexpected type
        if isinstance(exc, InvalidInputError):
            raise
        raise InvalidInputError(f"{source}: malformed UNet2DModel config ({type(exc).__name__}: {exc})") from None


def _unet_config_from_diffusers(d: dict, source: str) -> UNetConfig:
    def bad(key: str, allowed: str) -> InvalidInputError:
        return InvalidInputError(f"{source}: {key}={d.get(key)!r} is not supported; allowed: {allowed}")

    for key, allowed in _FIXED.items():
        if d.get(key, allowed) != allowed:
            raise bad(key, repr(allowed))
    for key, kind in (("block_out_channels", int), ("down_block_types", str), ("up_block_types", str)):
        value = d.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, kind) and not isinstance(v, bool) for v in value):
            raise bad(key, f"a list of {kind.__name__}s")
    in_c, out_c = d.get("in_channels", 3), d.get("out_channels", 3)
    counts = all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in (in_c, out_c))
    if counts and out_c != in_c:  # e.g. a learned variance beside the image (bad counts: UNetConfig says)
        raise bad("out_channels", f"in_channels={d.get('in_channels', 3)!r} (the model predicts an image of its "
                                  "input's channels)")
    if any(w < 1 for w in d.get("block_out_channels", [])):
        raise bad("block_out_channels", "positive widths")
    widths = list(d.get("block_out_channels", []))
    down = list(d.get("down_block_types", []))
    up = list(d.get("up_block_types", []))
    if not widths or len(down) != len(widths) or len(up) != len(widths):
        raise bad("block_out_channels", "one width per down block and up block")
    attention = []
    for i, name in enumerate(down):
        if name not in ("AttnDownBlock2D", "ResnetDownsampleBlock2D"):
            raise bad("down_block_types", "AttnDownBlock2D or ResnetDownsampleBlock2D")
        attention.append(name == "AttnDownBlock2D")
        expected_up = "AttnUpBlock2D" if attention[i] else "ResnetUpsampleBlock2D"
        if up[len(up) - 1 - i] != expected_up:
            raise bad("up_block_types", "the mirror image of down_block_types")
    model_channels = widths[0]
    if any(w % model_channels for w in widths):
        raise bad("block_out_channels", "multiples of the first width")
    scale_shift = d.get("resnet_time_scale_shift", "default")
    if scale_shift not in ("default", "scale_shift"):
        raise bad("resnet_time_scale_shift", "'default' or 'scale_shift'")
    groups = d.get("norm_num_groups", 32)
    attn_groups = d.get("attn_norm_num_groups")
    if attn_groups is None and scale_shift == "scale_shift":
        raise bad("attn_norm_num_groups", f"{groups} (without it the middle attention has no GroupNorm)")
    if attn_groups is not None and attn_groups != groups:
        raise bad("attn_norm_num_groups", f"None or norm_num_groups={groups}")
    head = d.get("attention_head_dim", 8)
    if not isinstance(head, int):
        raise bad("attention_head_dim", "one integer head width")
    size = d.get("sample_size")
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise bad("sample_size", "square images")
        size = size[0]
    if not isinstance(size, int):
        raise bad("sample_size", "an integer")
    try:
        return UNetConfig(
            image_size=size,
            in_channels=d.get("in_channels", 3),
            out_channels=d.get("out_channels", 3),
            model_channels=model_channels,
            channel_mult=tuple(w // model_channels for w in widths),
            num_res_blocks=d.get("layers_per_block", 2),
            attention_resolutions=tuple(size >> i for i, a in enumerate(attention) if a),
            num_head_channels=head,
            use_scale_shift_norm=scale_shift == "scale_shift",
            num_classes=d.get("num_class_embeds"),
            dropout=d.get("dropout", 0.0),
            norm_num_groups=groups,
            norm_eps=d.get("norm_eps", 1e-5),
            time_inputs=d.get("time_inputs", 1),
        )
    except (ValueError, TypeError) as exc:
        raise InvalidInputError(f"{source}: {exc}") from None


def load_weights(path: Path, raw: bool = False) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors file, or from a .bin/.pt without running pickle code;
    anything but a mapping of names to tensors is refused (`raw`: return what the file holds)."""
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        with warnings.catch_warnings():  # torch's notes on odd pickles: the refusal below is the one line said
            warnings.simplefilter("ignore")
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found:
            raise InvalidInputError(
                f"weights: {path} needs pickle code execution to load, which is refused "
                f"(it references {found.group(1)}); only plain tensor checkpoints are read"
            ) from None
        raise InvalidInputError(f"weights: corrupt or unreadable weights file {path}: not a tensor checkpoint") from None
    except Exception as exc:  # torch.load and safetensors raise many types for junk files
        reason = first_line(exc, 160)
        raise InvalidInputError(f"weights: corrupt or unreadable weights file {path}: not a PyTorch or safetensors "
                                f"checkpoint ({type(exc).__name__}{': ' + reason if reason else ''})") from None
    if raw:
        return loaded
    if not isinstance(loaded, dict):
        raise InvalidInputError(f"weights: {path} holds a {type(loaded).__name__}, not a state dict (names → "
                                "tensors)")
    other = next(((k, v) for k, v in loaded.items() if not (isinstance(k, str) and torch.is_tensor(v))), None)
    if other is not None:
        key, value = other
        nested = (f"; if it holds the weights, save checkpoint[{key!r}] alone"
                  if isinstance(value, dict) and value and all(torch.is_tensor(v) for v in value.values()) else "")
        raise InvalidInputError(f"weights: {path} is a dict, but not of names → tensors: its entry {key!r} is not a "
                                f"tensor ({type(value).__name__}){nested}")
    return loaded


INITIAL_FILLS = ("uniform_", "normal_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
                "xavier_normal_", "orthogonal_",  # torch.nn.init's random initializations
                "zeros_", "ones_", "constant_")    # and its constant ones (ADM's zeroed outputs: 0.1 s of 0.6)


class _InitialFills:
    """Stand-ins for torch.nn.init's fills that skip filling in a thread building a network for a
    weights file, installed while at least one thread does (`without_random_init`)."""

    lock = threading.Lock()
    users = 0
    originals: dict[str, Callable] = {}
    building = threading.local()  # .active: this thread builds a network its file will fill

    @classmethod
    def stand_in(cls, fill: Callable) -> Callable:
        def skip_or_fill(tensor, *args, **kwargs):
            return tensor if getattr(cls.building, "active", False) else fill(tensor, *args, **kwargs)
        return skip_or_fill

    @classmethod
    def enter(cls) -> None:
        with cls.lock:
            if cls.users == 0:
                cls.originals = {name: getattr(torch.nn.init, name) for name in INITIAL_FILLS}
                for name, fill in cls.originals.items():
                    setattr(torch.nn.init, name, cls.stand_in(fill))
            cls.users += 1

    @classmethod
    def leave(cls) -> None:
        with cls.lock:
            cls.users -= 1
            if cls.users == 0:
                for name, fill in cls.originals.items():
                    setattr(torch.nn.init, name, fill)


@contextmanager
def without_random_init() -> Iterator[None]:
    """Build modules without drawing their random initial weights (or writing their constant ones):
    the weights a file is about to replace, strictly and all of them, need no random numbers first
    (2.5 s of ImageNet-64's 3.2 s load) and no memory written. torch.nn.init's fills leave the
    tensor as it is meanwhile, in this thread only: a network another thread builds at the same
    time is initialized as usual."""
    _InitialFills.enter()
    outer = getattr(_InitialFills.building, "active", False)
    _InitialFills.building.active = True
    try:
        yield
    finally:
        _InitialFills.building.active = outer
        _InitialFills.leave()


def load_state_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str, assign: bool = False) -> None:
    """Load `state` strictly, with one error line listing missing, unexpected and misshapen keys.
    `assign`: the model takes the tensors themselves instead of copies (`owned_tensors` first)."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshapen = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshapen)):
        if keys:
            shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
            problems.append(f"{label} keys: {shown}")
    if problems:
        raise InvalidInputError(f"weights: {source} does not fit the model config; " + "; ".join(problems))
    model.load_state_dict(owned_tensors(state) if assign else state, strict=True, assign=assign)


def network_from_config(data: dict, source: str) -> torch.nn.Module:
    """An untrained network from a `unet/config.json`: a `UNet2DModel` config or our `MLP`."""
    if data.get("_class_name") == "MLP":
        names = {f.name for f in fields(MLPConfig)}
        try:
            return MLP(MLPConfig(**{k: v for k, v in data.items() if k in names}))
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"{source}: {exc}") from None
    return UNetModel(unet_config_from_diffusers(data, source))


def network_config(model: torch.nn.Module) -> dict:
    """The config.json that `network_from_config` turns back into `model`'s architecture."""
    if isinstance(model, MLP):
        return {"_class_name": "MLP", **model.config.to_dict()}
    return unet_config_to_diffusers(model.config)


def weights_name(variant: str | None = None, suffix: str = ".safetensors") -> str:
    """diffusion_pytorch_model[.variant].safetensors, diffusers' naming of weight variants (e.g. fp16)."""
    return weight_file_name("file", variant, suffix)


def weights_suffix(safe_serialization: bool) -> str:
    """The weights file's suffix for diffusers' `safe_serialization`: .safetensors, or .bin (torch.save)."""
    if not isinstance(safe_serialization, bool):
        raise InvalidInputError(f"safe_serialization: {safe_serialization!r} is not allowed; use True "
                                f"(diffusion_pytorch_model.safetensors) or False (diffusion_pytorch_model.bin)")
    return ".safetensors" if safe_serialization else ".bin"


def stale_weights(folder: Path, variant: str | None, written: set[str]) -> list[Path]:
    """The weights of `variant` in `folder` other than the files `written`: the other format's file,
    and sharded weights with their index (diffusers removes stale shards; a stale index or file of
    the other format would be loaded instead of the new weights). Other variants are not touched."""
    pattern = weight_file_pattern(tuple(WEIGHT_FILES), variant)
    return sorted(p for p in folder.iterdir() if p.name not in written and pattern.fullmatch(p.name) and p.is_file())


def weights_source(folder: Path, variant: str | None = None, use_safetensors: bool | None = None) -> Path | None:
    """The file `load_network` reads in `folder`: for each format `use_safetensors` allows (None:
    .safetensors, then .bin), the index of sharded weights first, as diffusers (also under the name
    older diffusers gave a variant's index), then the single file; None when there is none."""
    suffixes = [".safetensors", ".bin"] if use_safetensors is None else [".safetensors" if use_safetensors else ".bin"]
    for suffix in suffixes:
        candidates = [index_name(variant, suffix), *([index_name(variant, suffix, legacy=True)] if variant else []),
                      weights_name(variant, suffix)]
        for name in candidates:
            if (folder / name).is_file():
                return folder / name
    return None


def load_sharded(index: Path) -> dict[str, torch.Tensor]:
    """The state dict of sharded weights: every shard the index names, each holding exactly the
    tensors the index maps to it (else a one-line error: a shard left by another save)."""
    state: dict[str, torch.Tensor] = {}
    for name, keys in read_index(index).items():
        shard = load_weights(index.parent / name)
        listed = set(keys)
        absent = [k for k in keys if k not in shard]
        extra = [k for k in shard if k not in listed]
        if absent or extra:
            said = f"lacks {absent[0]!r}" if absent else f"holds {extra[0]!r}, which the index maps elsewhere or not at all"
            raise InvalidInputError(f"weights: the shard {index.parent / name} {said} ({len(absent)} missing, "
                                    f"{len(extra)} unlisted); it does not belong to the index {index.name}")
        state.update(shard)
    return state


def variants_in(names: list[str]) -> list[str]:
    """The variants whose weights (a single file, a shard or an index of shards) are among `names`."""
    pattern = weight_file_pattern(tuple(WEIGHT_FILES), ANY_VARIANT)
    return sorted({variant for name in names if (m := pattern.fullmatch(name)) and (variant := variant_of(m))})


def load_network(folder: str | os.PathLike, variant: str | None = None,
                 use_safetensors: bool | None = None, draw_initial_weights: bool = False) -> torch.nn.Module:
    """The network of a `unet/` folder (config.json + weights, or the weights of `variant`), one file
    or sharded (`shards.py`). `use_safetensors` as diffusers: None reads .safetensors, else .bin;
    True only .safetensors; False only .bin. The network is built without drawing random initial
    weights (the file's overwrite them all) unless `draw_initial_weights`: training runs ask for
    it, so that the global random numbers after loading a teacher stay those of earlier versions
    (dropout draws from them: the same command trains the same numbers). Without it the network's
    tensors are the file's own, mapped from a .safetensors file: copy or convert them
    (`file_mapping.release_file`) before the file may change."""
    if use_safetensors is not None and not isinstance(use_safetensors, bool):
        raise InvalidInputError(f"use_safetensors: {use_safetensors!r} is not allowed; use True, False or None")
    folder = Path(folder)
    with nullcontext() if draw_initial_weights else without_random_init():
        model = network_from_config(read_json(folder / CONFIG_NAME, "unet config"), f"unet: {folder / CONFIG_NAME}")
    weights = weights_source(folder, variant, use_safetensors)
    if weights is None:  # one line saying what is there instead
        found = sorted(p.name for p in folder.glob("diffusion_pytorch_model*"))
        listed = ", ".join(found[:6]) + (f", ... ({len(found)} in all)" if len(found) > 6 else "") or "none"
        asked = weights_name(variant, ".bin" if use_safetensors is False else ".safetensors")
        if use_safetensors is not None:
            raise InvalidInputError(f"use_safetensors: {use_safetensors} asks for {asked} (or its shards), which "
                                    f"{folder} does not have (found: {listed})")
        if variant:
            raise InvalidInputError(f"variant: there are no weights of variant={variant!r} in {folder} (found: {listed})")
        variants = variants_in(found)
        cli = "cm sample, edit, tune-timesteps: --variant"
        hint = "" if not variants else f"; to load those of a variant give variant={variants[0]!r} ({cli} " \
            f"{variants[0]})" if len(variants) == 1 else \
            f"; to load those of a variant give variant= one of {', '.join(map(repr, variants))} ({cli} NAME)"
        if any(weight_file_pattern(("shard",), None).fullmatch(n) for n in found):
            hint += (f"; shards are there without their index ({index_name(None, '.safetensors')}): an interrupted "
                     "save or download — save or download again")
        raise InvalidInputError(f"weights: missing file {folder / WEIGHTS_NAME} (found: {listed}){hint}")
    state = load_sharded(weights) if weights.name.endswith(".json") else load_weights(weights)
    # A loaded network takes the file's tensors, each in the dtype of the parameter it replaces
    # (`file_mapping.py`: the caller copies what its conversions leave); a training run copies them
    # into the network it initialized.
    dtypes = {name: tensor.dtype for name, tensor in model.state_dict().items()}
    load_state_into(model, {k: v.to(dtypes.get(k, v.dtype)) for k, v in state.items()}, str(weights),
                    assign=not draw_initial_weights)
    return model


def save_network(model: torch.nn.Module, folder: str | os.PathLike, variant: str | None = None,
                 safe_serialization: bool = True, max_shard_size: int | str | None = DEFAULT_MAX_SHARD_SIZE) -> None:
    """Write config.json and the weights of `model` into `folder`, atomically per file, as diffusers'
    `ModelMixin.save_pretrained`: safetensors, or with `safe_serialization=False` a plain tensor state
    dict saved with torch.save (diffusion_pytorch_model.bin), named for `variant` when given, and
    sharded with an index past `max_shard_size` (`shards.py`). The same variant's weights in the
    other format, or sharded otherwise, are removed — before the new single file appears, or after
    the new index — so the folder never holds stale weights that a loader would read. Shards are
    written in full before any takes its name: a save stopped before then leaves the earlier
    weights loadable; one whose shards replace files an earlier index names (the same layout)
    removes that index first, so no index ever names old and new shards together."""
    suffix = weights_suffix(safe_serialization)
    limit = max_shard_bytes(max_shard_size)
    name = weights_name(variant, suffix)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    shards = split_into_shards(state, limit)
    if len(shards) == 1:
        with atomic_path(folder / name) as tmp:
            write_weights(state, tmp, safe_serialization)
            for stale in stale_weights(folder, variant, {name}):
                stale.unlink(missing_ok=True)
    else:
        names = shard_names(variant, suffix, len(shards))
        with ExitStack() as renames:  # each shard takes its name when the stack closes, after all are written
            for keys, shard_name in zip(shards, names):
                tmp = renames.enter_context(atomic_path(folder / shard_name))
                write_weights({k: state[k] for k in keys}, tmp, safe_serialization)
            if any((folder / n).exists() for n in names):
                for stale in stale_weights(folder, variant, set()):
                    if stale.name.endswith(".json"):
                        stale.unlink(missing_ok=True)
        index = index_name(variant, suffix)
        write_json(folder / index, index_data(state, shards, names))
        for stale in stale_weights(folder, variant, {*names, index}):
            stale.unlink(missing_ok=True)
    write_json(folder / CONFIG_NAME, network_config(model))


def write_weights(state: dict[str, torch.Tensor], path: Path, safe_serialization: bool) -> None:
    """One weights file: safetensors (with diffusers' metadata), or a torch.save state dict. The
    OS refusing the write (a full disk, a file-size limit) is an OSError naming `path` as any other
    write's is; safetensors reports it as its own error type, with the OS's code in the text."""
    if not safe_serialization:
        torch.save(state, path)
        return
    try:
        save_file(state, str(path), metadata={"format": "pt"})
    except Exception as exc:  # noqa: BLE001 — safetensors' SafetensorError, only an OS error is turned
        # "(os error 28)" (safetensors 0.7 and later) or "Os { code: 28, ... }" (earlier)
        code = re.search(r"\(os error (\d+)\)|Os \{ code: (\d+)", str(exc))
        if type(exc).__name__ != "SafetensorError" or code is None:
            raise
        number = int(code[1] or code[2])
        raise OSError(number, os.strerror(number), str(path)) from None
