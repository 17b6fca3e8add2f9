"""sCT / sCD (issue 15): the exact JVP against float64 finite differences, the loss on fixed
tensors against a hand computation, dropout masks, precision, and training runs of `cm train`."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from consistency_models import preset
from consistency_models.cli import main
from consistency_models.errors import InvalidInputError
from consistency_models.networks import UNetModel
from consistency_models.networks.mlp import MLP, MLPConfig
from consistency_models.training.checkpoint import list_checkpoints
from consistency_models.training.jvp import jvp
from consistency_models.training.methods.scm import AdaptiveWeight, SCMLoss
from consistency_models.trigflow import TrigFlow

from conftest import TORCHRUN, assert_same_exports, exported_weights, perturb_, train_one_and_two_processes


def networks():
    torch.manual_seed(0)
    yield "test", perturb_(UNetModel(preset("test")), 1, 0.05).eval(), (2, 3, 32, 32), 1000
    yield "digits16", perturb_(UNetModel(preset("digits16")), 2, 0.05).eval(), (2, 1, 16, 16), 10
    yield "mlp", perturb_(MLP(MLPConfig(hidden=32, depth=2, emb_dim=16)), 3).eval(), (4, 2), None


@pytest.mark.parametrize("name, net, shape, classes", list(networks()), ids=lambda v: v if isinstance(v, str) else "")
def test_exact_jvp_matches_float64_finite_differences(name, net, shape, classes):
    """Forward-mode AD through the UNet (attention by its own JVP, GroupNorm, scale-shift,
    the time embedding) and the MLP equals a float64 central difference."""
    gen = torch.Generator().manual_seed(5)
    u = torch.randn(shape, generator=gen)
    t = torch.tensor([0.2, 1.3, 0.7, 1.5][: shape[0]], dtype=torch.float64)
    labels = None if classes is None else torch.arange(shape[0]) % classes
    tu = torch.randn(shape, generator=gen) * 0.3
    tt = torch.cos(t) * torch.sin(t) * 0.5
    f32 = TrigFlow(net)
    f64 = TrigFlow(copy.deepcopy(net).double())
    with torch.no_grad():
        value, exact = jvp(lambda a, b: f32.F_scaled(a, b, labels), (u, t), (tu, tt), "exact")
        value64, fd = jvp(lambda a, b: f64.F_scaled(a, b, labels), (u.double(), t), (tu.double(), tt), "fd")
    scale = fd.abs().max()
    assert scale > 1e-2, "a JVP of zero proves nothing"
    assert (value.double() - value64).abs().max() < 1e-4 * value64.abs().max()
    assert (exact.double() - fd).abs().max() < 2e-4 * scale, name


def test_fused_attention_has_no_forward_ad_so_attention_carries_its_own():
    """Why jvp() enters jvp_attention(): the fused SDPA kernel refuses forward-mode AD."""
    net = perturb_(UNetModel(preset("digits16")), 2, 0.05).eval()
    u, c, y = torch.randn(1, 1, 16, 16), torch.tensor([1.0]), torch.tensor([3])
    with torch.no_grad():
        try:
            torch.func.jvp(lambda a: net(a, c, y), (u,), (torch.ones_like(u),))
        except (NotImplementedError, RuntimeError) as exc:
            assert "forward AD" in str(exc) or "forward-mode" in str(exc).lower()
        else:
            pytest.skip("this PyTorch build has a forward-AD formula for its fused attention")


def test_the_first_jvp_says_nothing_of_torch_jit_script():
    """PyTorch scripts its forward-AD decompositions with the deprecated torch.jit.script on the
    first forward-AD call of a process (a DeprecationWarning in torch 2.11-2.13, a FutureWarning
    that `cm train --method sct` printed into its progress bar from 2.14): jvp() loads them with
    that warning silenced. A fresh process (the load happens once), every warning an error."""
    code = ("import warnings, torch\n"
            "warnings.simplefilter('error')\n"
            "from consistency_models.training.jvp import jvp\n"
            "x = torch.linspace(0, 1, 5)\n"
            "value, tangent = jvp(torch.sin, (x,), (torch.ones_like(x),))\n"
            "assert torch.allclose(tangent, torch.cos(x))\n"
            "print('silent')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout, done.stderr) == (0, "silent\n", "")


class LinearNet(nn.Module):
    """network(u, c) = a·u + b·c: F = −(a·u + b·c(t)) has a JVP one can write down."""

    def __init__(self, a: float, b: float) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a))
        self.b = nn.Parameter(torch.tensor(b))

    def forward(self, u, c_noise, class_labels=None):
        return self.a * u + self.b * c_noise.to(u.dtype)[:, None]


@pytest.mark.parametrize("time_input", ["t", "log_sigma"])
@pytest.mark.parametrize("step, warmup, bias", [(0, 10, 0.0), (5, 10, 0.3), (50, 10, -0.2), (7, 0, 0.0),
                                               (5, 10, None)])  # None: no adaptive weight (w = 0)
def test_loss_on_fixed_tensors_against_a_hand_computation(step, warmup, bias, time_input):
    sd = 0.5
    x = torch.tensor([[0.3, -1.2], [1.5, 0.4], [-0.7, 0.9]])
    z = torch.tensor([[0.2, 0.1], [-0.6, 0.3], [0.05, -0.4]])
    t = torch.tensor([0.3, 1.0, 1.45], dtype=torch.float64)
    net = LinearNet(0.8, 0.002)
    weight = None if bias is None else AdaptiveWeight(sd)
    if bias is None:
        bias = 0.0
    else:
        nn.init.constant_(weight.linear.bias, bias)
    loss = SCMLoss(net, weight, None, sd, tangent_warmup=warmup, tangent_c=0.1, time_input=time_input
                   ).loss_at(x, t, z, None, step)
    loss.sum().backward()

    # by hand, float64
    X, Z, T = x.double().numpy(), z.double().numpy(), t.numpy()[:, None]
    cos, sin = np.cos(T), np.sin(T)
    xt = cos * X + sin * Z
    dxdt = cos * Z - sin * X
    u = xt / sd
    if time_input == "t":       # F = a·u + b·t
        sign, c, dc_dt = 1.0, T, np.ones_like(T)
    else:                       # F = −(a·u + b·250·ln(σ_d·tan t))
        sign, c, dc_dt = -1.0, 250 * np.log(sd * np.tan(T)), 250 / (sin * cos)
    f_minus = sign * (0.8 * u + 0.002 * c)
    j = sign * (0.8 * cos * sin * dxdt + 0.002 * dc_dt * cos * sin * sd)   # cos·sin·σ_d·dF/dt
    r = 1.0 if warmup == 0 else min(1.0, step / warmup)
    g = -cos**2 * (sd * f_minus - dxdt) - r * (cos * sin * xt + j)
    g = g / (np.linalg.norm(g, axis=1, keepdims=True) + 0.1)
    expected = np.exp(bias) * (g**2).mean(axis=1) - bias            # F_θ = F⁻ in value
    np.testing.assert_allclose(loss.detach().double().numpy(), expected, rtol=1e-5, atol=1e-7)
    # ∂/∂a of Σ e^w·mean((F_θ − F⁻ − g)²): F_θ − F⁻ = 0, ∂F_θ/∂a = sign·u, ∂F_θ/∂b = sign·c
    grad_a = (np.exp(bias) * (-2 * g * sign * u).mean(axis=1)).sum()
    grad_b = (np.exp(bias) * (-2 * g * sign * c).mean(axis=1)).sum()
    np.testing.assert_allclose([net.a.grad.item(), net.b.grad.item()], [grad_a, grad_b], rtol=1e-4)


def test_the_target_sees_the_students_dropout_mask():
    """F⁻ and its JVP are taken with the dropout mask the student's forward then draws again."""
    net = perturb_(MLP(MLPConfig(hidden=64, depth=2, emb_dim=16, dropout=0.5)), 3).train()
    loss = SCMLoss(net, AdaptiveWeight(), None)
    x_t, t = torch.randn(8, 2), torch.full((8,), 0.9, dtype=torch.float64)
    dxdt = torch.randn(8, 2)
    from consistency_models.training.methods.loss import same_dropout

    with torch.no_grad(), same_dropout(x_t.device) as rewind:
        f_minus, _ = loss.tangent(x_t, t, dxdt, None, 0, rewind)
    rewind()
    f_theta = loss.student.F(x_t, t)
    torch.testing.assert_close(f_theta, f_minus)
    assert not torch.allclose(loss.student.F(x_t, t), f_minus)  # a new draw gives another mask


def digits_case():
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    z = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(2)) * 0.5
    return x, torch.tensor([0.4, 1.2], dtype=torch.float64), z, torch.tensor([1, 2])


@pytest.mark.parametrize("precision", ["run", "float32"])
def test_the_tangent_pass_follows_jvp_precision_under_bfloat16_autocast(precision):
    """"run": the tangent pass keeps the run's bf16 autocast; "float32": autocast off (the
    precision of sCM's paper before its bf16 JVP). F⁻ and g come out float32 either way."""
    net = perturb_(UNetModel(preset("digits16")), 2, 0.05).train()
    loss = SCMLoss(net, AdaptiveWeight(), None, jvp_precision=precision)
    x, t, z, labels = digits_case()
    seen = []  # autocast on or off in each forward of the network: the JVP's (F⁻), then the student's
    net.register_forward_hook(lambda module, args, out: seen.append(torch.is_autocast_enabled("cpu")))
    spied = []
    original = loss.tangent
    loss.tangent = lambda *args: spied.append(original(*args)) or spied[-1]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss.loss_at(x, t, z, labels, 3)
    assert value.dtype == torch.float32 and torch.isfinite(value).all()
    assert seen == [precision == "run", True]
    assert [tensor.dtype for tensor in spied[0]] == [torch.float32, torch.float32]
    with pytest.raises(InvalidInputError, match="jvp_precision: 'bf16' is not one of run, float32"):
        SCMLoss(net, None, None, jvp_precision="bf16")


def test_a_bfloat16_tangent_pass_errs_no_more_than_a_bfloat16_forward():
    """F⁻ and g from the bf16 tangent pass against the float32 one: their relative error is of the
    size of the network's own bf16 forward error (≈2 % for this perturbed UNet; measured 1.9 % and
    2.3 % against 1.8 %) — the JVP adds no error of its own beyond bf16 — and not zero."""
    net = perturb_(UNetModel(preset("digits16")), 2, 0.05).eval()
    x, t, z, labels = digits_case()
    cos, sin = torch.cos(t).float()[:, None, None, None], torch.sin(t).float()[:, None, None, None]
    x_t, dxdt = cos * x + sin * z, cos * z - sin * x
    results = {}
    for precision in ("run", "float32"):
        loss = SCMLoss(net, None, None, tangent_warmup=0, jvp_precision=precision)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            results[precision] = loss.tangent(x_t, t, dxdt, labels, 0, lambda: None)
            forward_bf16 = loss.student.F(x_t, t, labels).float()
    with torch.no_grad():
        forward_fp32 = loss.student.F(x_t, t, labels)
    forward_error = (forward_bf16 - forward_fp32).norm() / forward_fp32.norm()
    assert 1e-3 < forward_error < 5e-2
    for low, high in zip(results["run"], results["float32"]):
        assert 1e-3 < (low - high).norm() / high.norm() < 2 * forward_error


# -- cm train --method sct | scd ------------------------------------------------------------------------
TOY = ["train", "--data", "toy:mog8", "--batch-size", "32", "--no-progress", "--save-every", "3", "--sample-every",
       "100"]



@pytest.fixture(scope="module")
def toy_teacher(tmp_path_factory):
    """A 3-step EDM teacher on the toy (sCD only needs its velocity to be some network's)."""
    folder = tmp_path_factory.mktemp("teacher") / "teacher"
    assert main([*TOY, "--method", "edm", "--steps", "3", "--out", str(folder)]) == 0
    return folder


def method_options(method: str, teacher) -> list[str]:
    """sCT as it defaults; sCD from the toy teacher with w_φ switched on (its default is off), so
    that both runs carry the adaptive weight through resume and DDP."""
    return ["--method", "sct"] if method == "sct" else ["--method", "scd", "--teacher", str(teacher),
                                                         "--adaptive-weight"]


@pytest.mark.parametrize("method", ["sct", "scd"])
def test_scm_resumes_bit_for_bit_with_its_adaptive_weight(method, tmp_path, toy_teacher):
    options = method_options(method, toy_teacher)
    assert main([*TOY, *options, "--steps", "6", "--out", str(tmp_path / "a")]) == 0
    whole = exported_weights(tmp_path / "a")
    resumed = shutil.copytree(tmp_path / "a", tmp_path / "b")
    assert [step for step, _ in list_checkpoints(resumed)] == [3, 6]
    list_checkpoints(resumed)[-1][1].unlink()  # as if killed after the step-3 checkpoint
    shutil.rmtree(resumed / "unet")
    assert main([*TOY, *options, "--steps", "6", "--out", str(resumed), "--resume"]) == 0
    again = exported_weights(resumed)
    assert all(torch.equal(whole[k], again[k]) for k in whole)
    state = torch.load(list_checkpoints(resumed)[-1][1], weights_only=True)
    want = torch.load(list_checkpoints(tmp_path / "a")[-1][1], weights_only=True)
    assert set(state["loss"]["weight"]) == {"frequencies", "phases", "linear.weight", "linear.bias"}
    assert all(torch.equal(state["loss"]["weight"][k], want["loss"]["weight"][k]) for k in state["loss"]["weight"])
    assert state["loss"]["weight"]["linear.bias"].abs().item() > 0  # w_φ trained


def test_scd_from_a_teacher_exports_a_trigflow_folder(tmp_path, capsys, toy_teacher):
    assert main([*TOY, "--method", "scd", "--teacher", str(toy_teacher), "--steps", "3",
                 "--out", str(tmp_path / "scd"), "--jvp", "fd"]) == 0
    from consistency_models import ConsistencyModelPipeline

    pipe = ConsistencyModelPipeline.from_pretrained(tmp_path / "scd")
    assert pipe.parametrization == "trigflow"  # a fresh student with the time input t (see methods/scd.py)
    points = pipe(batch_size=5, num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0))
    assert points.images.shape == (5, 2) and np.isfinite(points.images).all()
    capsys.readouterr()
    assert main([*TOY, "--method", "sct", "--steps", "3", "--out", str(tmp_path / "x"), "--distance", "l2"]) == 2
    assert "distance: 'l2' is not used by --method sct" in capsys.readouterr().err
    assert main([*TOY, "--method", "scd", "--steps", "3", "--out", str(tmp_path / "y")]) == 2
    assert "needs --teacher" in capsys.readouterr().err
    assert main([*TOY, "--method", "sct", "--steps", "3", "--out", str(tmp_path / "z"), "--p-std", "0"]) == 2
    assert "p-std: 0.0 is not allowed; use a number > 0" in capsys.readouterr().err
    assert main([*TOY, "--method", "scd", "--teacher", str(toy_teacher), "--steps", "3",
                 "--out", str(tmp_path / "w"), "--init-from-teacher", "--time-input", "t"]) == 2
    assert "time-input: 't' does not fit a student started from the teacher (its network takes log_sigma)" in \
        capsys.readouterr().err
    assert main([*TOY, "--method", "scd", "--teacher", str(toy_teacher), "--steps", "3",
                 "--out", str(tmp_path / "copy"), "--init-from-teacher"]) == 0
    assert ConsistencyModelPipeline.from_pretrained(tmp_path / "copy").parametrization == "trigflow_edm"


@pytest.mark.skipif(not TORCHRUN.is_file(), reason=f"torchrun is not installed next to {sys.executable}")
@pytest.mark.parametrize("method", ["sct", "scd"])
def test_two_torchrun_processes_train_what_one_trains(method, tmp_path, toy_teacher):
    """sCT and sCD under DDP (gloo, 2 real processes): the JVP runs on each rank's unwrapped network, w_φ's
    gradients are averaged like the network's; the result equals one process to float tolerance."""
    one, two = train_one_and_two_processes(["train", *method_options(method, toy_teacher), "--data", "toy:mog8",
                                            "--steps", "8", "--batch-size", "32", "--save-every", "8",
                                            "--sample-every", "100", "--no-progress"], tmp_path)
    assert_same_exports(tmp_path / "one", tmp_path / "two")
    wa, wb = (torch.load(list_checkpoints(tmp_path / r)[-1][1], weights_only=True)["loss"]["weight"]
              for r in ("one", "two"))
    torch.testing.assert_close(wa["linear.weight"], wb["linear.weight"], rtol=1e-4, atol=1e-6)
