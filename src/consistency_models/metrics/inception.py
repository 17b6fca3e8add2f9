"""The FID Inception-v3: TensorFlow's 2015-12-05 ImageNet graph, in plain PyTorch.

FID (Heusel et al. 2017), the Inception Score (Salimans et al. 2016), KID and precision/recall
are defined on this one network: the `classify_image_graph_def.pb` of
`inception-2015-12-05.tgz`, not torchvision's Inception-v3 (other weights, other pooling). Its
PyTorch port by pytorch-fid, `pt_inception-2015-12-05-6726825d.pth`, loads here with strict
key and shape checking. The graph differs from the Inception-v3 paper in three ways, kept here:

- the average-pool branch of the A, C and first E blocks averages over the valid pixels only
  (TensorFlow's SAME padding; `count_include_pad=False`);
- the pool branch of the last block (Mixed_7c) is a 3×3 max pool, not an average pool;
- the classifier has 1008 outputs (1000 ImageNet classes and 8 unused ones).

Inputs are uint8 images, as TensorFlow's graph took them: resized to 299×299 with TF1's
bilinear resize (`resize_bilinear_tf1`, align_corners=False, no half-pixel centres), then mapped
to [−1, 1) by (x − 128)/128 (the graph's `Sub`/`Mul` by 1/128).
"""

from __future__ import annotations

import http.client
import os
import urllib.request
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInputError, first_line
from ..io.atomic import atomic_path
from ..io.checksum import file_sha256
from ..io.diffusers_format import load_state_into, load_weights

INCEPTION_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
)
INCEPTION_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
# SHA-256 of the published file (95,628,359 bytes); its first 8 hex digits name the file.
INCEPTION_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
WEIGHTS_ENV = "CM_INCEPTION_WEIGHTS"
IMAGE_SIZE = 299
FEATURE_DIM = 2048
NUM_LOGITS = 1008


# -- resize ------------------------------------------------------------------------------------
def _tf1_taps(size_in: int, size_out: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices (lo, hi) and weight of hi for each output pixel, as TF1 computes them in float32."""
    scale = torch.tensor(size_in, dtype=torch.float32) / torch.tensor(size_out, dtype=torch.float32)
    source = torch.arange(size_out, dtype=torch.float32) * scale
    lo = source.floor()
    weight = source - lo
    lo = lo.long().clamp(max=size_in - 1)
    hi = (lo + 1).clamp(max=size_in - 1)
    return lo.to(device), hi.to(device), weight.to(device)


def resize_bilinear_tf1(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """TensorFlow 1.x `resize_bilinear` (align_corners=False, half_pixel_centers=False) of a float NCHW batch.

    Output pixel i reads the input at s = i·in/out (float32), interpolating between ⌊s⌋ and
    min(⌊s⌋ + 1, in − 1); unlike `F.interpolate`, pixel centres are not shifted by ½.
    """
    if x.ndim != 4 or not x.is_floating_point():
        raise InvalidInputError(f"x: {x.dtype} tensor of shape {tuple(x.shape)}; need a float (N, C, H, W) batch")
    (y_lo, y_hi, wy), (x_lo, x_hi, wx) = (_tf1_taps(n, m, x.device) for n, m in zip(x.shape[2:], size))
    wy, wx = wy.to(x.dtype).view(-1, 1), wx.to(x.dtype)
    top, bottom = x.index_select(2, y_lo), x.index_select(2, y_hi)
    top = top.index_select(3, x_lo) + (top.index_select(3, x_hi) - top.index_select(3, x_lo)) * wx
    bottom = bottom.index_select(3, x_lo) + (bottom.index_select(3, x_hi) - bottom.index_select(3, x_lo)) * wx
    return top + (bottom - top) * wy


def as_uint8_images(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """`images` as a uint8 (N, C, H, W) tensor, C = 1 or 3 (numpy arrays are wrapped, not copied)."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4 \
            or images.shape[1] not in (1, 3):
        described = f"{images.dtype} array of shape {tuple(images.shape)}" if isinstance(images, torch.Tensor) \
            else type(images).__name__
        raise InvalidInputError(f"images: {described}; need uint8 (N, C, H, W) with C = 1 or 3")
    return images


# -- network -----------------------------------------------------------------------------------
class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics: (x − running_mean)/√(running_var + ε)·weight + bias.

    The keys of `nn.BatchNorm2d` without its `num_batches_tracked` counter, which the published
    file does not hold (TensorFlow graphs have none); this network is never trained.
    """

    def __init__(self, channels: int, eps: float = 0.001) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, training=False,
                            eps=self.eps)


class BasicConv2d(nn.Module):
    """Convolution without bias → batch norm (ε = 0.001, TensorFlow's) → ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = FrozenBatchNorm2d(c_out, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_valid(x: torch.Tensor) -> torch.Tensor:
    """3×3 stride-1 average over the pixels inside the image (TensorFlow SAME padding)."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35×35 block (Mixed_5b–5d): 1×1 | 1×1→5×5 | 1×1→3×3→3×3 | avg pool→1×1."""

    def __init__(self, c_in: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 64, 1)
        self.branch5x5_1 = BasicConv2d(c_in, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(c_in, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg_pool_valid(x)),
        ], dim=1)


class InceptionB(nn.Module):
    """35 → 17 reduction (Mixed_6a): 3×3/2 | 1×1→3×3→3×3/2 | max pool/2."""

    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(c_in, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, kernel_size=3, stride=2),
        ], dim=1)


class InceptionC(nn.Module):
    """17×17 block (Mixed_6b–6e) with factorized 7×7 convolutions (1×7 and 7×1)."""

    def __init__(self, c_in: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        row = {"kernel_size": (1, 7), "padding": (0, 3)}
        col = {"kernel_size": (7, 1), "padding": (3, 0)}
        self.branch1x1 = BasicConv2d(c_in, 192, 1)
        self.branch7x7_1 = BasicConv2d(c_in, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, **row)
        self.branch7x7_3 = BasicConv2d(c7, 192, **col)
        self.branch7x7dbl_1 = BasicConv2d(c_in, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, **col)
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, **row)
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, **col)
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, **row)
        self.branch_pool = BasicConv2d(c_in, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d7 = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            d7 = layer(d7)
        return torch.cat([self.branch1x1(x), b7, d7, self.branch_pool(_avg_pool_valid(x))], dim=1)


class InceptionD(nn.Module):
    """17 → 8 reduction (Mixed_7a): 1×1→3×3/2 | 1×1→1×7→7×1→3×3/2 | max pool/2."""

    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(c_in, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(c_in, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = layer(b7)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, kernel_size=3, stride=2)], dim=1)


class InceptionE(nn.Module):
    """8×8 block (Mixed_7b, 7c) with split 1×3 / 3×1 outputs; `max_pool` for the graph's last block."""

    def __init__(self, c_in: int, max_pool: bool = False) -> None:
        super().__init__()
        row = {"kernel_size": (1, 3), "padding": (0, 1)}
        col = {"kernel_size": (3, 1), "padding": (1, 0)}
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(c_in, 320, 1)
        self.branch3x3_1 = BasicConv2d(c_in, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, **row)
        self.branch3x3_2b = BasicConv2d(384, 384, **col)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, **row)
        self.branch3x3dbl_3b = BasicConv2d(384, 384, **col)
        self.branch_pool = BasicConv2d(c_in, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        d3 = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _avg_pool_valid(x)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(b3), self.branch3x3_2b(b3),
            self.branch3x3dbl_3a(d3), self.branch3x3dbl_3b(d3),
            self.branch_pool(pooled),
        ], dim=1)


class InceptionV3FID(nn.Module):
    """The FID Inception-v3 (pytorch-fid's module names): uint8 images → (pool3 features, logits).

    `forward` returns the 2048-d pool3 features (the input of FID and KID) and the 1008 logits
    pool3·Wᵀ *without* the classifier bias: the Inception Score of Salimans et al. (2016), the
    OpenAI evaluator (`softmax/logits/MatMul`) and torch-fidelity (`logits_unbiased`) all take
    the softmax of these, over all 1008 outputs.
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(FEATURE_DIM, NUM_LOGITS)

    @staticmethod
    def preprocess(images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """uint8 (N, 1 or 3, H, W) → float32 (N, 3, 299, 299) in [−1, 1): TF1 bilinear resize, (x − 128)/128."""
        x = as_uint8_images(images).float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if tuple(x.shape[2:]) != (IMAGE_SIZE, IMAGE_SIZE):
            x = resize_bilinear_tf1(x, (IMAGE_SIZE, IMAGE_SIZE))
        return (x - 128) / 128

    def pool3(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed (N, 3, 299, 299) → (N, 2048) pool3 features."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)                        # 147 → 73
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)                        # 71 → 35
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return x.mean(dim=(2, 3))                                           # 8×8 → 1

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(N, 2048) pool3 features → (N, 1008) logits without the bias (see the class docstring)."""
        return features @ self.fc.weight.T

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (N, C, H, W) → ((N, 2048) pool3 features, (N, 1008) logits), float32."""
        features = self.pool3(self.preprocess(images).to(self.fc.weight.device, self.fc.weight.dtype))
        return features, self.logits(features)


# -- weights -----------------------------------------------------------------------------------
def default_cache_path() -> Path:
    """`~/.cache/consistency_models/pt_inception-2015-12-05-6726825d.pth`."""
    return Path.home() / ".cache" / "consistency_models" / INCEPTION_FILENAME


def _check_sha256(path: Path, expected: str | None, name: Path | None = None) -> None:
    """`name`: the path to show (the download's target while `path` is its temp file)."""
    if expected is None:
        return
    actual = file_sha256(path)
    if actual != expected.lower():
        raise InvalidInputError(
            f"inception weights: {name or path} has SHA-256 {actual}, expected {expected}; the file is damaged, "
            f"truncated or not {INCEPTION_FILENAME} (download it again from {INCEPTION_URL})"
        )


def _download(target: Path, sha256: str | None) -> None:
    """Fetch `INCEPTION_URL` into `target` (temp file, hash check, rename); OSError if offline."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        with urllib.request.urlopen(INCEPTION_URL, timeout=60) as response, open(tmp, "wb") as f:
            f.writelines(iter(lambda: response.read(1 << 20), b""))
        _check_sha256(tmp, sha256, name=target)


def resolve_inception_weights(
    path: str | os.PathLike | None = None,
    sha256: str | None = INCEPTION_SHA256,
    download: bool = True,
) -> Path:
    """The weights file: `path`, else $CM_INCEPTION_WEIGHTS, else the cache (downloaded there if allowed)."""
    if path is None and os.environ.get(WEIGHTS_ENV):
        path, source = os.environ[WEIGHTS_ENV], f"${WEIGHTS_ENV}"
    else:
        source = "path"
    if path is not None:
        if not Path(path).is_file():
            raise InvalidInputError(f"{source}: no file at {path}; give the path of {INCEPTION_FILENAME}")
        return Path(path)
    cached = default_cache_path()
    if not cached.is_file():
        reason = "downloads are off"
        if download:
            try:
                _download(cached, sha256)
                return cached
            except (OSError, http.client.HTTPException) as exc:  # offline, refused, cut off
                reason = f"download failed: {first_line(exc, 120) or type(exc).__name__}"
        raise InvalidInputError(
            f"inception weights: {INCEPTION_FILENAME} not found ({reason}); download {INCEPTION_URL} "
            f"and put it at {cached}, or set ${WEIGHTS_ENV} to its path, "
            "or give its path (--inception-weights, or path= in Python)"
        )
    return cached


def load_inception(
    path: str | os.PathLike | None = None,     # the .pth file; default: $CM_INCEPTION_WEIGHTS, then the cache
    sha256: str | None = INCEPTION_SHA256,      # expected SHA-256 of the file; None skips the check
    download: bool = True,                      # fetch the published file into the cache when missing
    device: str | torch.device | None = None,
) -> InceptionV3FID:
    """The FID Inception-v3 with pytorch-fid's weights, in eval mode, frozen.

    The file's SHA-256 is checked before loading; it is read with `torch.load(weights_only=True)`
    (no pickle code) and loaded with `strict=True`.
    """
    file = resolve_inception_weights(path, sha256, download)
    _check_sha256(file, sha256)
    model = InceptionV3FID()
    # A copy re-saved from an `nn.BatchNorm2d` model carries counters that mean nothing here.
    state = {k: v for k, v in load_weights(file).items() if not k.endswith(".num_batches_tracked")}
    load_state_into(model, state, f"{file} (FID Inception-v3 weights)")
    return model.to(device).eval().requires_grad_(False)
