"""The MLP for 2-D data: the UNet's forward signature, conditioning, zero init, torch.compile."""

from __future__ import annotations

import pytest
import torch

from consistency_models import ConsistencyFunction, InvalidInputError
from consistency_models.networks import mlp as mlp_module
from consistency_models.networks import unet as unet_module
from consistency_models.networks.mlp import MLP, MLPConfig
from consistency_models.networks.presets import MLP_PRESETS
from conftest import perturb_


def build(seed: int = 0, **kwargs) -> MLP:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = MLP(MLPConfig(**kwargs))
    return perturb_(model, seed + 1).eval()


def inputs(batch: int = 8, dim: int = 2, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, dim, generator=gen), 250 * torch.randn(batch, generator=gen).abs().log()


def test_config_defaults_and_preset():
    cfg = MLPConfig()
    assert (cfg.dim, cfg.hidden, cfg.depth, cfg.emb_dim, cfg.num_classes, cfg.dropout) == (2, 256, 4, 64, None, 0.0)
    assert MLP_PRESETS["mlp2d"] == cfg
    assert MLP(cfg).config is cfg and MLP(hidden=32).config == MLPConfig(hidden=32)
    assert mlp_module.embed_times is unet_module.embed_times  # shared, not copied
    with pytest.raises(TypeError):
        MLP(cfg, hidden=32)


def test_forward_shapes_dtype_and_zero_init():
    x, t = inputs(dim=3)
    fresh = MLP(MLPConfig(dim=3, hidden=32, depth=2, emb_dim=16))
    assert fresh.dtype == torch.float32
    out = fresh(x, t)
    assert out.shape == (8, 3) and out.dtype == torch.float32
    assert torch.equal(out, torch.zeros(8, 3))  # ADM-style zero output layer
    model = build(dim=3, hidden=32, depth=2, emb_dim=16)
    assert model(x, t).abs().min() > 0
    assert not torch.allclose(model(x, t), model(x, t + 50))  # depends on the noise label
    double = build(dim=3, hidden=32, depth=2, emb_dim=16).double()
    assert double.dtype == torch.float64 and double(x.double(), t).dtype == torch.float64


def test_class_conditioning_changes_the_output():
    model = build(hidden=32, depth=2, emb_dim=16, num_classes=4)
    x, t = inputs()
    a = model(x, t, torch.zeros(8, dtype=torch.long))
    b = model(x, t, torch.full((8,), 3, dtype=torch.long))
    assert a.shape == (8, 2) and not torch.allclose(a, b)
    with pytest.raises(InvalidInputError, match=r"^class_labels: this model is class-conditional and needs one label"):
        model(x, t)
    with pytest.raises(InvalidInputError, match=r"^class_labels: this model is unconditional and takes no class labels$"):
        build(hidden=32)(x, t, torch.zeros(8, dtype=torch.long))


def test_config_errors():
    with pytest.raises(InvalidInputError, match=r"^depth: 0 must be a positive integer$"):
        MLPConfig(depth=0)
    with pytest.raises(InvalidInputError, match=r"^num_classes: 0 must be None or a positive count$"):
        MLPConfig(num_classes=0)
    with pytest.raises(InvalidInputError, match=r"^dropout: 1.0 must be in \[0, 1\)$"):
        MLPConfig(dropout=1.0)


def test_dropout_only_in_training():
    model = build(hidden=32, depth=2, emb_dim=16, dropout=0.5)
    x, t = inputs()
    assert torch.equal(model(x, t), model(x, t))
    model.train()
    assert not torch.equal(model(x, t), model(x, t))


def test_consistency_function_wraps_the_mlp():
    """The parametrization's scalings broadcast over (B, 2): f(x, σ_min) = x."""
    f = ConsistencyFunction(build(hidden=32, depth=2, emb_dim=16))
    x, _ = inputs()
    torch.testing.assert_close(f(x, torch.full((8,), 0.002)), x)
    assert f(x, torch.full((8,), 5.0)).shape == (8, 2)


def check_compiled(backend: str) -> None:
    torch._dynamo.reset()
    model = build(hidden=64, depth=3, emb_dim=32, num_classes=3)
    x, t = inputs()
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, t, y), model(x, t, y), rtol=1e-5, atol=1e-6)
    # and with gradients (the training path)
    compiled(x, t, y).square().sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_fullgraph_compile_agrees_with_eager():
    """One graph, no breaks (fullgraph=True), traced forward and backward through AOTAutograd."""
    check_compiled("aot_eager")


@pytest.mark.slow
def test_fullgraph_inductor_agrees_with_eager():
    """The default backend (C++ code generation on CPU: ~25 s cold)."""
    check_compiled("inductor")
