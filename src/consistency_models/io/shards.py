"""Sharded weights, named and split as diffusers' `save_pretrained(max_shard_size=...)` writes them.

A network bigger than `max_shard_size` is written as several files and an index mapping every
tensor to its file (diffusers delegates the split to huggingface_hub's
`split_torch_state_dict_into_shards`; the rule is restated here so that the package needs neither):

    diffusion_pytorch_model-00001-of-00003.safetensors, …            the shards
    diffusion_pytorch_model.safetensors.index.json                     {"metadata": {"total_size": bytes},
                                                                        "weight_map": {name: shard file}}
    diffusion_pytorch_model.fp16-00001-of-00002.safetensors            a variant's shards, and its index
    diffusion_pytorch_model.safetensors.index.fp16.json                (older diffusers: ….safetensors.fp16.index.json)

Tensors are taken in state-dict order and a shard is closed when the next tensor would take it
past the limit; a tensor larger than the limit gets a shard of its own at once, numbered before the
shard still being filled. Sizes are decimal: "1GB" is 10**9 bytes.
This file names, splits and reads indexes; reading and writing tensors is `diffusers_format.py`.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import torch

from ..errors import InvalidInputError

DEFAULT_MAX_SHARD_SIZE = "10GB"   # diffusers' default: the ADM networks (≤ 2.2 GB in float32) stay one file
SIZE_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}


def max_shard_bytes(max_shard_size: int | float | str | None) -> int:
    """`max_shard_size` in bytes: a number of bytes, a number and a unit ("5GB", "500MB", "1.5GB"),
    read as huggingface_hub's `parse_size_to_int` reads it (the unit is the last two letters), or
    None for the default (diffusers' pipelines pass None on for it)."""
    if max_shard_size is None:
        max_shard_size = DEFAULT_MAX_SHARD_SIZE
    value = math.nan
    if isinstance(max_shard_size, (int, float, np.integer, np.floating)) and not isinstance(max_shard_size, bool):
        value = float(max_shard_size)
    elif isinstance(max_shard_size, str):
        text = max_shard_size.strip()
        unit = SIZE_UNITS.get(text[-2:].upper())
        try:
            value = float(text[:-2].strip()) * unit if unit else math.nan
        except ValueError:
            pass
    if math.isfinite(value) and value >= 1:
        return int(value)
    raise InvalidInputError(f"max_shard_size: {max_shard_size!r} is not allowed; use a number of bytes (≥ 1) or "
                            f"a number and a unit, e.g. \"5GB\", \"500MB\" (units: {', '.join(SIZE_UNITS)})")


def tensor_bytes(tensor: torch.Tensor) -> int:
    """The bytes a tensor takes in a weights file."""
    return tensor.numel() * tensor.element_size()


def split_into_shards(state: dict[str, torch.Tensor], max_bytes: int) -> list[list[str]]:
    """The state dict's keys grouped into shards of at most `max_bytes` each (in order; a tensor
    larger than that alone in its shard)."""
    shards: list[list[str]] = []
    current: list[str] = []
    current_bytes = 0
    for key, tensor in state.items():
        size = tensor_bytes(tensor)
        if size > max_bytes:
            shards.append([key])
            continue
        if current and current_bytes + size > max_bytes:
            shards.append(current)
            current, current_bytes = [], 0
        current.append(key)
        current_bytes += size
    if current or not shards:
        shards.append(current)
    return shards


# Every weight file of a unet/ folder, one template per kind: {variant} is ".fp16" or "", {suffix}
# ".safetensors" or ".bin", {shard} "-00001-of-00003". Names, Hub globs and the patterns that
# recognize files are all made from this table.
WEIGHT_FILES = {
    "file": "diffusion_pytorch_model{variant}{suffix}",
    "shard": "diffusion_pytorch_model{variant}{shard}{suffix}",
    "index": "diffusion_pytorch_model{suffix}.index{variant}.json",
    "legacy index": "diffusion_pytorch_model{suffix}{variant}.index.json",  # older diffusers' name of a variant's index
}
SUFFIXES = (".safetensors", ".bin")
SHARD_NUMBERS = r"-\d{5}-of-\d{5}"
ANY_VARIANT = object()  # `weight_file_pattern`: no variant or any one (`variant_of` says which)


def weight_file_name(kind: str, variant: str | None, suffix: str, shard: tuple[int, int] | None = None) -> str:
    """The name of one weight file: `kind` of `WEIGHT_FILES`, `shard` = (i, count) for a shard."""
    return WEIGHT_FILES[kind].format(variant=f".{variant}" if variant else "", suffix=suffix,
                                     shard=f"-{shard[0]:05d}-of-{shard[1]:05d}" if shard else "")


def weight_file_pattern(kinds: tuple[str, ...], variant: object) -> re.Pattern:
    """A pattern for the whole name of a weight file of `kinds` (either format) of `variant`: a
    name, None (no variant) or `ANY_VARIANT` (then `variant_of` reads which one a match names)."""
    alternatives = []
    for i, kind in enumerate(kinds):
        # any variant: a name without dots that does not end in a shard's numbers (fp16-00001-of-00002)
        tag = rf"(?:\.(?P<variant{i}>(?:(?!{SHARD_NUMBERS}\.)[^.])+))?" if variant is ANY_VARIANT else \
            re.escape(f".{variant}") if variant else ""
        template = re.escape(WEIGHT_FILES[kind]).replace(r"\{", "{").replace(r"\}", "}")
        alternatives.append(template.format(variant=tag, suffix=r"\.(?:safetensors|bin)", shard=SHARD_NUMBERS))
    return re.compile("|".join(f"(?:{alternative})" for alternative in alternatives))


def variant_of(match: re.Match) -> str | None:
    """The variant a `weight_file_pattern(..., ANY_VARIANT)` match names (None: no variant)."""
    return next((value for value in match.groupdict().values() if value), None)


def weight_file_globs(variant: str | None) -> list[str]:
    """Glob patterns of every weight file of `variant` (no other variant's): each kind, each format;
    glob characters in the variant's name stand for themselves ([*], [?], [[])."""
    tag = "".join(f"[{c}]" if c in "*?[" else c for c in f".{variant}") if variant else ""
    globs = [template.format(variant=tag, suffix=suffix, shard="-?????-of-?????")
             for suffix in SUFFIXES for template in WEIGHT_FILES.values()]
    return list(dict.fromkeys(globs))  # without a variant the legacy index is the index


def shard_names(variant: str | None, suffix: str, count: int) -> list[str]:
    """The shard files of `variant`'s weights in format `suffix`, split `count` ways."""
    return [weight_file_name("shard", variant, suffix, (i, count)) for i in range(1, count + 1)]


def index_name(variant: str | None, suffix: str, legacy: bool = False) -> str:
    """The index of sharded weights: diffusion_pytorch_model.safetensors.index[.variant].json, or with
    `legacy` the name older diffusers gave a variant's index (….safetensors.variant.index.json)."""
    return weight_file_name("legacy index" if legacy else "index", variant, suffix)


def index_data(state: dict[str, torch.Tensor], shards: list[list[str]], names: list[str]) -> dict:
    """The index diffusers writes beside shards: the total size and which file holds each tensor."""
    return {"metadata": {"total_size": sum(tensor_bytes(t) for t in state.values())},
            "weight_map": {key: name for keys, name in zip(shards, names) for key in keys}}


def read_index(path: Path) -> dict[str, list[str]]:
    """The shard files an index names, each with the tensors it maps to that file (in the index's
    order); a malformed index, or a file name that is not a plain name in the index's own folder,
    is a one-line error."""
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"weights: corrupt JSON in the index {path}: {exc}") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not (isinstance(weight_map, dict) and weight_map
            and all(isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items())):
        raise InvalidInputError(f"weights: the index {path} has no \"weight_map\" of tensor names to shard files")
    files: dict[str, list[str]] = {}
    for key, name in weight_map.items():
        if Path(name).name != name or name in ("", ".", ".."):
            raise InvalidInputError(f"weights: the index {path} names the shard {name!r}; shards are plain file "
                                    f"names in {path.parent}")
        files.setdefault(name, []).append(key)
    for name in files:
        if not (path.parent / name).is_file():
            raise InvalidInputError(f"weights: the index {path} names the shard {name}, which {path.parent} does not "
                                    f"have (an incomplete download or save?)")
    return files
