"""Converting OpenAI `cm/unet.py` checkpoints (.pt state dicts) into this package and diffusers' format.

Reference: `tests/openai_reference_unet.OpenAIUNet`, an independent implementation with
OpenAI's key names and shapes (fused qkv 1×1 convolutions, in/out/emb layer numbering), and
diffusers' pipeline for the converted folder.
"""

import json

import numpy as np
import pytest
import torch
from diffusers import ConsistencyModelPipeline as DiffusersPipeline

from consistency_models import ConsistencyFunction, ConsistencyModelPipeline, Denoiser, InvalidInputError, UNetConfig
from consistency_models import preset
from consistency_models.io.openai import convert_openai_checkpoint, fitting_presets, load_openai_unet
from openai_reference_unet import OpenAIUNet, randomize_

# An additive (no scale-shift), unconditional network with three levels: the other branches
# of the key map (no label_emb, level without attention between levels with it, odd head count).
ADDITIVE = UNetConfig(
    image_size=16, in_channels=3, out_channels=3, model_channels=32, channel_mult=(1, 1, 2), num_res_blocks=1,
    attention_resolutions=(8, 4), num_head_channels=16, use_scale_shift_norm=False, num_classes=None,
)


def reference_for(cfg: UNetConfig, seed: int) -> OpenAIUNet:
    """The OpenAI-layout network with the architecture of `cfg` (attention given as downsample rates)."""
    net = OpenAIUNet(
        image_size=cfg.image_size, in_channels=cfg.in_channels, model_channels=cfg.model_channels,
        out_channels=cfg.out_channels, num_res_blocks=cfg.num_res_blocks,
        attention_resolutions=tuple(cfg.image_size // r for r in cfg.attention_resolutions),
        channel_mult=cfg.channel_mult, num_classes=cfg.num_classes, num_head_channels=cfg.num_head_channels,
        use_scale_shift_norm=cfg.use_scale_shift_norm,
    )
    return randomize_(net, torch.Generator().manual_seed(seed)).eval()


@pytest.fixture(scope="module")
def reference():
    """OpenAIUNet in the 'test' preset: 32 px, 3 ch, 32 channels, 2 res blocks, attention at ds 2,
    mult (1, 2), 1000 classes, 8-channel heads, scale-shift."""
    net = OpenAIUNet(image_size=32, in_channels=3, model_channels=32, out_channels=3, num_res_blocks=2,
                     attention_resolutions=(2,), channel_mult=(1, 2), num_classes=1000, num_head_channels=8,
                     use_scale_shift_norm=True)
    return randomize_(net, torch.Generator().manual_seed(7)).eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, reference):
    path = tmp_path_factory.mktemp("openai") / "cd_test_l2.pt"
    torch.save(reference.state_dict(), path)
    return path


def raw_outputs(net, batch, seed=0, conditional=True, size=32):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, size, size, generator=gen)
    t = torch.tensor([1095.507, 80.949, -1553.6][:batch])
    y = torch.tensor([1, 500, 999][:batch]) if conditional else None
    with torch.no_grad():
        return net(x, t, y)


def test_reference_layout_is_openai():
    """Sanity of the reference itself: OpenAI key names and fused qkv conv shapes."""
    keys = reference_for(preset("test"), 0).state_dict()
    assert keys["input_blocks.4.1.qkv.weight"].shape == (192, 64, 1, 1)
    assert "label_emb.weight" in keys and "out.2.weight" in keys and "middle_block.1.proj_out.weight" in keys


def test_load_openai_unet_matches_reference(reference, checkpoint):
    expected = raw_outputs(reference, 3)
    got = raw_outputs(load_openai_unet(checkpoint, "test"), 3)
    assert expected.std() > 0.1
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_load_additive_unconditional_matches_reference(tmp_path):
    ref = reference_for(ADDITIVE, seed=8)
    torch.save(ref.state_dict(), tmp_path / "ct_small.pt")
    ours = load_openai_unet(tmp_path / "ct_small.pt", ADDITIVE)
    assert not ours.config.use_scale_shift_norm and ours.class_embedding is None
    expected = raw_outputs(ref, 2, conditional=False, size=16)
    torch.testing.assert_close(raw_outputs(ours, 2, conditional=False, size=16), expected, rtol=0, atol=1e-5)
    assert expected.std() > 0.1


def test_converted_folder_samples_like_reference_and_diffusers(tmp_path, reference, checkpoint):
    """convert → folder; ours and diffusers' pipelines sample the same; one step equals the
    reference network under the consistency scalings."""
    out = tmp_path / "converted"
    returned = convert_openai_checkpoint(checkpoint, out, config="test", scheduler="cd")
    assert returned.parametrization == "consistency" and returned.scheduler_config.num_train_timesteps == 40
    assert isinstance(ConsistencyModelPipeline.from_pretrained(out).denoiser, ConsistencyFunction)
    index = json.loads((out / "model_index.json").read_text())
    assert "_parametrization" not in index

    ours = ConsistencyModelPipeline.from_pretrained(out)
    ours.set_progress_bar_config(disable=True)
    ref = DiffusersPipeline.from_pretrained(out)
    ref.set_progress_bar_config(disable=True)
    assert ours.scheduler.config.num_train_timesteps == ref.scheduler.config.num_train_timesteps == 40
    labels = [1, 500]
    for steps in (dict(num_inference_steps=1), dict(timesteps=[22, 0])):
        a = ours(batch_size=2, class_labels=labels, generator=torch.Generator().manual_seed(0),
                 output_type="np", **steps).images
        b = ref(batch_size=2, class_labels=labels, generator=torch.Generator().manual_seed(0),
                output_type="np", **{"num_inference_steps": None, **steps}).images
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)

    # One step by hand with the reference network: x = 80·z, f = c_skip·x + c_out·F(c_in·x, 250 ln 80, y).
    z = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    sigma, d, e = 80.0, 0.5, 0.002
    x = sigma * z
    with torch.no_grad():
        f_out = reference(x / (sigma**2 + d**2) ** 0.5, torch.full((2,), 250 * np.log(sigma)), torch.tensor(labels))
    f = d**2 / ((sigma - e) ** 2 + d**2) * x + (sigma - e) * d / (sigma**2 + d**2) ** 0.5 * f_out
    expected = (f.clamp(-1, 1) / 2 + 0.5).permute(0, 2, 3, 1).numpy()
    a = ours(batch_size=2, class_labels=labels, generator=torch.Generator().manual_seed(0), output_type="np").images
    np.testing.assert_allclose(a, expected, rtol=0, atol=1e-5)


def test_edm_file_name_gives_denoiser(tmp_path, checkpoint):
    edm = tmp_path / "edm_test_ema.pt"
    edm.write_bytes(checkpoint.read_bytes())
    out = tmp_path / "teacher"
    convert_openai_checkpoint(edm, out, config="test")
    assert json.loads((out / "model_index.json").read_text())["_parametrization"] == "edm"
    pipe = ConsistencyModelPipeline.from_pretrained(out)
    assert pipe.parametrization == "edm" and isinstance(pipe.denoiser, Denoiser)
    upper = tmp_path / "EDM_test_ema.pt"   # the prefix in any case
    upper.write_bytes(checkpoint.read_bytes())
    assert convert_openai_checkpoint(upper, tmp_path / "upper", config="test").parametrization == "edm"


def test_convert_says_when_the_file_name_chose_the_kind(tmp_path, checkpoint, capsys):
    from consistency_models.cli import main

    assert main(["convert", "openai", str(checkpoint), str(tmp_path / "a"), "--preset", "test"]) == 0
    assert capsys.readouterr().out == (f"wrote {tmp_path / 'a'} (consistency, 40-point grid; consistency chosen from "
                                       "the file name, --parametrization to choose (edm for a teacher))\n")
    assert main(["convert", "openai", str(checkpoint), str(tmp_path / "b"), "--preset", "test",
                 "--parametrization", "consistency"]) == 0
    assert capsys.readouterr().out == f"wrote {tmp_path / 'b'} (consistency, 40-point grid)\n"


def test_explicit_parametrization_and_ct_scheduler(tmp_path, checkpoint):
    parts = convert_openai_checkpoint(checkpoint, tmp_path / "ct", config="test", scheduler="ct-imagenet64",
                                      parametrization="edm")
    assert parts.parametrization == "edm" and parts.scheduler_config.num_train_timesteps == 201
    loaded = ConsistencyModelPipeline.from_pretrained(tmp_path / "ct")
    assert loaded.scheduler.config.num_train_timesteps == 201 and loaded.parametrization == "edm"


def test_convert_into_existing_empty_folder(tmp_path, checkpoint):
    (tmp_path / "empty").mkdir()
    convert_openai_checkpoint(checkpoint, tmp_path / "empty", config="test")
    assert (tmp_path / "empty" / "unet" / "diffusion_pytorch_model.safetensors").is_file()


# -- errors -------------------------------------------------------------------------------------------
def test_extra_key_is_listed(tmp_path, reference):
    state = dict(reference.state_dict())
    state["input_blocks.1.0.mystery.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "extra.pt")
    with pytest.raises(InvalidInputError, match=r"^checkpoint: .*input_blocks\.1\.0\.mystery\.weight"):
        load_openai_unet(tmp_path / "extra.pt", "test")


def test_missing_key_is_listed(tmp_path, reference):
    state = dict(reference.state_dict())
    del state["middle_block.1.qkv.bias"]
    torch.save(state, tmp_path / "missing.pt")
    with pytest.raises(InvalidInputError, match=r"^weights: .*missing keys: .*mid_block\.attentions\.0\.to_q\.bias"):
        load_openai_unet(tmp_path / "missing.pt", "test")


class Payload:
    """An arbitrary Python object: unpickling it needs code execution."""

    def __init__(self):
        self.note = "not a tensor"


@pytest.mark.parametrize("extra", [Payload(), {"nested": Payload()}], ids=["instance", "nested"])
def test_pickle_code_is_refused(tmp_path, reference, extra):
    state = dict(reference.state_dict())
    state["payload"] = extra
    torch.save(state, tmp_path / "pickled.pt")
    with pytest.raises(Exception) as info:  # the file really needs more than weights_only
        torch.load(tmp_path / "pickled.pt", weights_only=True)
    assert not isinstance(info.value, InvalidInputError)
    with pytest.raises(InvalidInputError, match=r"^weights: .*pickle code execution"):
        load_openai_unet(tmp_path / "pickled.pt", "test")


@pytest.mark.parametrize("cut", [0.5, 0.9, 0.001], ids=["half", "tail-cut", "first-bytes"])
def test_truncated_checkpoint(tmp_path, checkpoint, cut):
    data = checkpoint.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(InvalidInputError, match=r"^weights: corrupt or unreadable"):
        load_openai_unet(tmp_path / "cut.pt", "test")


@pytest.mark.parametrize("content", [b"", b"this is not a checkpoint", b"junk junk"], ids=["empty", "text", "text2"])
def test_junk_checkpoint_gives_one_line_error(tmp_path, content):
    """an empty or plain-text .pt must give InvalidInputError, not IndexError."""
    (tmp_path / "junk.pt").write_bytes(content)
    with pytest.raises(InvalidInputError, match=r"^weights: .*junk\.pt"):
        load_openai_unet(tmp_path / "junk.pt", "test")


def test_not_a_state_dict(tmp_path):
    torch.save({"step": 3, "weights": [1, 2]}, tmp_path / "other.pt")
    with pytest.raises(InvalidInputError, match="its entry 'step' is not a tensor \\(int\\)$"):
        load_openai_unet(tmp_path / "other.pt", "test")


@pytest.mark.parametrize("wrong, message", [
    ("tiny16", r"^checkpoint: keys that do not fit the 'tiny16' preset network: input_blocks\.4\.0\."),
    (preset("test", model_channels=64), r"^weights: .*does not fit the model config; wrong shape keys: .*conv_in\.weight"),
    (preset("test", num_classes=10), r"wrong shape keys: class_embedding\.weight;"),
    (preset("test", num_classes=None), r"^checkpoint: keys that do not fit .*label_emb\.weight"),
    (preset("test", use_scale_shift_norm=False), r"wrong shape keys: .*time_emb_proj\.weight"),
], ids=["tiny16", "wider", "fewer-classes", "unconditional", "additive"])
def test_wrong_preset(checkpoint, wrong, message):
    """Keys that do not fit the chosen network: listed by name, nothing loaded; the preset the
    checkpoint does fit is named (the fixture's is 'test')."""
    with pytest.raises(InvalidInputError, match=message) as refused:
        load_openai_unet(checkpoint, wrong)
    assert str(refused.value).endswith("; it fits the 'test' preset")


def test_a_checkpoint_of_no_preset_says_so(tmp_path):
    state = reference_for(preset("test", model_channels=64), 0).state_dict()
    torch.save(state, tmp_path / "other.pt")
    assert fitting_presets(state) == [] and fitting_presets(reference_for(preset("test"), 0).state_dict()) == ["test"]
    with pytest.raises(InvalidInputError, match=r"; it fits none of the presets \(imagenet64, lsun256, test, "):
        load_openai_unet(tmp_path / "other.pt", "test")


def test_missing_file(tmp_path):
    with pytest.raises(InvalidInputError, match="^checkpoint: no such file"):
        load_openai_unet(tmp_path / "nope.pt", "test")


def test_unknown_scheduler(tmp_path, checkpoint):
    with pytest.raises(InvalidInputError, match=r"^scheduler: 'ddim' is not one of"):
        convert_openai_checkpoint(checkpoint, tmp_path / "out", config="test", scheduler="ddim")
    assert not (tmp_path / "out").exists()


def test_out_dir_exists_and_not_empty(tmp_path, checkpoint):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(InvalidInputError, match=r"^out_dir: .*already exists"):
        convert_openai_checkpoint(checkpoint, out, config="test")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_out_dir_parent_missing(tmp_path, checkpoint):
    with pytest.raises(InvalidInputError, match=r"^out_dir: .*does not exist"):
        convert_openai_checkpoint(checkpoint, tmp_path / "no" / "such" / "out", config="test")
