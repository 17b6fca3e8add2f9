"""The memory layout `cm train` trains in: channels_last for wide UNets on the CPU, NCHW otherwise.

oneDNN's convolutions run their forward and both gradients faster on channels_last tensors (the
imagenet64 CT step 1.15× in bfloat16 on an AMX CPU, see docs/benchmarks.md); the values are the
same, only the summation order of a convolution may differ. Tests: which networks switch, that a
step gives the NCHW step's loss and gradients, and that a real run in that layout resumes bit for
bit and exports a folder a pipeline loads.
"""

from __future__ import annotations

import copy
import shutil
import sys

import pytest
import torch

from consistency_models import ConsistencyFunction, ConsistencyModelPipeline, UNetConfig, UNetModel
from consistency_models.cli import main
from consistency_models.networks.mlp import MLP
from consistency_models.scheduler import CMStochasticIterativeScheduler
from consistency_models.training.batch_rng import BatchRNG
from consistency_models.training.checkpoint import list_checkpoints, load_checkpoint
from consistency_models.training.methods import AdaptiveWeight, CTLoss, SCMLoss, get_method
from consistency_models.training.run_networks import use_training_layout
from conftest import TORCHRUN, assert_same_exports, exported_weights, perturb_, train_one_and_two_processes

CL = torch.channels_last


def wide_unet(seed: int = 0, width: int = 128) -> UNetModel:
    """A one-level UNet as wide as imagenet64's narrowest level, small enough to train in a test;
    random weights in every layer (the output layer too, so gradients reach everything)."""
    torch.manual_seed(seed)
    net = UNetModel(UNetConfig(image_size=16, in_channels=1, out_channels=1, model_channels=width,
                               channel_mult=(1,), num_res_blocks=1, attention_resolutions=(16,),
                               num_head_channels=64, num_classes=None))
    return perturb_(net, seed, std=0.02)


def is_channels_last(net: torch.nn.Module) -> bool:
    """Every convolution weight channels_last, and not merely as a side effect of one input channel."""
    weights = [p for p in net.parameters() if p.ndim == 4]
    return all(p.is_contiguous(memory_format=CL) for p in weights) and any(not p.is_contiguous() for p in weights)


def test_only_wide_unets_on_the_cpu_switch_to_channels_last():
    wide, narrow, mlp = wide_unet(), wide_unet(width=64), MLP()
    assert use_training_layout(wide) is wide and is_channels_last(wide)
    assert use_training_layout(narrow) is narrow and all(p.is_contiguous() for p in narrow.parameters())
    assert use_training_layout(mlp) is mlp and all(p.is_contiguous() for p in mlp.parameters())


def ct_loss_and_gradients(net: UNetModel, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One CT loss (target = a copy of the network) and its gradient, flattened, on fixed draws."""
    target = copy.deepcopy(net).requires_grad_(False)
    loss_fn = CTLoss(ConsistencyFunction(net), ConsistencyFunction(target), total_steps=100)
    rng = BatchRNG(torch.Generator().manual_seed(7), len(x), slice(0, len(x)), x.device)
    loss = loss_fn(x, None, 50, rng).mean()
    grads = torch.autograd.grad(loss, list(net.parameters()))
    return loss.detach().double(), torch.cat([g.flatten() for g in grads]).double()


def test_a_ct_step_in_channels_last_is_float32_rounding_away_from_float64():
    """The CT loss is a small difference of two network outputs, so float32 gradients carry
    ~1e-5 relative rounding in either layout (oneDNN sums in another order in channels_last:
    measured 1.2e-5 against NCHW's 5e-6); both stay two orders below what bfloat16 autocast,
    the usual training precision, changes in the same step."""
    nchw = wide_unet().train()
    last = use_training_layout(copy.deepcopy(nchw))
    assert is_channels_last(last) and not is_channels_last(nchw)
    x = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(1)).clamp(-1, 1)
    loss64, grad64 = ct_loss_and_gradients(copy.deepcopy(nchw).double(), x.double())
    assert loss64 > 0
    errors = {}
    for name, net in (("nchw", nchw), ("channels_last", last), ("bfloat16", nchw)):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "bfloat16"):
            loss, grad = ct_loss_and_gradients(net, x)
        errors[name] = float((grad - grad64).norm() / grad64.norm())
        if name != "bfloat16":
            assert abs(loss - loss64) <= 1e-4 * loss64, name
    assert max(errors["nchw"], errors["channels_last"]) < min(5e-5, errors["bfloat16"] / 100), errors


def test_methods_that_take_a_jvp_keep_nchw():
    """The sCT step measured 4-10 % slower in channels_last, so JVP methods train in NCHW."""
    assert {name: get_method(name).takes_jvp for name in ("ct", "cd", "ict", "ect", "tcm", "edm", "sct", "scd",
                                                          "meanflow")} == {
        "ct": False, "cd": False, "ict": False, "ect": False, "tcm": False, "edm": False,
        "sct": True, "scd": True, "meanflow": True}
    wide = wide_unet()
    assert use_training_layout(wide, jvp=True) is wide and all(p.is_contiguous() for p in wide.parameters())


def test_an_sct_step_takes_a_channels_last_network():
    """group_norm's tangent views its input as (N, groups, -1), which a channels_last activation
    cannot give: under forward-mode AD the network makes it contiguous first, and the JVP step
    of a channels_last network (e.g. one a user put there) equals the NCHW one to float32 rounding:
    a relative 1e-4, 40 times below a single bfloat16 rounding (2^-8). (This test compared with
    a bfloat16 autocast step, 20 of its 22 s on a CPU without bfloat16 arithmetic: measured then,
    channels_last 2.4e-6 off, bfloat16 1.8e-2.)"""
    x = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(1)).clamp(-1, 1)
    results = {}
    for name in ("nchw", "channels_last"):
        net = wide_unet().train()
        if name == "channels_last":
            net.to(memory_format=CL)
        assert is_channels_last(net) == (name == "channels_last")
        loss_fn = SCMLoss(net, AdaptiveWeight(), None, tangent_warmup=10, time_input="t")
        rng = BatchRNG(torch.Generator().manual_seed(7), 4, slice(0, 4), torch.device("cpu"))
        loss = loss_fn(x, None, 5, rng).mean()
        grads = torch.autograd.grad(loss, list(net.parameters()), allow_unused=True)
        results[name] = torch.cat([g.flatten() for g in grads if g is not None]).double()
    error = float((results["channels_last"] - results["nchw"]).norm() / results["nchw"].norm())
    assert results["nchw"].norm() > 0 and error < 1e-4, error


def wide_run_argv(tmp_path) -> list[str]:
    """`cm train` of CT on digits from a saved wide UNet (4 steps, a checkpoint every 2)."""
    start = tmp_path / "wide"
    ConsistencyModelPipeline(wide_unet(), CMStochasticIterativeScheduler()).save_pretrained(start)
    return ["train", "--method", "ct", "--data", "digits", "--unconditional", "--init-from", str(start),
            "--batch-size", "4", "--steps", "4", "--save-every", "2", "--sample-every", "100", "--no-progress"]


def test_a_run_in_channels_last_resumes_bit_for_bit_and_exports_contiguous_weights(tmp_path):
    argv = [*wide_run_argv(tmp_path), "--device", "cpu"]
    start = tmp_path / "wide"
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    state = load_checkpoint(list_checkpoints(tmp_path / "a")[-1][1])
    convs = [t for t in state["network"].values() if t.ndim == 4 and t.shape[1] > 1 and t.shape[-1] == 3]
    assert convs and all(t.is_contiguous(memory_format=CL) and not t.is_contiguous() for t in convs)  # trained so
    whole = exported_weights(tmp_path / "a")
    assert not torch.equal(whole["conv_in.weight"], exported_weights(start)["conv_in.weight"])   # it trained

    resumed = shutil.copytree(tmp_path / "a", tmp_path / "b")
    list_checkpoints(resumed)[-1][1].unlink()      # as if killed after the step-2 checkpoint
    shutil.rmtree(resumed / "unet")
    assert main([*argv, "--out", str(resumed), "--resume"]) == 0
    again = exported_weights(resumed)
    assert all(torch.equal(whole[k], again[k]) for k in whole)
    ConsistencyModelPipeline.from_pretrained(resumed)   # a pipeline folder as any other


@pytest.mark.skipif(not TORCHRUN.is_file(), reason=f"torchrun is not installed next to {sys.executable}")
def test_two_torchrun_processes_train_in_channels_last_what_one_trains(tmp_path):
    """DistributedDataParallel's gradient buckets take the channels_last gradients as they are."""
    train_one_and_two_processes(wide_run_argv(tmp_path), tmp_path)
    assert_same_exports(tmp_path / "one", tmp_path / "two")
