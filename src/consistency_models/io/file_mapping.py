"""Loading a network from its weights file with one copy, and none of the file kept.

safetensors maps a file's tensors copy-on-write (each its own storage over the file's pages) rather
than reading them. The network takes those tensors as its parameters (`load_state_dict(assign=True)`),
its conversions (dtype, device, channels_last for the fast kernels) then read the file once into
their own tensors, and `release_file` copies what no conversion replaced (biases and norms, or all
of a float32 network that stays as it is). So each weight is copied once, straight into its final
form (ImageNet-64's default float32 load: 1.14 → 0.56–0.88 s, docs/benchmarks.md), and nothing
maps the file afterwards: a network that kept the mapping would read a file rewritten in place
(`cp` over it, safetensors' `save_file` to the same path, the very tensors it reads included)
as the new bytes, or die of SIGBUS past a shortened end, and on Windows would keep the file from
being replaced.
"""

from __future__ import annotations

import torch


def owned_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` with every tensor the sole, whole, contiguous user of its memory: one that shares its
    storage with another name, is a view into a larger one (both occur in torch.save'd files) or is
    strided is copied. safetensors' tensors already are."""
    seen: set[int] = set()
    owned = {}
    for name, tensor in state.items():
        storage = tensor.untyped_storage()
        whole = tensor.is_contiguous() and tensor.storage_offset() == 0 \
            and storage.nbytes() == tensor.numel() * tensor.element_size()
        owned[name] = tensor if whole and storage.data_ptr() not in seen \
            else tensor.clone(memory_format=torch.contiguous_format)
        seen.add(storage.data_ptr())
    return owned


def mapped_storages(module: torch.nn.Module) -> set[int]:
    """The storages (by address) of `module`'s tensors that map a file: storages PyTorch did not
    allocate itself, which it cannot resize (safetensors' mapped tensors are such)."""
    return {t.untyped_storage().data_ptr() for t in (*module.parameters(), *module.buffers())
            if not t.untyped_storage().resizable()}


def release_file(module: torch.nn.Module, mapped: set[int]) -> None:
    """Copy every tensor of `module` that still uses one of the `mapped` storages (taken right after
    loading, `mapped_storages`), keeping the Parameter objects and their layout."""
    with torch.no_grad():
        for tensor in (*module.parameters(), *module.buffers()):
            if tensor.untyped_storage().data_ptr() in mapped:
                tensor.data = tensor.detach().clone()
