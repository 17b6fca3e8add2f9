"""Zero-shot editing (Algorithm 4): the transforms, exact preservation of the known part, the loop
against a hand-written one, reproducibility, errors, and quality on the embedded digits model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import build_unet

import consistency_models as cm
from consistency_models import editing
from consistency_models.data import load_dataset

LUMA = torch.tensor([0.2989, 0.5870, 0.1140], dtype=torch.float64)


@pytest.fixture(scope="module")
def rgb_pipe():
    """A random-weight 16-px RGB model (unconditional), 10-point grid."""
    cfg = cm.preset("tiny16", in_channels=3, out_channels=3, num_classes=None)
    return cm.ConsistencyModelPipeline(build_unet(cfg, seed=3), cm.CMStochasticIterativeScheduler(num_train_timesteps=10))


@pytest.fixture(scope="module")
def gray_pipe():
    """A random-weight 16-px grayscale model with 10 classes."""
    return cm.ConsistencyModelPipeline(build_unet(cm.preset("tiny16"), seed=4))


def rand_images(shape, seed):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# -- the transforms --------------------------------------------------------------------------
@pytest.mark.parametrize("first", [LUMA.tolist(), [1.0] * 4, [1.0] * 16])
def test_orthonormal_basis(first):
    q = editing.orthonormal_basis(first)
    v = torch.tensor(first, dtype=torch.float64)
    torch.testing.assert_close(q.T @ q, torch.eye(len(first), dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(q[:, 0], v / v.norm(), atol=1e-12, rtol=0)


def test_colorization_transform_keeps_luminance_coordinate():
    """The first coordinate of A x is the luminance w·x / ‖w‖; A⁻¹ A = I."""
    t = editing.colorization_transform()
    x = torch.randn(2, 3, 5, 4, generator=gen(), dtype=torch.float64)
    a = t.forward(x)
    expected = (x * LUMA.reshape(1, 3, 1, 1)).sum(1) / LUMA.norm()
    torch.testing.assert_close(a[:, 0], expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(t.inverse(a), x, atol=1e-12, rtol=0)


@pytest.mark.parametrize("factor", [2, 4])
def test_super_resolution_transform_keeps_patch_means(factor):
    """The first coordinate of each patch's A x is the patch sum / factor = mean · factor."""
    t = editing.super_resolution_transform(factor)
    x = torch.randn(2, 3, 8, 8, generator=gen(1), dtype=torch.float64)
    a = t.forward(x)
    assert a.shape == (2, 3, 8 // factor, 8 // factor, factor * factor)
    torch.testing.assert_close(a[..., 0], F.avg_pool2d(x, factor) * factor, atol=1e-12, rtol=0)
    torch.testing.assert_close(t.inverse(a), x, atol=1e-12, rtol=0)
    # the kept part of x is its nearest-upsampled patch means
    means = F.avg_pool2d(x, factor).repeat_interleave(factor, 2).repeat_interleave(factor, 3)
    torch.testing.assert_close(t.known(x), means, atol=1e-12, rtol=0)


def test_slerp_closed_form():
    """For orthogonal unit vectors a, b: slerp(α) = cos(απ/2) a + sin(απ/2) b; the ends are exact."""
    a = torch.tensor([1.0, 0.0, 0.0]).reshape(1, 3)
    b = torch.tensor([0.0, 1.0, 0.0]).reshape(1, 3)
    alpha = torch.tensor([0.0, 0.25, 0.5, 1.0])
    out = editing.slerp(a, b, alpha)
    expected = torch.stack([torch.cos(alpha * math.pi / 2), torch.sin(alpha * math.pi / 2), 0 * alpha], 1)
    torch.testing.assert_close(out.reshape(4, 3), expected, atol=1e-6, rtol=0)


# -- invariants on random-weight models ------------------------------------------------------
def test_inpaint_keeps_known_pixels_exactly(rgb_pipe):
    image = rand_images((3, 3, 16, 16), 0)
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 3:11, 5:13] = 1
    out = editing.inpaint(rgb_pipe, image, mask, num_inference_steps=3, generator=gen())
    keep = mask.expand_as(out) == 0
    assert torch.equal(out[keep], ((image * 2 - 1) / 2 + 0.5)[keep])  # bit-exact through the [−1, 1] round trip
    assert (out[~keep] - image[~keep]).abs().mean() > 0.05  # the masked part was regenerated


def test_colorize_keeps_luminance(rgb_pipe):
    gray = rand_images((2, 1, 16, 16), 1)
    y = editing._check_image(rgb_pipe, gray.expand(-1, 3, -1, -1), "gray")
    raw = editing.edit(rgb_pipe, y, editing.colorization_transform(), [80.0, 2.0, 0.002], gen())
    luminance = torch.einsum("c,bchw->bhw", LUMA.float(), raw)
    torch.testing.assert_close(luminance, LUMA.sum().float() * (gray[:, 0] * 2 - 1), atol=1e-5, rtol=0)
    assert raw.std(dim=1).mean() > 0.01  # the chroma is not just gray
    # through the public function: the same up to the final clip
    out = editing.colorize(rgb_pipe, gray, sigmas=[80.0, 2.0], generator=gen())
    torch.testing.assert_close(out, (raw / 2 + 0.5).clamp(0, 1))


@pytest.mark.parametrize("factor", [2, 4])
def test_super_resolve_keeps_patch_means(rgb_pipe, factor):
    low = rand_images((2, 3, 16 // factor, 16 // factor), 2)
    y = (low * 2 - 1).repeat_interleave(factor, 2).repeat_interleave(factor, 3)
    raw = editing.edit(rgb_pipe, y, editing.super_resolution_transform(factor), [80.0, 1.0, 0.002], gen())
    torch.testing.assert_close(F.avg_pool2d(raw, factor), low * 2 - 1, atol=1e-5, rtol=0)
    out = editing.super_resolve(rgb_pipe, low, factor, sigmas=[80.0, 1.0], generator=gen())
    torch.testing.assert_close(out, (raw / 2 + 0.5).clamp(0, 1))


def test_edit_loop_matches_algorithm_4_by_hand(gray_pipe):
    """Two steps of inpainting, written out: noise draws, clip, replacement, re-noising."""
    image = rand_images((2, 1, 16, 16), 5) * 2 - 1
    mask = (rand_images((2, 1, 16, 16), 6) > 0.5).float()
    sigmas = [40.0, 0.7, 0.002]
    labels = torch.tensor([3, 7])
    out = editing.edit(gray_pipe, image, editing.Replacement(mask), sigmas, gen(9), labels)

    g = gen(9)
    known = image * (1 - mask)
    x = known + sigmas[0] * torch.randn(image.shape, generator=g)
    with torch.no_grad():
        for i in range(2):
            x0 = gray_pipe.denoiser(x, sigmas[i], labels).clamp(-1, 1)
            x0 = image * (1 - mask) + x0 * mask
            z = torch.randn(image.shape, generator=g)
            x = x0 + z * math.sqrt(max(sigmas[i + 1], 0.002) ** 2 - 0.002**2)
    torch.testing.assert_close(out, x, atol=1e-6, rtol=0)


def test_stroke_guided_starts_at_sigma_start(gray_pipe):
    """SDEdit: the default σs are the 40-point grid at or below sigma_start; explicit σs give the same loop."""
    strokes = rand_images((2, 1, 16, 16), 7)
    grid = cm.karras_sigmas(40).tolist()
    expected_sigmas = [s for s in grid[:-1] if s <= 3.0]
    out = editing.stroke_guided(gray_pipe, strokes, sigma_start=3.0, generator=gen(), class_labels=1)
    again = editing.stroke_guided(gray_pipe, strokes, sigmas=expected_sigmas, generator=gen(), class_labels=1)
    assert torch.equal(out, again)
    raw = editing.edit(gray_pipe, strokes * 2 - 1, None, expected_sigmas + [0.002], gen(), 1)
    torch.testing.assert_close(out, (raw / 2 + 0.5).clamp(0, 1))


def test_denoise_is_one_evaluation(gray_pipe):
    noisy = rand_images((2, 1, 16, 16), 8)
    out = editing.denoise(gray_pipe, noisy, 0.5, class_labels=[2, 4])
    with torch.no_grad():
        direct = gray_pipe.denoiser(noisy * 2 - 1, 0.5, torch.tensor([2, 4]))
    torch.testing.assert_close(out, (direct / 2 + 0.5).clamp(0, 1))


def test_interpolate_ends_are_one_step_samples(gray_pipe):
    """Frame 0 and frame num−1 are the one-step samples of z0 and z1 (the pipeline, same label)."""
    z0, z1 = torch.randn(2, 1, 1, 16, 16, generator=gen(10))
    frames = editing.interpolate(gray_pipe, z0, z1, num=5, class_labels=6)
    assert frames.shape == (5, 1, 16, 16)
    ends = gray_pipe(2, class_labels=6, latents=torch.cat([z0, z1]), output_type="pt").images
    torch.testing.assert_close(frames[[0, -1]], ends, atol=1e-6, rtol=0)
    assert (frames[2] - frames[0]).abs().mean() > 1e-3


def test_edits_are_reproducible(rgb_pipe):
    image = rand_images((2, 3, 16, 16), 11)
    mask = torch.ones(1, 1, 16, 16)
    mask[..., :8, :] = 0
    a = editing.inpaint(rgb_pipe, image, mask, num_inference_steps=2, generator=gen(1))
    b = editing.inpaint(rgb_pipe, image, mask, num_inference_steps=2, generator=gen(1))
    c = editing.inpaint(rgb_pipe, image, mask, num_inference_steps=2, generator=gen(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_default_schedule_is_the_40_point_grid(gray_pipe):
    assert editing._schedule(gray_pipe, cm.NoiseLevels()) == pytest.approx(cm.karras_sigmas(40).tolist())


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda p: editing.inpaint(p, torch.rand(1, 1, 16, 16), torch.ones(1, 1, 8, 8)), "mask: shape"),
        (lambda p: editing.inpaint(p, torch.rand(1, 3, 16, 16), torch.ones(1, 1, 16, 16)), "image: 3 channels"),
        (lambda p: editing.inpaint(p, torch.rand(1, 1, 32, 32), torch.ones(1, 1, 32, 32)), "image: size 32×32"),
        (lambda p: editing.inpaint(p, torch.rand(1, 1, 16, 16) + 1, torch.ones(1, 1, 16, 16)), "in [0, 1]"),
        (lambda p: editing.colorize(p, torch.rand(1, 1, 16, 16)), "needs an RGB model"),
        (lambda p: editing.super_resolve(p, torch.rand(1, 1, 4, 4), 3), "factor: 3 must divide"),
        (lambda p: editing.super_resolve(p, torch.rand(1, 1, 8, 8), 4), "low_res: size 8×8"),
        (lambda p: editing.denoise(p, torch.rand(1, 1, 16, 16), 0.0), "sigma: 0.0 must lie in"),
        (lambda p: editing.interpolate(p, num=1), "num: 1 must be"),
        (lambda p: editing.interpolate(p, torch.randn(5)), "z0: shape"),
        (lambda p: editing.stroke_guided(p, torch.rand(1, 1, 16, 16), sigma_start=100.0), "sigma_start: 100.0"),
    ],
)
def test_bad_input_is_refused(gray_pipe, call, message):
    with pytest.raises(cm.InvalidInputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        call(gray_pipe)


# -- quality on the embedded model -----------------------------------------------------------
def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over images of 10·log10(1/MSE) for images in [0, 1]."""
    return (10 * torch.log10(1 / ((a - b) ** 2).mean(dim=(1, 2, 3)))).mean().item()


@pytest.fixture(scope="module")
def digits():
    pipe = cm.ConsistencyModelPipeline.from_pretrained("digits")
    data = load_dataset("digits:test")
    return pipe, data.x[:32] / 2 + 0.5, data.labels[:32]


def test_inpainting_digits_beats_the_masked_input(digits):
    pipe, images, labels = digits
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 4:12, 4:12] = 1  # the centre of every digit is lost
    out = editing.inpaint(pipe, images, mask, generator=gen(), class_labels=labels)
    before, after = psnr(images * (1 - mask), images), psnr(out, images)
    print(f"\ninpainting held-out digits (8×8 centre): masked input {before:.2f} dB → inpainted {after:.2f} dB")
    assert after > before + 5


def test_super_resolving_digits_beats_nearest_upsampling(digits):
    pipe, images, labels = digits
    low = F.avg_pool2d(images, 4)
    nearest = low.repeat_interleave(4, 2).repeat_interleave(4, 3)
    out = editing.super_resolve(pipe, low, 4, generator=gen(), class_labels=labels)
    before, after = psnr(nearest, images), psnr(out, images)
    print(f"\n4× super-resolution of held-out digits: nearest {before:.2f} dB → consistency model {after:.2f} dB")
    assert after > before + 2


def test_colorizing_digits_keeps_luminance_and_adds_color():
    """The embedded RGB model colors held-out digits: their luminance is kept, and the strokes get hues."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from make_color_digits import color_digits

    pipe = cm.ConsistencyModelPipeline.from_pretrained("digits-color")
    truth, labels = color_digits("test", seed=1)
    truth = torch.from_numpy(truth[:32]).permute(0, 3, 1, 2).float() / 255
    gray = editing._luminance(truth)
    out = editing.colorize(pipe, gray, generator=gen(), class_labels=torch.from_numpy(labels[:32]))
    luminance_error = (editing._luminance(out) - LUMA.sum().float() * gray).abs()
    strokes = gray[:, 0] > 0.3
    chroma = (out.max(dim=1).values - out.min(dim=1).values)[strokes].mean().item()
    true_chroma = (truth.max(dim=1).values - truth.min(dim=1).values)[strokes].mean().item()
    print(f"\ncolorizing held-out digits: mean |luminance error| {luminance_error.mean():.4f} "
          f"(clip only), stroke chroma {chroma:.3f} (data: {true_chroma:.3f}, gray input: 0)")
    assert luminance_error.mean() < 0.01
    assert chroma > 0.3 * true_chroma
