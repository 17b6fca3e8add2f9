"""The fast training step: the run's networks compiled by torch.compile.

The loss gets compiled wrappers (`torch.compile(module)`, sharing the module's parameters) of
the trained network (around its DDP wrapper when distributed), of the CD/CT target θ⁻ and of
the teacher: forward and backward fused by inductor (GroupNorm + SiLU + scale-shift in one
kernel, autocast casts folded into their neighbours, one memory layout for the whole graph).
The Trainer keeps the plain modules for the optimizer, the EMA, checkpoints and export
(`methods/loss.unwrap` peels both wrappers).

The JVP of sCT/sCD takes the plain network: a compiled callable first met under
torch.func.jvp is marked by dynamo as not to be compiled, ever (its frame is skipped from then
on, outside the JVP too), and dynamo cannot trace the network under forward mode. The JVP's
attention has its own fused kernel instead (networks/attention.py).

Dropout: inductor would draw its masks from its own generator, so the student and its
stop-gradient target (evaluated with a rewound RNG, `methods/loss.same_dropout`) would see
different masks; `fallback_random=True` keeps PyTorch's RNG, and the networks' `Dropout`
(`networks/dropout.py`) lays the mask out row-major whatever layout inductor picks, so the
compiled network draws the eager masks (torch 2.11's inductor calls dropout on channels_last
buffers).
"""

from __future__ import annotations

import torch
from torch import nn

from .config import TrainConfig

COMPILE_OPTIONS = {"fallback_random": True}


def compiles(cfg: TrainConfig, device: torch.device) -> bool:
    """The run's `compile` setting; unset: on CUDA yes, elsewhere no (inductor's CPU compile of a
    UNet takes minutes on a few cores and pays back only over long runs)."""
    return cfg.compile if cfg.compile is not None else device.type == "cuda"


def compiled(module: nn.Module | None) -> nn.Module | None:
    """`module` behind torch.compile (None stays None)."""
    return None if module is None else torch.compile(module, options=COMPILE_OPTIONS)


__all__ = ["COMPILE_OPTIONS", "compiled", "compiles"]
