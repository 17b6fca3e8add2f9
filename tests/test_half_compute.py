"""Half-precision networks on a CPU without half arithmetic compute their matrix work in float32.

`networks/half_compute.py`. The CPU's own capability is replaced by each answer in turn
(monkeypatching `half_arithmetic`), so both paths run on any CPU: which dtype the ATen matrix
kernels received is recorded below the Python layer (a TorchDispatchMode), and the outputs are
compared with the same network in float64.
"""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from conftest import build_unet

from consistency_models import CMStochasticIterativeScheduler, ConsistencyModelPipeline, UNetConfig
from consistency_models.networks import half_compute
from consistency_models.networks.half_compute import Float32Matmuls, half_arithmetic, matmul_dtype

# Wide enough (128/256 channels) for Winograd and channels_last, with attention at 8 px.
WIDE = UNetConfig(image_size=16, model_channels=128, channel_mult=(1, 2), num_res_blocks=1,
                  attention_resolutions=(8,), num_head_channels=64, num_classes=10)
MATRIX_KERNELS = ("convolution", "mm", "bmm", "addmm", "baddbmm", "scaled_dot_product")


class MatrixKernelDtypes(TorchDispatchMode):
    """Records the dtype of the first floating input of every ATen matrix kernel that runs (the
    data; attention's backward also takes a float32 log-sum-exp)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, torch.dtype]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if any(name.startswith(k) or name.startswith("_" + k) for k in MATRIX_KERNELS):
            first = next(a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point())
            self.seen.append((name, first.dtype))
        return func(*args, **(kwargs or {}))


@pytest.fixture
def cpu_without_half(monkeypatch):
    """A CPU with no bfloat16 or float16 arithmetic, whatever this one has."""
    monkeypatch.setattr(half_compute, "half_arithmetic", lambda dtype: dtype not in half_compute.HALF)


@pytest.fixture
def cpu_with_half(monkeypatch):
    monkeypatch.setattr(half_compute, "half_arithmetic", lambda dtype: True)


def run_network(net, x, t, y):
    """The output and the matrix kernels' dtypes and names of a call after a first one (which
    fills the Winograd filter caches, computed in float32 once)."""
    with torch.no_grad():
        net(x, t, y)
        with MatrixKernelDtypes() as kernels:
            out = net(x, t, y)
    return out, {dtype for _, dtype in kernels.seen}, {name for name, _ in kernels.seen}


def inputs(dtype, batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, 16, 16, generator=g).to(dtype)
    return x, torch.tensor([0.3, -0.7][:batch]), torch.tensor([1, 7][:batch])


def perturbed_unet(dtype):
    """WIDE with every weight random (the zero-initialised residual outputs too), in `dtype`."""
    net = build_unet(WIDE, seed=5)
    with torch.no_grad():
        g = torch.Generator().manual_seed(6)
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return net.to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_network_runs_its_matrix_kernels_in_float32_without_half_arithmetic(cpu_without_half, dtype):
    net = perturbed_unet(dtype).use_fast_kernels()
    out, dtypes, names = run_network(net, *inputs(dtype))
    assert out.dtype == dtype
    assert dtypes == {torch.float32}
    # Winograd's batched GEMM, the linear layers, the 1x1/3x3 convolutions and attention were all seen.
    assert {"bmm", "convolution", "addmm"} <= names and any("scaled_dot_product" in n for n in names)


def test_half_network_keeps_half_kernels_where_the_cpu_has_them(cpu_with_half):
    net = perturbed_unet(torch.bfloat16).use_fast_kernels()
    _, dtypes, _ = run_network(net, *inputs(torch.bfloat16))
    assert dtypes == {torch.bfloat16}


def test_float32_matmuls_only_with_fast_kernels_on_and_without_autograd(cpu_without_half):
    net = perturbed_unet(torch.bfloat16).use_fast_kernels(False)
    _, dtypes, _ = run_network(net, *inputs(torch.bfloat16))
    assert dtypes == {torch.bfloat16}  # fast kernels off: the plain half network, as asked
    net.use_fast_kernels()
    with MatrixKernelDtypes() as kernels:
        net(*inputs(torch.bfloat16)).float().sum().backward()
    assert {dtype for _, dtype in kernels.seen} == {torch.bfloat16}  # training is left alone
    net.float()
    _, dtypes, _ = run_network(net, *inputs(torch.float32))
    assert dtypes == {torch.float32}


def test_float32_matmuls_are_at_least_as_accurate_as_the_half_kernels(monkeypatch):
    """Against the same half weights in float64, the float32 path errs no more than the half one
    (which rounds inside Winograd's transforms, or accumulates in half where the kernel does)."""
    x, t, y = inputs(torch.bfloat16)
    net = perturbed_unet(torch.bfloat16)
    reference = perturbed_unet(torch.bfloat16).double()
    with torch.no_grad():
        expected = reference(x.double(), t.double(), y)
    errors = {}
    for native in (True, False):
        monkeypatch.setattr(half_compute, "half_arithmetic", lambda dtype, native=native: native)
        net.use_fast_kernels()
        out, _, _ = run_network(net, x, t, y)
        errors[native] = ((out.double() - expected).norm() / expected.norm()).item()
    assert errors[False] <= errors[True] * 1.05, errors
    assert errors[False] < 0.03, errors  # bfloat16 rounding of the activations (native here: 2.1 %, AVX2)


def test_the_mode_computes_each_product_in_float32_and_rounds_it_to_the_input_dtype():
    g = torch.Generator().manual_seed(0)
    a, b, w = (torch.randn(shape, generator=g).bfloat16() for shape in [(5, 7), (7, 3), (4, 7)])
    mode = Float32Matmuls()
    with mode, MatrixKernelDtypes() as kernels:
        assert matmul_dtype(a) == torch.float32 and matmul_dtype(a.float()) == torch.float32
        assert matmul_dtype(a.double()) == torch.float64
        ab, lin = a @ b, F.linear(a, w)
        added = a + a  # element-wise work is left in the half dtype
    assert [dtype for _, dtype in kernels.seen] == [torch.float32, torch.float32]
    assert matmul_dtype(a) == torch.bfloat16  # outside the mode
    with mode:  # one instance entered again
        assert matmul_dtype(a) == torch.float32
        with pytest.raises(RuntimeError):
            F.linear(a.float(), w)  # refused as PyTorch refuses it, not widened into working
    assert matmul_dtype(a) == torch.bfloat16
    # Products of bfloat16 numbers summed exactly (float64), rounded once: what float32 accumulation gives here.
    assert ab.dtype == lin.dtype == added.dtype == torch.bfloat16
    torch.testing.assert_close(ab, (a.double() @ b.double()).bfloat16(), rtol=0, atol=0)
    torch.testing.assert_close(lin, (a.double() @ w.double().T).bfloat16(), rtol=0, atol=0)


def test_half_arithmetic_asks_onednn_on_x86_and_leaves_other_architectures_alone(monkeypatch):
    supported = {"_is_mkldnn_bf16_supported": False, "_is_mkldnn_fp16_supported": False}
    for name in supported:
        monkeypatch.setattr(torch.ops.mkldnn, name, lambda name=name: supported[name])
    machine = ["x86_64"]
    monkeypatch.setattr(half_compute.platform, "machine", lambda: machine[0])

    def answers():
        half_arithmetic.cache_clear()
        return half_arithmetic(torch.bfloat16), half_arithmetic(torch.float16), half_arithmetic(torch.float32)

    try:
        assert answers() == (False, False, True)  # AVX2: neither
        supported["_is_mkldnn_bf16_supported"] = True
        assert answers() == (True, False, True)   # AVX-512 (BF16, AMX): bfloat16 only
        supported["_is_mkldnn_fp16_supported"] = True
        assert answers() == (True, True, True)    # AVX512-FP16, AMX-FP16: both
        supported.update(_is_mkldnn_bf16_supported=False, _is_mkldnn_fp16_supported=False)
        machine[0] = "aarch64"
        assert answers() == (True, True, True)    # not measured there: left to PyTorch
    finally:
        half_arithmetic.cache_clear()


def test_bfloat16_pipeline_samples_like_float32_without_half_arithmetic(cpu_without_half, tmp_path):
    """The pipeline as `from_pretrained` returns it (fast kernels on) in bfloat16: its matrix work
    in float32, its images those of the float32 pipeline to bfloat16's rounding."""
    ConsistencyModelPipeline(perturbed_unet(torch.float32), CMStochasticIterativeScheduler()).save_pretrained(tmp_path)
    pipe = ConsistencyModelPipeline.from_pretrained(tmp_path)
    pipe.set_progress_bar_config(disable=True)

    def images():
        return pipe(batch_size=2, num_inference_steps=2, class_labels=[1, 7], output_type="pt",
                    generator=torch.Generator().manual_seed(0)).images

    expected = images()
    pipe.to(dtype=torch.bfloat16)
    with MatrixKernelDtypes() as kernels:
        got = images()
    assert {dtype for _, dtype in kernels.seen} == {torch.float32}
    assert (got.float() - expected).abs().max().item() < 0.05


def test_a_half_network_with_fast_kernels_traces_into_one_graph():
    """torch.compile (`pipe.compile()`, fullgraph) traces a half network with fast kernels on
    into one graph: the mode stays out of compiled code, and the CPU probe (the real one, not a
    stand-in) is asked only outside it."""
    half_arithmetic.cache_clear()
    net = perturbed_unet(torch.bfloat16).use_fast_kernels()
    with torch.no_grad():
        explanation = torch._dynamo.explain(net)(*inputs(torch.bfloat16))
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
