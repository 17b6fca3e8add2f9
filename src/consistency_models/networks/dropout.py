"""Dropout whose mask does not depend on how the activations lie in memory, nor on their dtype.

PyTorch draws a dropout mask in x's memory order (`empty_like(x).bernoulli_(1 − p)` on the CPU,
one fused kernel over x's storage on CUDA, whose random numbers go out in groups of 2, 4 or 8
elements by x's dtype and alignment). Compiled by torch.compile, the same activations may lie
otherwise: inductor picks channels_last around convolutions, and torch 2.11 keeps that layout
where it calls dropout (2.13 restores the eager strides first), so from the same random state
the compiled network masks other elements than the eager one — measured O(1) apart in a conv
network. The training steps need the masks to agree: they evaluate the student and its targets
from one rewound random state (`training/methods/loss.py`, `same_dropout`) — the student
compiled in the fast step, the sCM and MeanFlow JVPs and TCM's frozen stage-1 network plain
(`training/fast_step.py`), and the JVP in float32 or float64 beside a bfloat16 student.

Here the mask is always drawn as PyTorch draws it for a contiguous float32 tensor of x's shape.
On the CPU, where those draws depend on neither dtype nor alignment, contiguous eager input takes
PyTorch's own call (the same masks as `nn.Dropout`, bit for bit); otherwise, on CUDA and under
torch.compile, the mask is PyTorch's dropout of a fresh row-major float32 tensor of ones (its
1-byte keep-mask is what the backward keeps), applied to x.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Dropout(nn.Dropout):
    """`nn.Dropout` (zero each element with probability p, scale the rest by 1/(1 − p)) with the
    mask laid out row-major over x's shape and drawn as for float32. A subclass:
    `isinstance(m, nn.Dropout)` still holds; there is no in-place variant."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.p == 1.0:  # PyTorch draws nothing here either
            return x * 0.0
        if x.device.type == "cpu" and x.is_contiguous() and not torch.compiler.is_compiling():
            return F.dropout(x, self.p, training=True)
        ones = torch.ones(x.shape, dtype=torch.float32, device=x.device)
        _, keep = torch.native_dropout(ones, self.p, True)
        return x * keep * (1.0 / (1.0 - self.p))


__all__ = ["Dropout"]
