"""The ADM UNet (Dhariwal & Nichol 2021, guided-diffusion `UNetModel`) used by consistency models.

Architecture only: the forward takes an already scaled input c_in·x, the noise label
c_noise (one float per sample) and optional class labels. It knows nothing of σ.

Module names follow diffusers' `UNet2DModel` built with ResNet up/down-sampling
(`ResnetDownsampleBlock2D` / `AttnDownBlock2D` / `UNetMidBlock2D` / `AttnUpBlock2D` /
`ResnetUpsampleBlock2D`), so a diffusers pipeline folder's weights load without renaming;
`consistency_models.io.openai` maps OpenAI's `cm/unet.py` names onto these.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import attention as dot_product_attention
from .dropout import Dropout
from .forward_mode import in_forward_mode
from .half_compute import Float32Matmuls, needs_float32_matmuls
from .winograd import Conv3x3

MAX_SIDE = 4096  # the largest image side accepted
MAX_TIME_INPUTS = 4


@dataclass(frozen=True)
class UNetConfig:
    """Hyper-parameters of the ADM UNet, with OpenAI's flag names."""

    image_size: int = 64                      # height = width of the images
    in_channels: int = 3                      # image channels in
    out_channels: int = 3                     # image channels out
    model_channels: int = 192                 # channels of the first level
    channel_mult: tuple[int, ...] = (1, 2, 3, 4)  # channels per level = model_channels·mult
    num_res_blocks: int = 3                   # residual blocks per level (down path)
    attention_resolutions: tuple[int, ...] = (32, 16, 8)  # pixel resolutions with self-attention
    num_head_channels: int = 64               # channels per attention head
    use_scale_shift_norm: bool = True         # FiLM conditioning; False = additive
    num_classes: int | None = 1000            # class-conditional when set
    dropout: float = 0.0                      # dropout in the residual blocks
    norm_num_groups: int = 32                 # GroupNorm groups
    norm_eps: float = 1e-5                    # GroupNorm epsilon
    time_inputs: int = 1                      # time inputs per sample: 1, or 2 (MeanFlow's (t, t − r))

    @property
    def sample_size(self) -> int:
        """`image_size` under diffusers' `UNet2DModel` name (`pipe.unet.config.sample_size`)."""
        return self.image_size

    @property
    def num_class_embeds(self) -> int | None:
        """`num_classes` under diffusers' `UNet2DModel` name."""
        return self.num_classes

    def __post_init__(self) -> None:
        self._check_fields()
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        object.__setattr__(self, "attention_resolutions", tuple(int(r) for r in self.attention_resolutions))
        levels = len(self.channel_mult)
        if levels < 1:
            raise ValueError("channel_mult: needs at least one level")
        if self.image_size % (2 ** (levels - 1)):
            raise ValueError(
                f"image_size: {self.image_size} must be divisible by 2^(levels-1) = {2 ** (levels - 1)}"
            )
        for mult in self.channel_mult:
            ch = self.model_channels * mult
            if ch % self.norm_num_groups:
                raise ValueError(
                    f"model_channels: level width {ch} is not divisible by norm_num_groups={self.norm_num_groups}"
                )
            if ch % self.num_head_channels:
                raise ValueError(
                    f"num_head_channels: level width {ch} is not divisible by num_head_channels={self.num_head_channels}"
                )
        if self.num_classes is not None and self.num_classes < 1:
            raise ValueError(f"num_classes: must be None or a positive count, got {self.num_classes}")

    def _check_fields(self) -> None:
        """Types and ranges of every field (ValueError naming the field), before anything is built."""
        def integer(value: object, low: int, high: int) -> bool:
            return isinstance(value, numbers.Integral) and not isinstance(value, bool) and low <= value <= high

        def ints(values: object, low: int, high: int, most: int) -> bool:
            return (isinstance(values, (list, tuple)) and 0 < len(values) <= most
                    and all(integer(v, low, high) for v in values))

        real = (lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v))
        checks = [
            ("image_size", integer(self.image_size, 1, MAX_SIDE), f"an integer from 1 to {MAX_SIDE}"),
            ("in_channels", integer(self.in_channels, 1, 64), "an integer from 1 to 64"),
            ("out_channels", integer(self.out_channels, 1, 64), "an integer from 1 to 64"),
            ("model_channels", integer(self.model_channels, 1, 8192), "an integer from 1 to 8192"),
            ("channel_mult", ints(self.channel_mult, 1, 64, 10), "1 to 10 integers from 1 to 64"),
            ("num_res_blocks", integer(self.num_res_blocks, 1, 64), "an integer from 1 to 64"),
            ("attention_resolutions", isinstance(self.attention_resolutions, (list, tuple))
             and all(integer(r, 1, MAX_SIDE) for r in self.attention_resolutions), "pixel sizes (integers)"),
            ("num_head_channels", integer(self.num_head_channels, 1, 8192), "an integer from 1 to 8192"),
            ("use_scale_shift_norm", isinstance(self.use_scale_shift_norm, bool), "true or false"),
            ("num_classes", self.num_classes is None or integer(self.num_classes, 1, 10**6),
             "null or an integer from 1 to 1000000"),
            ("dropout", real(self.dropout) and 0 <= self.dropout < 1, "a probability in [0, 1)"),
            ("norm_num_groups", integer(self.norm_num_groups, 1, 8192), "an integer from 1 to 8192"),
            ("norm_eps", real(self.norm_eps) and self.norm_eps > 0, "a number > 0"),
            ("time_inputs", integer(self.time_inputs, 1, MAX_TIME_INPUTS), f"an integer from 1 to {MAX_TIME_INPUTS}"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise ValueError(f"{name}: {getattr(self, name)!r} is not allowed; use {allowed}")

    def level_resolutions(self) -> list[int]:
        return [self.image_size >> level for level in range(len(self.channel_mult))]

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one sample."""
        return (self.in_channels, self.image_size, self.image_size)

    def level_has_attention(self, level: int) -> bool:
        return (self.image_size >> level) in self.attention_resolutions

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channel_mult"] = list(self.channel_mult)
        d["attention_resolutions"] = list(self.attention_resolutions)
        if d["time_inputs"] == 1:   # one time input: the configs written before the field existed
            del d["time_inputs"]
        return d


# channels_last (use_fast_kernels for sampling, channels_last_pays_off for the training layout) only
# for networks at least this wide at every level.
CHANNELS_LAST_MIN_WIDTH = 128


def group_norm_fp32(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """GroupNorm computed in float32 and returned in x's dtype (ADM's GroupNorm32).

    For a bfloat16/float16 x the kernels are asked directly where they compute in float32
    anyway, saving the two casts (each a full pass over the activations): the CPU kernel
    takes the low-precision x with float32 weights (mean, variance and affine in float32),
    the CUDA kernel accumulates and applies the affine in float32 (`acc_type`) with weights
    of x's dtype. Elsewhere, under torch.compile (which fuses the casts), under CUDA autocast
    and under forward-mode AD (the CPU kernel's tangent would come out float32 for a bfloat16
    output), x is cast to float32 and back. Under forward-mode AD x is made contiguous first:
    group_norm's tangent formula views it as (N, groups, −1), which a channels_last x (the
    training layout of wide networks on CPU) cannot give.
    """
    weight, bias = norm.weight, norm.bias
    if in_forward_mode():
        x = x.contiguous()
    if x.dtype == torch.float64:  # a float64 network (finite-difference references) stays float64
        return F.group_norm(x, norm.num_groups, weight, bias, norm.eps)
    if x.dtype != torch.float32 and not torch.compiler.is_compiling() and not in_forward_mode():
        if x.device.type == "cpu":
            weight = weight.float() if weight is not None else None
            bias = bias.float() if bias is not None else None
            return F.group_norm(x, norm.num_groups, weight, bias, norm.eps)
        if x.device.type == "cuda" and not torch.is_autocast_enabled("cuda"):
            # Under CUDA autocast group_norm is a float32 op: γ, β rounded to x's dtype would be
            # cast back up and the output come out float32; the float32 path below is what
            # torch.compile computes there (the fast training step), with an output in x's dtype.
            weight = weight.to(x.dtype) if weight is not None else None
            bias = bias.to(x.dtype) if bias is not None else None
            return F.group_norm(x, norm.num_groups, weight, bias, norm.eps)
    weight = weight.float() if weight is not None else None
    bias = bias.float() if bias is not None else None
    return F.group_norm(x.float(), norm.num_groups, weight, bias, norm.eps).to(x.dtype)


def upsample_nearest_2x(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour 2× upsampling (F.interpolate's "nearest"). On CPU an NCHW tensor is
    upsampled as one broadcast copy: PyTorch's NCHW kernel goes through channels_last and back
    (measured 3× slower at (32, 64, 16, 16)); channels_last input keeps PyTorch's kernel."""
    if x.device.type != "cpu" or x.dim() != 4 or not x.is_contiguous():
        return F.interpolate(x, scale_factor=2.0, mode="nearest")
    n, c, h, w = x.shape
    return x[:, :, :, None, :, None].expand(n, c, h, 2, w, 2).reshape(n, c, 2 * h, 2 * w)


def timestep_embedding(noise_labels: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [cos(t·f_k), sin(t·f_k)], f_k = exp(−ln(max_period)·k/(dim/2)), in float32
    (in float64 for float64 labels: a float64 network stays float64, for finite-difference references)."""
    half = dim // 2
    dtype = torch.float64 if noise_labels.dtype == torch.float64 else torch.float32
    exponent = -math.log(max_period) * torch.arange(half, dtype=dtype, device=noise_labels.device)
    freqs = torch.exp(exponent / half)
    args = noise_labels.to(dtype)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepEmbedding(nn.Module):
    """Linear → SiLU → Linear on the sinusoidal embedding."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(emb)))


def extra_time_embeddings(count: int, in_dim: int, dim: int) -> nn.ModuleList:
    """The embeddings of a network's time inputs after the first (none for one input)."""
    return nn.ModuleList(TimestepEmbedding(in_dim, dim) for _ in range(count - 1))


def per_sample_times(noise_labels: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """noise_labels as given, or one number (a Python number or a 0-d tensor, as a diffusers loop
    over `scheduler.timesteps` passes it and diffusers' UNet2DModel takes it) for every sample of x."""
    if not torch.is_tensor(noise_labels):
        noise_labels = torch.tensor(float(noise_labels), device=x.device)
    return noise_labels.expand(x.shape[0]) if noise_labels.ndim == 0 else noise_labels


def embed_times(first: TimestepEmbedding, extra: nn.ModuleList, noise_labels: torch.Tensor, in_dim: int,
                dtype: torch.dtype) -> torch.Tensor:
    """The time embedding: `TimestepEmbedding` of the sinusoidal embedding of each time input,
    summed (MeanFlow conditions its network on (t, t − r) so, Geng et al. 2025, §4.3). One input
    (noise_labels of shape (B,)) is `first` alone, as ADM; inputs after it have their own
    weights (`extra`) and come as noise_labels of shape (B, count)."""
    count = 1 + len(extra)
    if count == 1:
        return first(timestep_embedding(noise_labels, in_dim).to(dtype))
    if noise_labels.ndim != 2 or noise_labels.shape[1] != count:
        raise ValueError(f"noise_labels: this network takes {count} time inputs per sample, shape (B, {count}); "
                         f"got shape {tuple(noise_labels.shape)}")
    emb = first(timestep_embedding(noise_labels[:, 0], in_dim).to(dtype))
    for i, embedding in enumerate(extra, start=1):
        emb = emb + embedding(timestep_embedding(noise_labels[:, i], in_dim).to(dtype))
    return emb


NULL_CLASS = -1   # the class label of "no class": classifier-free guidance's null condition


def embed_classes(embedding: nn.Embedding, class_labels: torch.Tensor) -> torch.Tensor:
    """The class embedding of each label; `NULL_CLASS` embeds as zero, the null condition a model
    trained with dropped labels learns its unconditional output for (MeanFlow's guidance,
    Geng et al. 2025, §4.2). Branch-free, so a compiled graph stays one graph."""
    kept = (class_labels >= 0).unsqueeze(-1)
    return embedding(class_labels.clamp(min=0)) * kept.to(embedding.weight.dtype)


class ResBlock(nn.Module):
    """ADM residual block with optional 2× resampling and scale-shift or additive conditioning."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        cfg: UNetConfig,
        resample: str | None = None,          # None, "down" (2×2 average pool) or "up" (nearest 2×)
    ) -> None:
        super().__init__()
        self.resample = resample
        self.scale_shift = cfg.use_scale_shift_norm
        self.norm1 = nn.GroupNorm(cfg.norm_num_groups, in_channels, eps=cfg.norm_eps)
        self.conv1 = Conv3x3(in_channels, out_channels)
        self.time_emb_proj = nn.Linear(emb_channels, out_channels * (2 if self.scale_shift else 1))
        self.norm2 = nn.GroupNorm(cfg.norm_num_groups, out_channels, eps=cfg.norm_eps)
        self.dropout = Dropout(cfg.dropout)
        self.conv2 = Conv3x3(out_channels, out_channels)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "down":
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        if self.resample == "up":
            return upsample_nearest_2x(x)
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = F.silu(group_norm_fp32(self.norm1, x))
        h = self._resample(h)
        x = self._resample(x)
        h = self.conv1(h)
        emb_out = self.time_emb_proj(F.silu(emb))[:, :, None, None].to(h.dtype)
        if self.scale_shift:
            scale, shift = emb_out.chunk(2, dim=1)
            h = torch.addcmul(shift, group_norm_fp32(self.norm2, h), scale + 1)
        else:
            h = group_norm_fp32(self.norm2, h + emb_out)
        h = self.conv2(self.dropout(F.silu(h)))
        skip = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        return skip + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all pixels with a fixed head width, residual."""

    def __init__(self, channels: int, cfg: UNetConfig) -> None:
        super().__init__()
        self.heads = channels // cfg.num_head_channels
        self.group_norm = nn.GroupNorm(cfg.norm_num_groups, channels, eps=cfg.norm_eps)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        # (B, H·W, C) through a (B, H, W, C) view: free for a channels_last x, one copy otherwise.
        h = group_norm_fp32(self.group_norm, x).permute(0, 2, 3, 1).reshape(b, height * width, c)
        q, k, v = (proj(h).unflatten(-1, (self.heads, -1)).transpose(1, 2)
                   for proj in (self.to_q, self.to_k, self.to_v))
        h = dot_product_attention(q, k, v).transpose(1, 2).reshape(b, height * width, c)
        return x + self.to_out[0](h).reshape(b, height, width, c).permute(0, 3, 1, 2)


class DownBlock(nn.Module):
    """One level of the encoder: residual blocks (+ attention), then an optional down-sampling block."""

    def __init__(self, in_ch: int, out_ch: int, emb_ch: int, cfg: UNetConfig, attention: bool, downsample: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            ResBlock(in_ch if i == 0 else out_ch, out_ch, emb_ch, cfg) for i in range(cfg.num_res_blocks)
        )
        self.attentions = (
            nn.ModuleList(AttentionBlock(out_ch, cfg) for _ in range(cfg.num_res_blocks)) if attention else None
        )
        self.downsamplers = nn.ModuleList([ResBlock(out_ch, out_ch, emb_ch, cfg, "down")]) if downsample else None

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for i, resnet in enumerate(self.resnets):
            h = resnet(h, emb)
            if self.attentions is not None:
                h = self.attentions[i](h)
            skips.append(h)
        if self.downsamplers is not None:
            h = self.downsamplers[0](h, emb)
            skips.append(h)
        return h, skips


class MidBlock(nn.Module):
    """ResBlock → attention → ResBlock at the lowest resolution."""

    def __init__(self, ch: int, emb_ch: int, cfg: UNetConfig) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResBlock(ch, ch, emb_ch, cfg), ResBlock(ch, ch, emb_ch, cfg)])
        self.attentions = nn.ModuleList([AttentionBlock(ch, cfg)])

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.resnets[0](h, emb)
        h = self.attentions[0](h)
        return self.resnets[1](h, emb)


class UpBlock(nn.Module):
    """One level of the decoder: residual blocks on [h, skip] (+ attention), then optional up-sampling."""

    def __init__(
        self, in_ch: int, skip_chs: list[int], out_ch: int, emb_ch: int, cfg: UNetConfig, attention: bool, upsample: bool
    ) -> None:
        super().__init__()
        resnets = []
        for skip_ch in skip_chs:
            resnets.append(ResBlock(in_ch + skip_ch, out_ch, emb_ch, cfg))
            in_ch = out_ch
        self.resnets = nn.ModuleList(resnets)
        self.attentions = nn.ModuleList(AttentionBlock(out_ch, cfg) for _ in skip_chs) if attention else None
        self.upsamplers = nn.ModuleList([ResBlock(out_ch, out_ch, emb_ch, cfg, "up")]) if upsample else None

    def forward(self, h: torch.Tensor, skips: list[torch.Tensor], emb: torch.Tensor) -> torch.Tensor:
        for i, resnet in enumerate(self.resnets):
            h = resnet(torch.cat([h, skips.pop()], dim=1), emb)
            if self.attentions is not None:
                h = self.attentions[i](h)
        if self.upsamplers is not None:
            h = self.upsamplers[0](h, emb)
        return h


class UNetModel(nn.Module):
    """The ADM UNet: F(c_in·x, c_noise, class_labels) → output with the input's shape."""

    def __init__(self, config: UNetConfig | None = None, **kwargs) -> None:
        super().__init__()
        if config is None:
            config = UNetConfig(**kwargs)
        elif kwargs:
            raise TypeError("pass either a UNetConfig or keyword arguments, not both")
        self.config = config
        cfg = config
        ch0 = cfg.model_channels
        emb_ch = 4 * ch0
        widths = [ch0 * m for m in cfg.channel_mult]
        levels = len(widths)

        self.time_embedding = TimestepEmbedding(ch0, emb_ch)
        self.extra_time_embeddings = extra_time_embeddings(cfg.time_inputs, ch0, emb_ch)
        self.class_embedding = nn.Embedding(cfg.num_classes, emb_ch) if cfg.num_classes else None
        self.conv_in = Conv3x3(cfg.in_channels, ch0)

        skip_chs = [ch0]
        down = []
        in_ch = ch0
        for level, width in enumerate(widths):
            last = level == levels - 1
            down.append(DownBlock(in_ch, width, emb_ch, cfg, cfg.level_has_attention(level), not last))
            skip_chs += [width] * (cfg.num_res_blocks + (0 if last else 1))
            in_ch = width
        self.down_blocks = nn.ModuleList(down)
        self.mid_block = MidBlock(in_ch, emb_ch, cfg)

        up = []
        for level in reversed(range(levels)):
            level_skips = [skip_chs.pop() for _ in range(cfg.num_res_blocks + 1)]
            up.append(UpBlock(in_ch, level_skips, widths[level], emb_ch, cfg, cfg.level_has_attention(level), level > 0))
            in_ch = widths[level]
        self.up_blocks = nn.ModuleList(up)

        self.conv_norm_out = nn.GroupNorm(cfg.norm_num_groups, in_ch, eps=cfg.norm_eps)
        self.conv_out = Conv3x3(in_ch, cfg.out_channels)
        self._zero_init_residual_outputs()
        self.channels_last = False  # set by use_fast_kernels: inputs should be channels_last too
        self.float32_matmuls = False  # set by use_fast_kernels: half weights on a CPU without half arithmetic

    def _zero_init_residual_outputs(self) -> None:
        """ADM's zero_module: each residual branch and the output start at zero."""
        for module in self.modules():
            last = {ResBlock: "conv2", AttentionBlock: "to_out"}.get(type(module))
            if last is not None:
                layer = getattr(module, last)
                layer = layer[0] if isinstance(layer, nn.ModuleList) else layer
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        """Where the weights are (diffusers' `ModelMixin.device`)."""
        return self.conv_in.weight.device

    def use_fast_kernels(self, enabled: bool = True) -> UNetModel:
        """Inference speed-ups that keep the numbers (to ~1e-5 in float32), for where the weights
        are now (call again after moving them): on CPU, the wide 3×3 convolutions as Winograd
        F(2×2, 3×3) when running without autograd (`networks/winograd.py`), and channels_last
        weights when every level is at least `CHANNELS_LAST_MIN_WIDTH` channels wide (narrower
        networks run GroupNorm and the convolutions faster as NCHW). Nothing on CUDA, where
        PyTorch's GroupNorm copies channels_last input to NCHW (measured 13 % slower on an
        H100). Half-precision weights on a CPU without half arithmetic (AVX2, for one) compute
        their matrix work in float32 (`networks/half_compute.py`; there the half kernels take
        4–280× the float32 time). Training is unaffected (neither Winograd nor that runs under
        autograd; the training layout follows `channels_last_pays_off`)."""
        for module in self.modules():
            if isinstance(module, Conv3x3):
                module.winograd = enabled
        self.float32_matmuls = enabled
        self.channels_last = enabled and self.channels_last_pays_off()
        self.to(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        return self

    def channels_last_pays_off(self) -> bool:
        """Whether channels_last is the faster layout where the weights are now: on CPU for networks
        at least `CHANNELS_LAST_MIN_WIDTH` channels wide at every level (oneDNN's convolutions,
        forward and backward, run best on it: per layer up to 1.6× forward and 1.4× backward in
        bfloat16 with AMX, the imagenet64 CT step 1.15×); never on CUDA."""
        narrowest = self.config.model_channels * min(self.config.channel_mult)
        return self.conv_in.weight.device.type == "cpu" and narrowest >= CHANNELS_LAST_MIN_WIDTH

    def forward(
        self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: (B, C, H, W) scaled input; noise_labels: (B,) c_noise values ((B, k) for k time inputs;
        one number for the batch); class_labels: (B,) ints."""
        if (self.float32_matmuls and not torch.compiler.is_compiling() and not torch.is_grad_enabled()
                and needs_float32_matmuls(self.conv_in.weight)):  # the CPU probe is not traceable: after is_compiling
            with Float32Matmuls():
                return self._forward(x, noise_labels, class_labels)
        return self._forward(x, noise_labels, class_labels)

    def _forward(
        self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None
    ) -> torch.Tensor:
        emb = embed_times(self.time_embedding, self.extra_time_embeddings, per_sample_times(noise_labels, x),
                          self.config.model_channels, x.dtype)
        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError("class_labels: this model is class-conditional and needs one label per sample")
            emb = emb + embed_classes(self.class_embedding, class_labels)
        elif class_labels is not None:
            raise ValueError("class_labels: this model is unconditional and takes no class labels")

        h = self.conv_in(x)
        skips = [h]
        for block in self.down_blocks:
            h, block_skips = block(h, emb)
            skips += block_skips
        h = self.mid_block(h, emb)
        for block in self.up_blocks:
            h = block(h, skips, emb)
        h = F.silu(group_norm_fp32(self.conv_norm_out, h))
        return self.conv_out(h)
