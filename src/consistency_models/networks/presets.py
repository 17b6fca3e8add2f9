"""Named UNet configurations: the published consistency-model networks and small CPU ones."""

from __future__ import annotations

from .mlp import MLPConfig
from .unet import UNetConfig

PRESETS: dict[str, UNetConfig] = {
    # OpenAI cd/ct_imagenet64 and edm_imagenet64_ema (launch.sh flags).
    "imagenet64": UNetConfig(
        image_size=64, model_channels=192, channel_mult=(1, 2, 3, 4), num_res_blocks=3,
        attention_resolutions=(32, 16, 8), num_head_channels=64, use_scale_shift_norm=True, num_classes=1000,
    ),
    # OpenAI cd/ct_bedroom256, cd/ct_cat256 and their EDM teachers.
    "lsun256": UNetConfig(
        image_size=256, model_channels=256, channel_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2,
        attention_resolutions=(32, 16, 8), num_head_channels=64, use_scale_shift_norm=False, num_classes=None,
    ),
    # diffusers' consistency-model test UNet (32 px, block_out_channels (32, 64), head dim 8).
    "test": UNetConfig(
        image_size=32, model_channels=32, channel_mult=(1, 2), num_res_blocks=2,
        attention_resolutions=(16,), num_head_channels=8, use_scale_shift_norm=True, num_classes=1000,
    ),
    # Small networks that train on two CPU cores.
    "tiny16": UNetConfig(
        image_size=16, in_channels=1, out_channels=1, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
        attention_resolutions=(8,), num_head_channels=32, use_scale_shift_norm=True, num_classes=10,
    ),
    # The embedded digits model: 16 px grayscale, 10 classes, ~2M parameters.
    "digits16": UNetConfig(
        image_size=16, in_channels=1, out_channels=1, model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=2,
        attention_resolutions=(8, 4), num_head_channels=32, use_scale_shift_norm=True, num_classes=10, dropout=0.1,
    ),
    "small32": UNetConfig(
        image_size=32, model_channels=64, channel_mult=(1, 2, 2), num_res_blocks=2,
        attention_resolutions=(16, 8), num_head_channels=32, use_scale_shift_norm=True, num_classes=None,
    ),
}


def preset(name: str, **overrides) -> UNetConfig:
    """The preset `name`, with any field replaced by a keyword argument."""
    if name not in PRESETS:
        raise ValueError(f"preset: unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    return UNetConfig(**{**PRESETS[name].to_dict(), **overrides})


# MLPs for the 2-D toy distributions (kept apart from the UNet PRESETS).
MLP_PRESETS: dict[str, MLPConfig] = {
    "mlp2d": MLPConfig(dim=2, hidden=256, depth=4, emb_dim=64, num_classes=None, dropout=0.0),
}
