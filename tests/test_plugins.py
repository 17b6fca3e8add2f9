"""A model kind and a training method are plug-ins (issue 21): a toy kind (an x₀-predicting
network: f = F(x, c_noise), no skip path) and a toy method registered from outside the package
train two steps, save a folder, reload it and sample — with nothing in the package touched."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

from consistency_models import ConsistencyModelPipeline, InvalidInputError
from consistency_models.kinds import ModelKind, get_kind, register, unregister
from consistency_models.parametrization import Preconditioned
from consistency_models.sampling import CONSISTENCY_SAMPLER
from consistency_models.training import TrainConfig, Trainer
from consistency_models.training.methods.edm import EDMLoss
from consistency_models.training.methods.registry import Method
from consistency_models.training.methods.registry import register as register_method
from consistency_models.training.methods.registry import unregister as unregister_method
from consistency_models.training.settings import MethodOptions, setting


class X0Prediction(Preconditioned):
    """f(x, σ) = F(x, c_noise(σ)): c_skip = 0, c_out = 1, c_in = 1."""

    def scalings(self, sigma):
        return torch.zeros_like(sigma), torch.ones_like(sigma), torch.ones_like(sigma)


@pytest.fixture
def toy_plugins():
    kind = register(ModelKind(name="toy_x0", summary="an x0-predicting toy", wrapper=X0Prediction,
                              sampler=CONSISTENCY_SAMPLER))
    register_method(Method(name="toy-x0", summary="denoising loss on an x0-predicting network",
                           parametrization="toy_x0",
                           build_loss=lambda inputs: EDMLoss(inputs.wrap(inputs.student, "toy_x0"))))
    yield kind
    unregister_method("toy-x0")
    unregister("toy_x0")


def test_a_toy_kind_and_method_train_save_reload_and_sample(toy_plugins, tmp_path):
    out = tmp_path / "run"
    Trainer(TrainConfig(data="toy:mog8", out=str(out), method="toy-x0", steps=2, batch_size=16, progress=False,
                        save_every=2, sample_every=2)).run()
    assert json.loads((out / "model_index.json").read_text())["_parametrization"] == "toy_x0"
    pipe = ConsistencyModelPipeline.from_pretrained(out)
    assert pipe.kind is toy_plugins and isinstance(pipe.denoiser, X0Prediction)
    torch.manual_seed(0)
    with torch.no_grad():  # weights in every layer (the fresh output and embedding layers start near zero)
        for parameter in pipe.unet.parameters():
            parameter.normal_(0, 0.3)
    latents = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    points = pipe(batch_size=5, latents=latents, output_type="pt").images
    # one step by hand: x = σ_max·z, f = F(x, 250·ln σ_max) — the raw network, no skip path
    sigma = torch.tensor(pipe.sampling_config.sigma_max, dtype=torch.float64)
    with torch.no_grad():
        expected = pipe.unet(latents * sigma.float(), (250 * sigma.log()).float().expand(5), None)
        other_time = pipe.unet(latents * sigma.float(), (250 * sigma.log()).float().expand(5) + 1, None)
    assert (expected - other_time).abs().max() > 1e-3  # the check sees the time input
    torch.testing.assert_close(points, expected.float(), rtol=1e-5, atol=1e-5)


def test_an_unknown_kind_is_one_line_naming_the_known_ones():
    with pytest.raises(InvalidInputError, match=r"parametrization: 'toy_x1' is not one of consistency, edm, trigflow, "
                                        r"trigflow_edm"):
        get_kind("toy_x1")


@dataclass
class ChoiceOptions(MethodOptions):
    target: str = setting("x0", "what the toy network predicts", choices=("x0", "flow"))


@pytest.fixture
def toy_choice():
    """A method whose model kind is chosen by its own option: an x0-predicting kind with σ, or a
    kind without noise levels σ (as MeanFlow's) — the kind is known only once the run's options are."""
    register(ModelKind(name="toy_x0", summary="an x0-predicting toy", wrapper=X0Prediction,
                       sampler=CONSISTENCY_SAMPLER))
    register(ModelKind(name="toy_flow", summary="a toy flow model", wrapper=X0Prediction, sampler=CONSISTENCY_SAMPLER,
                       uses_sigmas=False))
    register_method(Method(name="toy-choice", summary="an x0 or flow toy", options=ChoiceOptions,
                           parametrization=lambda run: {"x0": "toy_x0", "flow": "toy_flow"}[run.options.target],
                           build_loss=lambda inputs: EDMLoss(inputs.wrap(inputs.student, "toy_x0"))))
    yield
    unregister_method("toy-choice")
    unregister("toy_flow")
    unregister("toy_x0")


def test_sigma_settings_follow_the_kind_a_run_chooses(toy_choice, tmp_path):
    """Given to a run whose kind has no σ, a σ setting is refused; in a saved run (older versions
    recorded them) it is dropped on loading — for a kind chosen by the run's options as for a fixed one."""
    run = dict(method="toy-choice", data="toy:mog8", out=str(tmp_path / "run"))
    with pytest.raises(InvalidInputError, match=r"^sigma_max: 40\.0 is not used by --method toy-choice \(a toy flow "
                                                r"model has no noise levels sigma"):
        TrainConfig(**run, options={"target": "flow"}, sigma_max=40.0)
    saved = TrainConfig(**run, options={"target": "flow"}).to_dict()
    saved.update(sigma_max=40.0, rho=3.0)
    loaded = TrainConfig.from_dict(saved)
    assert (loaded.options.target, loaded.sigma_max, loaded.rho) == ("flow", 80.0, 7.0)
    saved = TrainConfig(**run, sigma_max=40.0, rho=3.0).to_dict()
    loaded = TrainConfig.from_dict(saved)
    assert (loaded.options.target, loaded.sigma_max, loaded.rho) == ("x0", 40.0, 3.0)
