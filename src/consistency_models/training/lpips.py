"""LPIPS distance (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features"), VGG variant.

d(x, y) = Σ_l mean_hw ‖w_l ⊙ (φ̂_l(x) − φ̂_l(y))‖², where φ̂_l are the channel-normalised VGG-16
activations relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 of the inputs (in [−1, 1], shifted and
scaled as the reference does) and w_l the learned 1×1 linear weights.

Nothing is downloaded: the user gives two files, read without pickle code:
- `vgg`: the VGG-16 feature weights in torchvision's layout (keys `features.N.weight/bias`,
  e.g. `vgg16-397923af.pth`; other keys are ignored);
- `lin`: the LPIPS linear layers (keys `lin0.model.1.weight` … `lin4.model.1.weight`, the
  `vgg.pth` of the reference release v0.1).
Consistency-model training (OpenAI's `lpips` loss) resizes both images to 224 px first.
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
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


def _vgg_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = 3
    for item in _VGG16:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, item, 3, padding=1), nn.ReLU(inplace=False)]
            channels = item
    return nn.Sequential(*layers)


class LPIPS(nn.Module):
    """Per-sample LPIPS distance between image batches in [−1, 1] (frozen, eval mode)."""

    def __init__(self, resize: int | None = 224) -> None:
        super().__init__()
        self.features = _vgg_features()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in _CHANNELS)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.resize = resize
        self.requires_grad_(False).eval()

    @classmethod
    def from_files(cls, vgg: str | Path, lin: str | Path, resize: int | None = 224) -> "LPIPS":
        """Load the VGG-16 features and the linear layers from the user's files."""
        model = cls(resize)
        vgg_state = load_weights(Path(vgg))
        features = {k[len("features."):]: v for k, v in vgg_state.items() if k.startswith("features.")}
        lin_state = load_weights(Path(lin))
        lins = {k.replace("lin", "", 1).replace(".model.1.", "."): v for k, v in lin_state.items()
                if k.startswith("lin") and ".model.1." in k}
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

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x, y = x.repeat(1, 3, 1, 1), y.repeat(1, 3, 1, 1)
        x, y = x.float(), y.float()
        if self.resize is not None and x.shape[-1] != self.resize:
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
            y = F.interpolate(y, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
        x, y = (x - self.shift) / self.scale, (y - self.shift) / self.scale
        total = 0
        for lin, a, b in zip(self.lins, self._activations(x), self._activations(y)):
            total = total + lin((a - b).pow(2)).mean(dim=(1, 2, 3))
        return total
