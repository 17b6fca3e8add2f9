"""Dropout whose mask does not depend on how the activations lie in memory.

PyTorch draws a dropout mask in x's memory order (`empty_like(x).bernoulli_(1 − p)` on the CPU,
one fused kernel over x's storage on CUDA). Compiled by torch.compile, the same activations may
lie otherwise: inductor picks channels_last around convolutions, and torch 2.11 keeps that
layout where it calls dropout (2.13 restores the eager strides first), so from the same random
state the compiled network masks other elements than the eager one — measured O(1) apart in a
conv network. The training steps need the two to agree: they evaluate the student and its
targets from one rewound random state (`training/methods/loss.py`, `same_dropout`), the student
compiled in the fast step and the sCM and MeanFlow JVPs on the plain network
(`training/fast_step.py`).

Here the mask is always laid out row-major over x's shape: for contiguous eager input that is
PyTorch's own call (the same masks as `nn.Dropout`, bit for bit); otherwise, and under
torch.compile, PyTorch's dropout of a fresh row-major tensor of ones, which draws the same mask
from the same random state, times x (under compile one more activation-sized tensor written per
dropout layer; presets with dropout 0, imagenet64's among them, draw no mask at all).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Dropout(nn.Dropout):
    """`nn.Dropout` (zero each element with probability p, scale the rest by 1/(1 − p)) with the
    mask laid out row-major over x's shape. A subclass: `isinstance(m, nn.Dropout)` still holds."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.is_contiguous() and not torch.compiler.is_compiling():
            return F.dropout(x, self.p, training=True)
        ones = torch.ones(x.shape, dtype=x.dtype, device=x.device)
        scaled_mask, _ = torch.native_dropout(ones, self.p, True)
        return x * scaled_mask


__all__ = ["Dropout"]
