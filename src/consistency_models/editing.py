"""Zero-shot image editing with a consistency model (CM paper, Algorithm 4 and Section 6.3).

Every edit keeps some linear measurements of a reference image y and lets the model generate
the rest. With an orthogonal transform A and a mask Ω in A's domain (Ω = 1: generate,
Ω = 0: keep), each step of Algorithm 4 replaces the model's estimate x by

    A⁻¹[(A y) ⊙ (1 − Ω) + (A x) ⊙ Ω]

and then adds noise for the next level, so the result carries the known part of y exactly (up
to float rounding and the final clip to the image range):

- inpainting: A = I, Ω = the mask (1 = regenerate);
- colorization: per pixel, A = Qᵀ with Q orthogonal and Q[:, 0] ∝ the luminance weights
  (0.2989, 0.5870, 0.1140); Ω keeps the first coordinate (luminance), generates the other two;
- super-resolution: per factor × factor patch of each channel, A = Qᵀ with Q[:, 0] ∝ (1, …, 1);
  Ω keeps the first coordinate (the patch mean, scaled), generates the complement.

Stroke-guided generation (SDEdit, Meng et al. 2022) starts Algorithm 1 from a noised stroke
painting at an intermediate σ, without replacement; denoising is one evaluation f(x, σ);
interpolation evaluates f once at σ_max along a spherical path between two noise draws.

Mask convention: OpenAI's code marks the *known* pixels with 1; here, as Ω in the paper, a
mask marks the pixels to *regenerate* with 1 (a mask PNG is white where to regenerate).

Images go in and come out as float tensors in [0, 1], NCHW (a CHW tensor or PIL images are
accepted too); the model sees them in [−1, 1]. Noise levels σ are in the model's units.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from .data.decode import GRAY_MODES, SIXTEEN_BIT_MODES
from .errors import InvalidInputError, is_integer
from .pipeline import ConsistencyModelPipeline
from .sampling import Generator, randn
from .schedule import NoiseLevels, SchedulerConfig

LUMA_WEIGHTS = (0.2989, 0.5870, 0.1140)  # ITU-R BT.601 luma, as OpenAI's colorization
MAX_FRAMES = 1024                         # the most frames `interpolate` makes
STROKE_SIGMA = 1.0                        # default starting σ of stroke-guided generation (digits: 0.5–2 keep the strokes)
Labels = torch.Tensor | Sequence[int] | int | None


# -- orthogonal transforms A and masks Ω ---------------------------------------------------------
def orthonormal_basis(first: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """An orthogonal matrix Q (float64) whose first column is first/‖first‖.

    Gram–Schmidt (by QR) of [first, e₂, …, eₙ]; the signs are fixed so that Q[:, 0] points
    along `first` (needs first[0] ≠ 0).
    """
    v = torch.as_tensor(first, dtype=torch.float64).reshape(-1)
    basis = torch.eye(v.numel(), dtype=torch.float64)
    basis[:, 0] = v
    q, r = torch.linalg.qr(basis)
    return q * torch.sign(torch.diagonal(r))


class Replacement:
    """x ↦ A⁻¹[(A y) ⊙ (1 − Ω) + (A x) ⊙ Ω] for an orthogonal A (so A⁻¹ = Aᵀ)."""

    def __init__(self, omega: torch.Tensor) -> None:
        self.omega = omega  # in A's domain, broadcastable; 1 = generate, 0 = keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # A x
        return x

    def inverse(self, a: torch.Tensor) -> torch.Tensor:  # A⁻¹ a
        return a

    def known(self, y: torch.Tensor) -> torch.Tensor:
        """A⁻¹[(A y) ⊙ (1 − Ω)]: the kept part of y, zero elsewhere (Algorithm 4, line 2)."""
        return self.inverse(self.forward(y) * (1 - self.omega))

    def __call__(self, x: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        """Put the known part back: known + A⁻¹[(A x) ⊙ Ω] (lines 5 and 9)."""
        return known + self.inverse(self.forward(x) * self.omega)


class ChannelTransform(Replacement):
    """A = Qᵀ acting on the channel vector of every pixel (colorization)."""

    def __init__(self, q: torch.Tensor, omega: torch.Tensor) -> None:
        super().__init__(omega.reshape(1, -1, 1, 1))
        self.q = q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("ji,bjhw->bihw", self.q.to(x), x)

    def inverse(self, a: torch.Tensor) -> torch.Tensor:
        return torch.einsum("ij,bjhw->bihw", self.q.to(a), a)


class PatchTransform(Replacement):
    """A = Qᵀ acting on the flattened factor × factor patches of each channel (super-resolution)."""

    def __init__(self, q: torch.Tensor, omega: torch.Tensor, factor: int) -> None:
        super().__init__(omega)
        self.q = q
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) → (B, C, H/f, W/f, f²)
        b, c, h, w = x.shape
        f = self.factor
        patches = x.reshape(b, c, h // f, f, w // f, f).permute(0, 1, 2, 4, 3, 5).reshape(b, c, h // f, w // f, f * f)
        return patches @ self.q.to(x)

    def inverse(self, a: torch.Tensor) -> torch.Tensor:
        b, c, hf, wf, _ = a.shape
        f = self.factor
        patches = a @ self.q.to(a).T
        return patches.reshape(b, c, hf, wf, f, f).permute(0, 1, 2, 4, 3, 5).reshape(b, c, hf * f, wf * f)


def colorization_transform() -> ChannelTransform:
    """Keep the luminance coordinate, generate the two chroma coordinates."""
    return ChannelTransform(orthonormal_basis(LUMA_WEIGHTS), torch.tensor([0.0, 1.0, 1.0]))


def super_resolution_transform(factor: int) -> PatchTransform:
    """Keep each patch's mean (first coordinate), generate the other factor² − 1."""
    omega = torch.ones(factor * factor)
    omega[0] = 0
    return PatchTransform(orthonormal_basis(torch.ones(factor * factor)), omega, factor)


# -- inputs --------------------------------------------------------------------------------------
def _as_batch(image: torch.Tensor | np.ndarray | object | Sequence[object], argument: str) -> torch.Tensor:
    """A tensor/array (CHW or NCHW) in [0, 1] or PIL image(s) → float32 NCHW in [0, 1]."""
    if isinstance(image, (list, tuple)) and image and not isinstance(image[0], (int, float)):
        batches = [_as_batch(im, argument) for im in image]
        for i, batch in enumerate(batches[1:], 1):
            if batch.shape[1:] != batches[0].shape[1:]:
                c, h, w = batch.shape[1:]
                c0, h0, w0 = batches[0].shape[1:]
                raise InvalidInputError(f"{argument}: image {i} is {w}×{h} with {c} channel(s), image 0 {w0}×{h0} "
                                        f"with {c0}; the images of one call must have one size and channel count")
        return torch.cat(batches)
    if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
        return _pil_batch(image, argument)
    try:
        t = torch.as_tensor(image)
    except (TypeError, ValueError, RuntimeError):
        raise InvalidInputError(f"{argument}: {type(image).__name__} is not an image tensor or a PIL image") from None
    if t.ndim == 3:
        t = t[None]
    if t.ndim != 4:
        raise InvalidInputError(f"{argument}: shape {tuple(t.shape)} is not (C, H, W) or (N, C, H, W)")
    if t.dtype == torch.uint8:
        return t.float() / 255.0
    t = t.float()
    if t.numel() and (t.min() < 0 or t.max() > 1 or not torch.isfinite(t).all()):
        raise InvalidInputError(
            f"{argument}: values span [{t.min().item():.3g}, {t.max().item():.3g}]; images must be in [0, 1]"
        )
    return t


def _pil_batch(image: object, argument: str) -> torch.Tensor:
    """A PIL image → (1, C, H, W) float32 in [0, 1], its modes read as `cm edit` reads a file's
    (`data/decode.py`): gray modes (bilevel, gray + alpha) as L, the others as RGB (alpha dropped),
    a palette of grays as L; 16-bit grayscale (and "I") scaled by 65,535; float ("F") checked
    like a tensor."""
    mode = image.mode
    if mode in SIXTEEN_BIT_MODES or mode == "I":
        array = np.asarray(image, dtype=np.float64) / 65535.0
    elif mode == "F":
        array = np.asarray(image, dtype=np.float64)
    else:
        image = image.convert("L" if mode in GRAY_MODES else "RGB")
        if mode in ("P", "PA") and (np.asarray(image) == np.asarray(image)[..., :1]).all():
            image = image.convert("L")  # a gray palette: one channel, as a gray PNG reads
        array = np.asarray(image, dtype=np.float64) / 255.0
    if array.size and (array.min() < 0 or array.max() > 1 or not np.isfinite(array).all()):
        raise InvalidInputError(f"{argument}: a PIL image of mode {mode!r} whose values span "
                                f"[{array.min():.3g}, {array.max():.3g}]; images must be in [0, 1]")
    array = array[..., None] if array.ndim == 2 else array
    return torch.from_numpy(array.astype(np.float32)).permute(2, 0, 1)[None].contiguous()


def _check_image(pipe: ConsistencyModelPipeline, t: torch.Tensor, argument: str, channels: int | None = None,
                 size: int | None = None) -> torch.Tensor:
    """Check channels and size against the model (or the given ones); return it in [−1, 1] on the device."""
    if not pipe.is_image_model:
        raise InvalidInputError("model: editing needs an image model; this one makes points")
    if pipe.kind.editing is not None:
        raise InvalidInputError(f"model: zero-shot editing needs a model of σ; this is {pipe.kind.editing}")
    c, s, _ = pipe.sample_shape
    channels = c if channels is None else channels
    size = s if size is None else size
    if t.shape[1] != channels:
        layout = "; channels come first, (C, H, W): for an (H, W, C) array give array.transpose(2, 0, 1)" \
            if t.shape[-1] == channels else ""
        raise InvalidInputError(f"{argument}: {t.shape[1]} channels, but {channels} are needed here{layout}")
    if tuple(t.shape[2:]) != (size, size):
        raise InvalidInputError(
            f"{argument}: size {t.shape[3]}×{t.shape[2]} does not match the {size}×{size} needed here"
        )
    return (t * 2 - 1).to(pipe.device)


def _schedule(pipe: ConsistencyModelPipeline, levels: NoiseLevels) -> list[float]:
    """Evaluation σs and the model's last level (σ_min, or 0 for sCM and EDM models); by default
    every point of the 40-point Karras grid (39 evaluations of a consistency model). Step counts,
    grid indices and times mean what they mean in the model's sampling (`Sampler.edit_schedule`)."""
    return pipe.sampler.edit_schedule(levels, pipe.sampling_config)


def _to_image(x: torch.Tensor) -> torch.Tensor:
    """[−1, 1] → [0, 1], with the final clip."""
    return (x.float() / 2 + 0.5).clamp(0, 1)


# -- the shared loop -----------------------------------------------------------------------------
@torch.no_grad()
def edit(
    pipe: ConsistencyModelPipeline,
    y: torch.Tensor,                              # reference images in [−1, 1], (B, C, H, W)
    replacement: Replacement | None,              # A and Ω; None = no replacement (SDEdit)
    sigmas: Sequence[float],                      # evaluation σs followed by σ_min
    generator: Generator = None,
    class_labels: Labels = None,
) -> torch.Tensor:
    """Algorithm 4 on images in [−1, 1]; returns the edited images in [−1, 1] (before the final clip).

    x ~ N(A⁻¹[(A y)(1 − Ω)], σ₁²I); then the model's own sampler (`pipe.sampler`) runs with the
    model's estimate replaced: x₀ = clip(f(x, σ)) with the known part put back, re-noised to the
    next σ as the model's kind re-noises (Algorithm 1's for consistency models, x₀ + σ·z for sCM;
    an EDM model's Heun steps see the replaced D, the probability-flow ODE with the known
    part held). No clip after the replacement, which would move the known part.
    """
    y = y.float()
    known = y if replacement is None else replacement.known(y)
    noise = randn(y.shape, generator, device=y.device)
    labels = pipe.prepare_class_labels(y.shape[0], class_labels, generator)
    config = SchedulerConfig(**{**pipe.sampling_config, "clip_denoised": False})

    def projected(x: torch.Tensor, sigma: float, labels: torch.Tensor | None) -> torch.Tensor:
        x0 = pipe.denoiser(x, sigma, labels).clamp(-1, 1)  # OpenAI clips before the replacement
        return x0 if replacement is None else replacement(x0, known)

    with pipe.progress_bar(total=len(sigmas) - 1, desc="editing") as bar:
        return pipe.sampler.run(projected, known + sigmas[0] * noise, sigmas, config, class_labels=labels,
                                generator=generator, progress=bar.update)


# -- the edits -----------------------------------------------------------------------------------
def _mask(pipe: ConsistencyModelPipeline, mask: torch.Tensor | object, image: torch.Tensor) -> torch.Tensor:
    m = _as_batch(mask, "mask")
    if m.shape[0] not in (1, image.shape[0]):
        raise InvalidInputError(f"mask: {m.shape[0]} masks for {image.shape[0]} images; give one or one per image")
    if m.shape[1] not in (1, image.shape[1]) or tuple(m.shape[2:]) != tuple(image.shape[2:]):
        raise InvalidInputError(
            f"mask: shape {tuple(m.shape[1:])} does not fit images of shape {tuple(image.shape[1:])} "
            "(give 1 or the image's channels and the same height and width)"
        )
    omega = (m > 0.5).float()
    if not omega.any():
        raise InvalidInputError("mask: no pixel is white (above 50 %), so nothing would be regenerated; white marks "
                                "the pixels to regenerate")
    return omega.to(pipe.device)


def inpaint(
    pipe: ConsistencyModelPipeline,
    image: torch.Tensor | object,
    mask: torch.Tensor | object,
    *,
    levels: NoiseLevels | None = None,
    generator: Generator = None,
    class_labels: Labels = None,
    **schedule: Any,
) -> torch.Tensor:
    """Regenerate the pixels where `mask` is 1 (white), keep the others exactly; any channel count."""
    y = _check_image(pipe, _as_batch(image, "image"), "image")
    omega = _mask(pipe, mask, y)
    x = edit(pipe, y, Replacement(omega), _schedule(pipe, NoiseLevels.from_keywords(levels, schedule)), generator,
             class_labels)
    return _to_image(x)


def _luminance(t: torch.Tensor, argument: str = "gray") -> torch.Tensor:
    """(B, 3, H, W) → (B, 1, H, W) with the luma weights; (B, 1, H, W) unchanged."""
    if t.shape[1] == 3:
        return torch.einsum("c,bchw->bhw", torch.tensor(LUMA_WEIGHTS, dtype=t.dtype), t)[:, None]
    if t.shape[1] != 1:
        alpha = " (an alpha channel? keep the first 1 or 3 channels)" if t.shape[1] in (2, 4) else ""
        raise InvalidInputError(f"{argument}: {t.shape[1]} channels; give 1 (gray) or 3 (RGB, converted by "
                                f"luminance){alpha}")
    return t


def colorize(
    pipe: ConsistencyModelPipeline,
    gray: torch.Tensor | object,
    *,
    levels: NoiseLevels | None = None,
    generator: Generator = None,
    class_labels: Labels = None,
    **schedule: Any,
) -> torch.Tensor:
    """Color a grayscale image (1 channel, or RGB whose luminance is taken) with an RGB model.

    The result's luminance 0.2989 R + 0.5870 G + 0.1140 B equals the input's gray value (×
    the weights' sum, 0.9999) up to rounding and the final clip.
    """
    if pipe.is_image_model and pipe.sample_shape[0] != 3:
        raise InvalidInputError(f"model: colorization needs an RGB model; this one has {pipe.sample_shape[0]} channel(s)")
    g = _luminance(_as_batch(gray, "gray"))
    y = _check_image(pipe, g.expand(-1, 3, -1, -1), "gray")  # gray replicated: its luminance is Σw·g
    x = edit(pipe, y, colorization_transform(), _schedule(pipe, NoiseLevels.from_keywords(levels, schedule)), generator,
             class_labels)
    return _to_image(x)


def check_factor(factor: int, size: int) -> int:
    """A super-resolution factor must be an integer ≥ 2 that divides the image size."""
    allowed = [f for f in range(2, size + 1) if size % f == 0]
    if not is_integer(factor):
        raise InvalidInputError(f"factor: {factor!r} is not an integer; use one of {', '.join(map(str, allowed))}")
    if factor < 2:
        raise InvalidInputError(f"factor: {factor!r} does not upsample; use one of {', '.join(map(str, allowed))}")
    if factor not in allowed:
        raise InvalidInputError(
            f"factor: {factor!r} must divide the model's image size {size}; use one of {', '.join(map(str, allowed))}"
        )
    return int(factor)


def super_resolve(
    pipe: ConsistencyModelPipeline,
    low_res: torch.Tensor | object,
    factor: int,
    *,
    levels: NoiseLevels | None = None,
    generator: Generator = None,
    class_labels: Labels = None,
    **schedule: Any,
) -> torch.Tensor:
    """Upsample by `factor`: every factor × factor patch of the result has the low-res pixel as its mean."""
    if not pipe.is_image_model:
        raise InvalidInputError("model: editing needs an image model; this one makes points")
    channels, size, _ = pipe.sample_shape
    check_factor(factor, size)
    low = _check_image(pipe, _as_batch(low_res, "low_res"), "low_res", channels, size // factor)
    y = low.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)  # patch means = low-res pixels
    x = edit(pipe, y, super_resolution_transform(factor), _schedule(pipe, NoiseLevels.from_keywords(levels, schedule)),
             generator, class_labels)
    return _to_image(x)


def stroke_guided(
    pipe: ConsistencyModelPipeline,
    strokes: torch.Tensor | object,
    *,
    sigma_start: float | None = None,
    levels: NoiseLevels | None = None,
    generator: Generator = None,
    class_labels: Labels = None,
    **schedule: Any,
) -> torch.Tensor:
    """SDEdit with a consistency model: noise a coarse stroke painting to σ₁, then sample from there.

    The σs: the editing grid's points at or below `sigma_start` (default 1; a lower start keeps
    more of the strokes, a higher one gives the model more freedom), or `num_inference_steps` of
    them evenly spaced, the first at the start; explicit `timesteps` or `sigmas` instead (their
    first level is the start, so they take no `sigma_start`).
    """
    y = _check_image(pipe, _as_batch(strokes, "strokes"), "strokes")
    levels = NoiseLevels.from_keywords(levels, schedule)
    if levels.timesteps is not None or levels.sigmas is not None:
        if sigma_start is not None:
            raise InvalidInputError("sigma_start: the given timesteps/sigmas carry their own start (their first "
                                    "level); give a start level or them, not both")
    else:
        levels = NoiseLevels(sigmas=_stroke_levels(pipe, STROKE_SIGMA if sigma_start is None else sigma_start,
                                                   levels.steps))
    x = edit(pipe, y, None, _schedule(pipe, levels), generator, class_labels)
    return _to_image(x)


def _noise_level(pipe: ConsistencyModelPipeline, sigma: object, argument: str) -> float:
    """A noise level σ given as a number (or its text) within the model's (σ_min, σ_max]."""
    cfg = pipe.sampling_config
    try:
        value = float(sigma)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{argument}: {sigma!r} is not a number") from None
    if isinstance(sigma, bool) or not cfg.sigma_min < value <= cfg.sigma_max:
        raise InvalidInputError(f"{argument}: {sigma!r} must lie in ({cfg.sigma_min}, {cfg.sigma_max}]")
    return value


def _stroke_levels(pipe: ConsistencyModelPipeline, sigma_start: object, steps: int | None) -> list[float]:
    """The editing grid's σs at or below `sigma_start` (the lowest one if none is), or `steps` of
    them evenly spaced from the first (as `cm sample --steps` on a grid: the last point, the
    smallest σ, is not one of them unless every point is)."""
    sigma_start = _noise_level(pipe, sigma_start, "sigma_start")
    grid = _schedule(pipe, NoiseLevels())[:-1]
    below = [s for s in grid if s <= sigma_start] or [grid[-1]]
    if steps is None:
        return below
    if not 1 <= steps <= len(below):
        raise InvalidInputError(f"num_inference_steps: {steps} must be from 1 to {len(below)} (the editing grid's "
                                f"levels at or below the start level {sigma_start:g})")
    stride = len(below) // int(steps)   # evenly spaced from the start, as `timesteps_for_steps` on a grid
    return [below[i * stride] for i in range(int(steps))]


@torch.no_grad()
def denoise(
    pipe: ConsistencyModelPipeline,
    noisy: torch.Tensor | object,
    sigma: float,
    *,
    generator: Generator = None,
    class_labels: Labels = None,
) -> torch.Tensor:
    """One evaluation f(x, σ) of an image carrying Gaussian noise of std σ (in [−1, 1] units)."""
    sigma = _noise_level(pipe, sigma, "sigma")
    x = _check_image(pipe, _as_batch(noisy, "noisy"), "noisy")
    labels = pipe.prepare_class_labels(x.shape[0], class_labels, generator)
    return _to_image(pipe.denoiser(x, sigma, labels))


def slerp(z0: torch.Tensor, z1: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation (Shoemake 1985) between two flattened noise draws, one row per α."""
    a, b = z0.reshape(-1).double(), z1.reshape(-1).double()
    theta = torch.arccos((a @ b / (a.norm() * b.norm())).clamp(-1, 1))
    alpha = alpha.double().reshape(-1, 1)
    if theta < 1e-6:  # (near) parallel draws: a straight line is the same path
        rows = (1 - alpha) * a + alpha * b
    else:
        rows = (torch.sin((1 - alpha) * theta) * a + torch.sin(alpha * theta) * b) / torch.sin(theta)
    return rows.float().reshape(-1, *z0.shape)  # (len(alpha), *z0.shape)


@torch.no_grad()
def interpolate(
    pipe: ConsistencyModelPipeline,
    z0: torch.Tensor | None = None,
    z1: torch.Tensor | None = None,
    num: int = 8,
    *,
    generator: Generator = None,
    class_labels: Labels = None,
) -> torch.Tensor:
    """`num` samples along the spherical path from noise z0 to z1 (drawn when not given), each by the
    model's default sampling (one step for a consistency model, Heun's steps for a diffusion model).

    z0, z1 are unit-variance noise of the model's sample shape; every frame uses the same class
    label (given, or drawn once). Returns (num, C, H, W) in [0, 1].
    """
    if not is_integer(num) or not 2 <= num <= MAX_FRAMES:
        raise InvalidInputError(f"num: {num!r} must be an integer from 2 to {MAX_FRAMES} (the two ends included)")
    num = int(num)
    shape = (1, *pipe.sample_shape)
    ends = []
    for name, z in (("z0", z0), ("z1", z1)):
        if z is None:
            z = randn(shape, generator, device=pipe.device)
        z = torch.as_tensor(z, dtype=torch.float32).to(pipe.device)
        if z.numel() != math.prod(shape):
            raise InvalidInputError(f"{name}: shape {tuple(z.shape)} does not match the model's sample shape {shape}")
        ends.append(z.reshape(shape))
    given = len(class_labels) if isinstance(class_labels, (list, tuple)) else \
        int(np.prod(class_labels.shape)) if getattr(class_labels, "ndim", 0) else 1
    if given > 1:
        raise InvalidInputError(f"class_labels: the {num} frames of one interpolation share one class; give one "
                                f"label, not {given}")
    labels = pipe.prepare_class_labels(1, class_labels, generator)
    if labels is not None:
        labels = labels.expand(num)
    cfg = pipe.sampling_config
    schedule = pipe.noise_schedule(NoiseLevels())   # the model's default: one step at σ_max (EDM: its ODE grid)
    scale = pipe.sampler.initial_scale(schedule, cfg)  # σ_max; TrigFlow's x = σ_d·z at t_max: √(σ_max² + σ_d²)
    x = slerp(ends[0][0], ends[1][0], torch.linspace(0, 1, num)).to(pipe.device) * scale
    with pipe.progress_bar(total=len(schedule) - 1, desc="interpolating") as bar:
        return _to_image(pipe.sampler.run(pipe.denoiser, x, schedule, cfg, class_labels=labels, progress=bar.update))
