"""LPIPS distance (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features"), VGG variant.

d(x, y) = Σ_l mean_hw Σ_c w_lc (φ̂_lc(x) − φ̂_lc(y))², where φ̂_l are the channel-normalised VGG-16
activations relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (φ/(‖φ‖ + 1e-10)) and w_l the learned
linear weights. Two variants (inputs in [−1, 1]):

- "openai": what OpenAI's consistency models train with (`--distance lpips`): piq 0.7's
  `LPIPS(replace_pooling=True)` — VGG's max pools replaced by 2×2 average pools, inputs mapped
  to [0, 1] and normalised with ImageNet's mean/std — applied after OpenAI's own resize, which
  upsamples both images bilinearly to 224 px only when they are narrower than 256 px
  (`cm/karras_diffusion.py`, `consistency_losses`).
- "standard": the reference `lpips` package (net="vgg", v0.1): max pools, its shift/scale
  layer, here on images always resized to 224 px (`--distance lpips_standard`).

Nothing is downloaded: the user gives two files, read without pickle code:
- `vgg`: the VGG-16 feature weights in torchvision's layout (keys `features.N.weight/bias`,
  e.g. `vgg16-397923af.pth`; other keys are ignored) — both packages use these;
- `lin`: the LPIPS linear layers: the reference release's `vgg.pth` (keys `lin0.model.1.weight`
  … `lin4.model.1.weight`) or piq's `lpips_weights.pt` (a list of the five tensors).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInputError
from ..io.diffusers_format import load_weights

# VGG-16 `features`: (channels out) per conv, "M" = 2×2 max pool; LPIPS taps after the ReLUs
# at these feature indices: relu1_2 = 3, relu2_2 = 8, relu3_3 = 15, relu4_3 = 22, relu5_3 = 29.
_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
_TAPS = (3, 8, 15, 22, 29)
_CHANNELS = (64, 128, 256, 512, 512)
_SHIFT = (-0.030, -0.088, -0.188)            # the lpips package's ScalingLayer, on [−1, 1]
_SCALE = (0.458, 0.448, 0.450)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)       # piq, on [0, 1]
_IMAGENET_STD = (0.229, 0.224, 0.225)
VARIANTS = ("openai", "standard")
OPENAI_RESIZE_BELOW = 256                    # OpenAI resizes to 224 only images narrower than this


def _vgg_features(pooling: type[nn.Module] = nn.MaxPool2d) -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = 3
    for item in _VGG16:
        if item == "M":
            layers.append(pooling(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, item, 3, padding=1), nn.ReLU(inplace=False)]
            channels = item
    return nn.Sequential(*layers)


def _lin_state(loaded: object) -> dict[str, torch.Tensor]:
    """The linear weights as {"0.weight": (1, C, 1, 1), …}: from lpips' `lin{i}.model.1.weight` keys
    (or `.model.0.`, as some exports have it) or from piq's list of five tensors."""
    if isinstance(loaded, (list, tuple)):
        return {f"{i}.weight": t for i, t in enumerate(loaded) if torch.is_tensor(t)}
    if not isinstance(loaded, dict):
        return {}
    return {k.split(".")[0][len("lin"):] + ".weight": v for k, v in loaded.items()
            if k.startswith("lin") and (k.endswith(".model.1.weight") or k.endswith(".model.0.weight"))}


class LPIPS(nn.Module):
    """Per-sample LPIPS distance between image batches in [−1, 1] (frozen, eval mode).

    `variant` "openai" (average pools, ImageNet normalisation, resize to `resize` px only below
    256 px) or "standard" (max pools, the lpips scaling layer, resize whenever the side is not
    `resize`; None: never)."""

    def __init__(self, resize: int | None = 224, variant: str = "standard") -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant: {variant!r} is not one of {', '.join(VARIANTS)}")
        self.variant = variant
        self.features = _vgg_features(nn.AvgPool2d if variant == "openai" else nn.MaxPool2d)
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in _CHANNELS)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("mean01", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std01", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.resize = resize
        self.requires_grad_(False).eval()

    @classmethod
    def from_files(cls, vgg: str | Path, lin: str | Path, resize: int | None = 224,
                   variant: str = "standard") -> "LPIPS":
        """Load the VGG-16 features and the linear layers from the user's files."""
        model = cls(resize, variant)
        vgg_state = load_weights(Path(vgg))
        features = {k[len("features."):]: v for k, v in vgg_state.items() if k.startswith("features.")}
        lins = _lin_state(load_weights(Path(lin), raw=True))
        for target, state, name in ((model.features, features, vgg), (model.lins, lins, lin)):
            expected = target.state_dict()
            wrong = sorted(set(expected) ^ set(state)) + sorted(
                k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
            if wrong:
                raise InvalidInputError(
                    f"lpips: {name} does not hold the expected LPIPS/VGG-16 weights (keys {', '.join(wrong[:6])})"
                )
            target.load_state_dict({k: v.float() for k, v in state.items()})
        return model

    def _activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in _TAPS:
                out.append(x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10))
            if index == _TAPS[-1]:
                break
        return out

    def _resized(self, x: torch.Tensor) -> torch.Tensor:
        if self.resize is None:
            return x
        needed = x.shape[-1] < OPENAI_RESIZE_BELOW if self.variant == "openai" else x.shape[-1] != self.resize
        if not needed:
            return x
        return F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False)

    def _normalized(self, x: torch.Tensor) -> torch.Tensor:
        if self.variant == "openai":  # as OpenAI calls piq: on (x + 1)/2, then ImageNet's mean/std
            return ((x + 1) / 2.0 - self.mean01) / self.std01
        return (x - self.shift) / self.scale

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x, y = x.repeat(1, 3, 1, 1), y.repeat(1, 3, 1, 1)
        x, y = self._normalized(self._resized(x.float())), self._normalized(self._resized(y.float()))
        total = 0
        for lin, a, b in zip(self.lins, self._activations(x), self._activations(y)):
            if self.variant == "openai":  # piq's order: w·(Δ)² averaged over H, W, then summed over channels
                total = total + (lin.weight * (a - b).pow(2)).mean(dim=(2, 3)).sum(dim=1)
            else:                          # lpips' order: the 1×1 convolution, then the spatial mean
                total = total + lin((a - b).pow(2)).mean(dim=(1, 2, 3))
        return total
