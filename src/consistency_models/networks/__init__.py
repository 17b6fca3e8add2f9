"""Network architectures (no σ-scalings here)."""

from .mlp import MLP, MLPConfig
from .presets import MLP_PRESETS, PRESETS, preset
from .unet import UNetConfig, UNetModel

__all__ = ["MLP", "MLPConfig", "MLP_PRESETS", "PRESETS", "UNetConfig", "UNetModel", "preset"]
