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
    with pytest.raises(InvalidInputError, match="^distance: lpips needs --lpips-vgg and --lpips-lin"):
        TrainConfig(method="ict", data="digits", out=str(tmp_path / "r"), distance="lpips")
