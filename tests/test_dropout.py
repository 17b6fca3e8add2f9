"""The networks' dropout (networks/dropout.py): PyTorch's masks, laid out row-major whatever the
activations' memory layout, so a layout change (the CPU training layout, inductor's choice under
torch.compile) masks the same elements from the same random state.

References: `nn.Dropout` itself on contiguous input (bit for bit), and the same values in the
two layouts (a mask drawn in memory order lands on other elements: O(1) apart at p = 0.3)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from consistency_models.networks.dropout import Dropout
from consistency_models.networks.unet import UNetConfig
from consistency_models.training.run_networks import use_training_layout

from conftest import build_unet


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


def test_no_mask_in_eval_mode_or_at_p_0_and_all_zeros_at_p_1():
    x = torch.randn(2, 4, 5, 5)
    assert Dropout(0.5).eval()(x) is x and Dropout(0.0)(x) is x
    assert torch.equal(Dropout(1.0)(x.to(memory_format=torch.channels_last)), torch.zeros_like(x))


@pytest.mark.parametrize("p", [0.3, 0.9])
def test_channels_last_input_is_masked_where_contiguous_input_is(p):
    x = torch.randn(4, 32, 16, 16)
    torch.manual_seed(3)
    contiguous = Dropout(p)(x)
    torch.manual_seed(3)
    channels_last = Dropout(p)(x.to(memory_format=torch.channels_last))
    assert torch.equal(channels_last == 0, contiguous == 0)
    torch.testing.assert_close(channels_last, contiguous, rtol=1e-6, atol=0)
    kept = (contiguous != 0).float().mean().item()
    assert abs(kept - (1 - p)) < 0.02  # 32,768 draws: 4.4 standard deviations at p = 0.3


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
