"""The networks' dropout (networks/dropout.py): PyTorch's masks, laid out row-major whatever the
activations' memory layout and drawn as for float32 whatever their dtype, so a layout change
(the CPU training layout, inductor's choice under torch.compile) or a float32 JVP beside a
bfloat16 student masks the same elements from the same random state.

References: `nn.Dropout` itself on contiguous CPU input (bit for bit), and the same values in
two layouts or dtypes (a mask drawn in memory order lands on other elements: O(1) apart at
p = 0.3). The CUDA variants run where a GPU is (bench/gpu_check.sh's tests stage)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from consistency_models.networks.dropout import Dropout
from consistency_models.networks.unet import UNetConfig
from consistency_models.training.run_networks import use_training_layout

from conftest import build_unet

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_contiguous_input_gets_nn_dropouts_masks_bit_for_bit(dtype, p):
    x = torch.randn(3, 16, 8, 8, dtype=dtype)
    torch.manual_seed(7)
    expected = nn.Dropout(p)(x)
    torch.manual_seed(7)
    got = Dropout(p)(x)
    assert torch.equal(got, expected)
    assert 0 < (got == 0).float().mean().item() < 1  # a real mask, not the identity


def test_no_mask_in_eval_mode_or_at_p_0_and_all_zeros_at_p_1_without_drawing():
    x = torch.randn(2, 4, 5, 5)
    assert Dropout(0.5).eval()(x) is x and Dropout(0.0)(x) is x
    torch.manual_seed(0)
    assert torch.equal(Dropout(1.0)(x.to(memory_format=torch.channels_last)), torch.zeros_like(x))
    after = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(nn.Dropout(1.0)(x), torch.zeros_like(x)) and torch.equal(torch.rand(3), after)  # as PyTorch


def seeded(x: torch.Tensor, p: float, seed: int = 3) -> torch.Tensor:
    torch.manual_seed(seed)  # seeds the CUDA generators too
    return Dropout(p)(x)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("p", [0.3, 0.9])
def test_channels_last_input_is_masked_where_contiguous_input_is(p, dtype, device):
    x = torch.randn(4, 32, 16, 16, device=device).to(dtype)
    contiguous = seeded(x, p)
    channels_last = seeded(x.to(memory_format=torch.channels_last), p)
    assert torch.equal(channels_last == 0, contiguous == 0)
    torch.testing.assert_close(channels_last, contiguous, rtol=1e-6 if dtype == torch.float32 else 1e-2, atol=0)
    kept = (contiguous != 0).float().mean().item()
    assert abs(kept - (1 - p)) < 0.02  # 32,768 draws: 7.9 standard deviations at p = 0.3


@pytest.mark.parametrize("device", DEVICES)
def test_the_mask_does_not_depend_on_the_dtype(device):
    """The sCM JVP runs in float32 (or float64 with jvp="fd") beside a bfloat16 student; on CUDA
    PyTorch's own kernel hands out its random numbers in groups sized by the dtype."""
    x = torch.randn(2, 64, 8, 8, device=device)
    masks = [seeded(x.to(dtype), 0.3) == 0 for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64)]
    assert all(torch.equal(mask, masks[0]) for mask in masks[1:])
    assert not torch.equal(seeded(x, 0.3, seed=4) == 0, masks[0])  # another state: another mask


def test_the_cpu_training_layout_keeps_the_dropout_masks_of_a_unet():
    """`use_training_layout` (channels_last for wide UNets on the CPU) promises the same values
    up to summation order; with dropout on, that needs the masks to follow the elements."""
    cfg = UNetConfig(image_size=16, model_channels=128, channel_mult=(1, 2), num_res_blocks=1,
                     attention_resolutions=(8,), num_head_channels=64, num_classes=None, dropout=0.3)
    network = build_unet(cfg).train()
    x, noise_labels = torch.randn(2, 3, 16, 16), torch.tensor([0.3, -1.2])
    with torch.no_grad():
        torch.manual_seed(5)
        plain = network(x, noise_labels)
        use_training_layout(network)
        assert network.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
        torch.manual_seed(5)
        fast = network(x.to(memory_format=torch.channels_last), noise_labels)
        torch.manual_seed(6)
        other = network(x, noise_labels)
    scale = plain.abs().max()
    assert (fast - plain).abs().max() <= 1e-4 * scale
    assert (other - plain).abs().max() > 0.1 * scale  # other masks move it visibly
