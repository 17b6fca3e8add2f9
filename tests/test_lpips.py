"""LPIPS from user-given weight files: loading, and the distance against a functional re-computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from consistency_models.errors import InvalidInputError
from consistency_models.training import TrainConfig
from consistency_models.training.lpips import LPIPS

CONVS = [(3, 64), (64, 64), "M", (64, 128), (128, 128), "M", (128, 256), (256, 256), (256, 256), "M",
         (256, 512), (512, 512), (512, 512), "M", (512, 512), (512, 512), (512, 512)]


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    """Random weights in torchvision's VGG-16 layout (plus a classifier key) and LPIPS's lin layout."""
    g = torch.Generator().manual_seed(0)
    folder = tmp_path_factory.mktemp("lpips")
    vgg, index = {"classifier.0.weight": torch.zeros(4, 4)}, 0
    for item in CONVS:
        if item == "M":
            index += 1
            continue
        cin, cout = item
        vgg[f"features.{index}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * (2 / (9 * cin)) ** 0.5
        vgg[f"features.{index}.bias"] = torch.randn(cout, generator=g) * 0.01
        index += 2
    lin = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for i, c in enumerate((64, 128, 256, 512, 512))}
    torch.save(vgg, folder / "vgg16.pth")
    torch.save(lin, folder / "vgg.pth")
    return folder / "vgg16.pth", folder / "vgg.pth", vgg, lin


def reference_lpips(x, y, vgg, lin):
    """LPIPS written out with functional ops from the raw state dicts (no module of ours)."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def taps(h):
        h, out, index = (h - shift) / scale, [], 0
        for block, convs in enumerate((2, 2, 3, 3, 3)):
            if block:
                h, index = F.max_pool2d(h, 2), index + 1
            for _ in range(convs):
                h = F.relu(F.conv2d(h, vgg[f"features.{index}.weight"], vgg[f"features.{index}.bias"], padding=1))
                index += 2
            out.append(h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    return sum((F.conv2d((a - b) ** 2, lin[f"lin{i}.model.1.weight"])).mean(dim=(1, 2, 3))
               for i, (a, b) in enumerate(zip(taps(x), taps(y))))


def reference_openai_lpips(x, y, vgg, lin):
    """OpenAI's CM training distance written out from its description: `consistency_losses` resizes
    images narrower than 256 px to 224 (bilinear, align_corners=False) and calls piq 0.7's
    LPIPS(replace_pooling=True) on (x + 1)/2: ImageNet mean/std, VGG-16 with 2×2 average pools,
    unit-normalised taps, per layer mean_hw(w·Δ²) per channel, concatenated and summed."""
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], dtype=x.dtype).view(1, 3, 1, 1)
    if x.shape[-1] < 256:
        x, y = (F.interpolate(t, size=224, mode="bilinear", align_corners=False) for t in (x, y))

    def taps(h):
        h, out, index = ((h + 1) / 2.0 - mean) / std, [], 0
        for block, convs in enumerate((2, 2, 3, 3, 3)):
            if block:
                h, index = F.avg_pool2d(h, kernel_size=2, stride=2, padding=0), index + 1
            for _ in range(convs):
                w, b = vgg[f"features.{index}.weight"].to(h.dtype), vgg[f"features.{index}.bias"].to(h.dtype)
                h = F.relu(F.conv2d(h, w, b, padding=1))
                index += 2
            out.append(h / (torch.sqrt(torch.sum(h**2, dim=1, keepdim=True)) + 1e-10))
        return out

    per_layer = [(lin[f"lin{i}.model.1.weight"].to(x.dtype) * (a - b) ** 2).mean(dim=[2, 3])
                 for i, (a, b) in enumerate(zip(taps(x), taps(y)))]
    return torch.cat(per_layer, dim=1).sum(dim=1)


@pytest.mark.parametrize("size", [32, 64])
def test_openai_lpips_matches_its_functional_reference(weight_files, size):
    """`--distance lpips` is OpenAI's: ≤ 1e-6 from the re-computation (float32 both; float64 reference too).
    Two pairs at 64 px (one distance per pair), one at 32 px: each is resized to 224 px for VGG."""
    vgg_path, lin_path, vgg, lin = weight_files
    model = LPIPS.from_files(vgg_path, lin_path, variant="openai")
    g = torch.Generator().manual_seed(3)
    pairs = 2 if size == 64 else 1
    x, y = (torch.rand(pairs, 3, size, size, generator=g) * 2 - 1 for _ in range(2))
    with torch.no_grad():
        ours = model(x, y)
        ref32 = reference_openai_lpips(x, y, vgg, lin)
        ref64 = reference_openai_lpips(x.double(), y.double(), vgg, lin)
    print(f"\nopenai LPIPS {ours.tolist()}: |ours − ref32| {float((ours - ref32).abs().max()):.2e}, "
          f"|ours − ref64| {float((ours - ref64).abs().max()):.2e}")
    torch.testing.assert_close(ours, ref32, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.double(), ref64, rtol=0, atol=1e-6)
    standard = LPIPS.from_files(vgg_path, lin_path)  # max pools, lpips' scaling layer
    with torch.no_grad():
        assert (standard(x, y) - ours).abs().max() > 1e-3  # the two variants are not the same distance


def test_openai_lpips_does_not_resize_from_256_px(weight_files):
    vgg_path, lin_path, vgg, lin = weight_files
    model = LPIPS.from_files(vgg_path, lin_path, variant="openai")
    g = torch.Generator().manual_seed(4)
    x, y = torch.rand(1, 3, 256, 256, generator=g) * 2 - 1, torch.rand(1, 3, 256, 256, generator=g) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(model(x, y), reference_openai_lpips(x, y, vgg, lin), rtol=0, atol=1e-6)
        resized = reference_openai_lpips(*(F.interpolate(t, size=224, mode="bilinear") for t in (x, y)), vgg, lin)
        assert (model(x, y) - resized).abs().max() > 1e-4  # a 224-px resize would have changed it


def test_piq_weight_list_loads_as_the_lpips_file(weight_files, tmp_path):
    """piq ships the linear layers as a list of five tensors; it loads to the same distance."""
    vgg_path, lin_path, _, lin = weight_files
    torch.save([lin[f"lin{i}.model.1.weight"] for i in range(5)], tmp_path / "lpips_weights.pt")
    a = LPIPS.from_files(vgg_path, lin_path, variant="openai")
    b = LPIPS.from_files(vgg_path, tmp_path / "lpips_weights.pt", variant="openai")
    x, y = torch.rand(1, 3, 16, 16) * 2 - 1, torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(a(x, y), b(x, y))


def test_lpips_matches_functional_reference(weight_files):
    vgg_path, lin_path, vgg, lin = weight_files
    model = LPIPS.from_files(vgg_path, lin_path, resize=None)
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1, torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(model(x, y), reference_lpips(x, y, vgg, lin), rtol=1e-4, atol=1e-6)
        assert torch.all(model(x, x) == 0) and torch.all(model(x, y) > 0)
        torch.testing.assert_close(model(x, y), model(y, x))


def test_grayscale_resize_and_gradient(weight_files):
    vgg_path, lin_path, _, _ = weight_files
    model = LPIPS.from_files(vgg_path, lin_path, resize=64)
    x = torch.zeros(2, 1, 16, 16, requires_grad=True)
    y = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    d = model(x, y)
    d.sum().backward()
    assert d.shape == (2,) and x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_wrong_files_and_missing_config(weight_files, tmp_path):
    vgg_path, lin_path, _, _ = weight_files
    with pytest.raises(InvalidInputError, match=r"^lpips: .*vgg16\.pth does not hold"):
        LPIPS.from_files(vgg_path, vgg_path)  # the backbone file given as the linear layers
    for name in ("lpips", "lpips_standard"):
        with pytest.raises(InvalidInputError, match=f"^distance: {name} needs --lpips-vgg and --lpips-lin"):
            TrainConfig.from_settings(method="ict", data="digits", out=str(tmp_path / "r"), distance=name)


@pytest.mark.parametrize("name, variant", [("lpips", "openai"), ("lpips_standard", "standard")])
def test_distance_names_choose_the_variant(weight_files, tmp_path, name, variant):
    from consistency_models.training.methods import LossInputs

    vgg_path, lin_path, _, _ = weight_files
    cfg = TrainConfig.from_settings(method="ct", data="digits", out=str(tmp_path / "r"), distance=name, lpips_vgg=str(vgg_path),
                      lpips_lin=str(lin_path))
    inputs = LossInputs(student=None, network=None, target=None, teacher=None, config=cfg, device=torch.device("cpu"))
    assert inputs.distance().variant == variant
