"""A small MLP for low-dimensional data (the 2-D toys), with the UNet's forward signature.

Architecture only, like `UNetModel`: F(x, c_noise, class_labels). The noise label is embedded
with the UNet's sinusoidal `timestep_embedding`, mapped by Linear → SiLU → Linear to the hidden
width, plus a class embedding when conditional, and added to the input of every hidden layer:

    h = W_in·x;  h = W_i·dropout(SiLU(h + emb)) for i = 1..depth;  out = W_out·SiLU(h)

W_out starts at zero (as ADM's output layer), so F = 0 at initialisation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInputError
from .dropout import Dropout
from .unet import (MAX_TIME_INPUTS, TimestepEmbedding, embed_classes, embed_times, extra_time_embeddings,
                   per_sample_times)


@dataclass(frozen=True)
class MLPConfig:
    """Hyper-parameters of the MLP."""

    dim: int = 2                              # data dimension (in = out)
    hidden: int = 256                         # hidden width
    depth: int = 4                            # hidden layers
    emb_dim: int = 64                         # width of the sinusoidal noise-label embedding
    num_classes: int | None = None            # class-conditional when set
    dropout: float = 0.0                      # dropout before each hidden layer
    time_inputs: int = 1                      # time inputs per sample: 1, or 2 (MeanFlow's (t, t − r))

    def __post_init__(self) -> None:
        for name in ("dim", "hidden", "depth", "emb_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"{name}: {value!r} must be a positive integer")
        if isinstance(self.time_inputs, bool) or self.time_inputs not in range(1, MAX_TIME_INPUTS + 1):
            raise InvalidInputError(f"time_inputs: {self.time_inputs!r} must be an integer from 1 to {MAX_TIME_INPUTS}")
        if self.num_classes is not None and (not isinstance(self.num_classes, int) or self.num_classes < 1):
            raise InvalidInputError(f"num_classes: {self.num_classes!r} must be None or a positive count")
        if not 0.0 <= self.dropout < 1.0:
            raise InvalidInputError(f"dropout: {self.dropout!r} must be in [0, 1)")

    @property
    def sample_shape(self) -> tuple[int]:
        """(dim,) of one sample (a point)."""
        return (self.dim,)

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["time_inputs"] == 1:   # one time input: the configs written before the field existed
            del d["time_inputs"]
        return d


class MLP(nn.Module):
    """F(x, c_noise, class_labels) → output with x's shape (B, dim)."""

    def __init__(self, config: MLPConfig | None = None, **kwargs) -> None:
        super().__init__()
        if config is None:
            config = MLPConfig(**kwargs)
        elif kwargs:
            raise TypeError("pass either an MLPConfig or keyword arguments, not both")
        self.config = config
        cfg = config
        self.time_embedding = TimestepEmbedding(cfg.emb_dim, cfg.hidden)
        self.extra_time_embeddings = extra_time_embeddings(cfg.time_inputs, cfg.emb_dim, cfg.hidden)
        self.class_embedding = nn.Embedding(cfg.num_classes, cfg.hidden) if cfg.num_classes else None
        self.proj_in = nn.Linear(cfg.dim, cfg.hidden)
        self.layers = nn.ModuleList(nn.Linear(cfg.hidden, cfg.hidden) for _ in range(cfg.depth))
        self.dropout = Dropout(cfg.dropout)
        self.proj_out = nn.Linear(cfg.hidden, cfg.dim)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    @property
    def dtype(self) -> torch.dtype:
        return self.proj_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.proj_in.weight.device

    def forward(
        self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: (B, dim) scaled input; noise_labels: (B,) c_noise values ((B, k) for k time inputs);
        class_labels: (B,) ints."""
        emb = embed_times(self.time_embedding, self.extra_time_embeddings, per_sample_times(noise_labels, x),
                          self.config.emb_dim, x.dtype)
        if self.class_embedding is not None:
            if class_labels is None:
                raise InvalidInputError("class_labels: this model is class-conditional and needs one label per sample")
            emb = emb + embed_classes(self.class_embedding, class_labels)
        elif class_labels is not None:
            raise InvalidInputError("class_labels: this model is unconditional and takes no class labels")
        h = self.proj_in(x)
        for layer in self.layers:
            h = layer(self.dropout(F.silu(h + emb)))
        return self.proj_out(F.silu(h))
