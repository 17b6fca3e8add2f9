"""Test-only reference: an independent, minimal re-implementation of the ADM UNet
(``UNetModel`` in ``cm/unet.py`` of openai/consistency_models).

It is NOT part of the package. Its ``state_dict()`` uses the same key names and tensor
shapes as OpenAI's released checkpoints (``cd_imagenet64_l2.pt``, ``edm_imagenet64_ema.pt``,
``cd_bedroom256_lpips.pt``, ...) and its forward computes the same function, so tests can
compare the package's own network / checkpoint conversion against it.

Scope: ``resblock_updown=True`` and ``num_head_channels`` only (what all released
checkpoints use), float32, no gradient checkpointing. Attention follows OpenAI's default
``attention_type="flash"`` path: qkv channels are packed ``(three heads head_dim)``, i.e.
``[q | k | v]``, each block head-major, softmax scale ``1/sqrt(head_dim)``. The attention
``qkv``/``proj_out`` are 1x1 **Conv2d** (OpenAI's ``AttentionBlock`` has ``dims=2``), so
their weights are ``(3C, C, 1, 1)`` / ``(C, C, 1, 1)``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class GroupNorm32(nn.GroupNorm):
    """GroupNorm(32 groups, eps 1e-5) computed in float32, cast back to the input dtype."""

    def __init__(self, channels: int) -> None:
        super().__init__(32, channels, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``cat[cos(t*f), sin(t*f)]`` with ``f_i = exp(-ln(P) i / half)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs.to(t.device)[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class ResBlock(nn.Module):
    def __init__(self, ch: int, emb_ch: int, out_ch: int, dropout: float, scale_shift: bool,
                 up: bool = False, down: bool = False) -> None:
        super().__init__()
        self.scale_shift, self.up, self.down = scale_shift, up, down
        self.in_layers = nn.Sequential(GroupNorm32(ch), nn.SiLU(), nn.Conv2d(ch, out_ch, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_ch, 2 * out_ch if scale_shift else out_ch))
        self.out_layers = nn.Sequential(GroupNorm32(out_ch), nn.SiLU(), nn.Dropout(dropout),
                                        nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip_connection = nn.Identity() if out_ch == ch else nn.Conv2d(ch, out_ch, 1)

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if self.down:
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.up or self.down:
            h = self._resample(self.in_layers[:-1](x))
            x = self._resample(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        e = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    def __init__(self, ch: int, num_head_channels: int) -> None:
        super().__init__()
        assert ch % num_head_channels == 0
        self.heads = ch // num_head_channels
        self.norm = GroupNorm32(ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww = x.shape
        d = c // self.heads
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, d, hh * ww)  # (three heads d)
        q, k, v = qkv.unbind(dim=1)  # each (b, heads, d, s)
        w = torch.einsum("bhdt,bhds->bhts", q, k) / math.sqrt(d)
        w = torch.softmax(w.float(), dim=-1).to(q.dtype)
        a = torch.einsum("bhts,bhds->bhdt", w, v).reshape(b, c, hh, ww)  # (heads d) channels
        return x + self.proj_out(a)


class Block(nn.ModuleList):
    """Stand-in for TimestepEmbedSequential: children indexed 0, 1, 2 like nn.Sequential."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class OpenAIUNet(nn.Module):
    def __init__(self, image_size: int, in_channels: int, model_channels: int, out_channels: int,
                 num_res_blocks: int, attention_resolutions: Sequence[int], channel_mult: Sequence[int],
                 num_classes: int | None = None, num_head_channels: int = 64,
                 use_scale_shift_norm: bool = True, resblock_updown: bool = True,
                 dropout: float = 0.0) -> None:
        super().__init__()
        assert resblock_updown, "only resblock_updown=True is supported"
        self.image_size, self.model_channels, self.num_classes = image_size, model_channels, num_classes
        emb_ch = 4 * model_channels
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, emb_ch)

        def res(c_in: int, c_out: int, **kw: bool) -> ResBlock:
            return ResBlock(c_in, emb_ch, c_out, dropout, use_scale_shift_norm, **kw)

        ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([Block([nn.Conv2d(in_channels, ch, 3, padding=1)])])
        skip_chs, ds = [ch], 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res(ch, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in attention_resolutions:
                    layers.append(AttentionBlock(ch, num_head_channels))
                self.input_blocks.append(Block(layers))
                skip_chs.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(Block([res(ch, ch, down=True)]))
                skip_chs.append(ch)
                ds *= 2
        self.middle_block = Block([res(ch, ch), AttentionBlock(ch, num_head_channels), res(ch, ch)])
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [res(ch + skip_chs.pop(), int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in attention_resolutions:
                    layers.append(AttentionBlock(ch, num_head_channels))
                if level and i == num_res_blocks:
                    layers.append(res(ch, ch, up=True))
                    ds //= 2
                self.output_blocks.append(Block(layers))
        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), nn.Conv2d(ch, out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        assert (y is not None) == (self.num_classes is not None)
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        if y is not None:
            emb = emb + self.label_emb(y)
        hs, h = [], x
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)


@torch.no_grad()
def randomize_(model: nn.Module, generator: torch.Generator, std: float = 0.05) -> nn.Module:
    """Fill every parameter (zero-initialised ones included) with small random values;
    GroupNorm weights get ``1 + noise`` so activations stay well scaled."""
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            noise = torch.randn(p.shape, generator=generator, dtype=torch.float32) * std
            if isinstance(module, nn.GroupNorm) and name == "weight":
                noise += 1.0
            p.copy_(noise.to(p.dtype))
    return model


if __name__ == "__main__":
    torch.manual_seed(0)
    net = OpenAIUNet(image_size=32, in_channels=3, model_channels=32, out_channels=3, num_res_blocks=2,
                     attention_resolutions=(2,), channel_mult=(1, 2), num_classes=10, num_head_channels=8)
    randomize_(net, torch.Generator().manual_seed(0))
    for key, tensor in net.state_dict().items():
        print(key, tuple(tensor.shape))
    with torch.no_grad():
        out = net(torch.randn(2, 3, 32, 32), torch.tensor([0.5, 10.0]), torch.tensor([1, 7]))
    print("output", tuple(out.shape), "std", float(out.std()))
