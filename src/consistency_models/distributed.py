"""Process-group setup for torchrun: gloo on CPU, nccl on CUDA; a no-op for one process."""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import InvalidInputError


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def gather(self, value: object) -> list:
        """Every process's `value` (picklable), in rank order, on every process; [value] for one."""
        if not self.enabled:
            return [value]
        values: list = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of `value` over all processes (for logging)."""
        if not self.enabled:
            return value
        value = value.detach().clone()
        dist.all_reduce(value)
        return value / self.world_size


def existing_device(name: str | torch.device, instead: str = "'cpu'") -> torch.device:
    """A device name parsed, and a CUDA device checked against this machine (one line naming the
    value otherwise; `instead`: what to use when there is no CUDA). Other types pass as torch
    takes them (meta, mps, ...)."""
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise InvalidInputError(f"device: {name!r} is not a device name (cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(f"device: {name!r} was asked for, but CUDA is not available here; use {instead}")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise InvalidInputError(f"device: {name!r} is not a GPU of this machine; use cuda:0 to cuda:{count - 1}")
    return dev


def default_device() -> str:
    """cuda where this machine has a GPU, else cpu. Asked when a device is needed, never at import:
    asking CUDA initializes it, and a process forked after that cannot use it."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(name: str | torch.device) -> torch.device:
    """A device checked against this machine before anything uses it: cpu, cuda or cuda:N with a
    GPU N here (one line naming the value and what is allowed otherwise)."""
    dev = existing_device(name, instead="--device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise InvalidInputError(f"device: {name!r} is not supported; use cpu, cuda or cuda:N")
    return dev


def rank_device(dev: torch.device, local_rank: int, world_size: int, gpus: int) -> torch.device:
    """This process's device: "cuda" means the GPU of its LOCAL_RANK, which must exist; under
    torchrun (world_size > 1) a GPU named by index must be that one too — ranks sharing a GPU make
    NCCL fail at the first collective ("Duplicate GPU detected")."""
    if dev.type != "cuda":
        return dev
    if dev.index is None:
        if local_rank >= gpus:
            raise InvalidInputError(
                f"device: 'cuda' for the process of LOCAL_RANK {local_rank}, but this machine has {gpus} GPU(s); "
                f"start at most {gpus} per machine (torchrun --nproc_per_node {gpus}) or use --device cpu")
        return torch.device("cuda", local_rank)
    if world_size > 1 and dev.index != local_rank:
        raise InvalidInputError(
            f"device: {str(dev)!r} under torchrun: each process takes the GPU of its LOCAL_RANK "
            f"(this one cuda:{local_rank}); use --device cuda")
    return dev


def setup_distributed(device: str | torch.device | None = None) -> DistributedContext:
    """Join the torchrun process group when WORLD_SIZE > 1; pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = check_device(default_device() if device is None else device)
    if dev.type == "cuda":
        dev = rank_device(dev, local_rank, world_size, torch.cuda.device_count())
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistributedContext(rank, world_size, local_rank, dev)


def teardown_distributed() -> None:
    """Leave the process group. What still holds it and is no longer used — a finished run's DDP
    wrapper, kept alive by reference cycles — is freed first: freed at interpreter exit instead,
    gloo's worker threads can abort the process ("terminate called without an active exception",
    SIGABRT, now and then on a rank that finished first)."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
