"""Network architectures (no σ-scalings here)."""

from .presets import PRESETS, preset
from .unet import UNetConfig, UNetModel

__all__ = ["PRESETS", "UNetConfig", "UNetModel", "preset"]
