"""ControlNet single files: the original layout (the web UI's control_*.safetensors / .pth) and diffusers' layout in
one file, read offline into the ControlNet they describe, or refused naming what does not fit."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from sdrt.demo.controlnet import controlnet_config as demo_config
from sdrt.model_source import SourceOptions, open_model
from sdrt.single_file.checkpoint import CONFIG_DIR, check_weights, empty_model
from sdrt.single_file.controlnet import controlnet_config, inferred_config, is_controlnet
from tests.single_file.original_layout import original_controlnet_weights


def _state(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "diffusion_pytorch_model.safetensors"))


def _meta_state(config) -> dict[str, torch.Tensor]:
    """The state dict of a full-size ControlNet of `config` on the meta device: names and shapes, no memory."""
    return empty_model("diffusers", "ControlNetModel", config).state_dict()


@pytest.mark.parametrize("prefix", ["control_model.", ""])
def test_the_original_layout_converts_to_the_directorys_weights(controlnet_models, tmp_path, prefix):
    """control_v11 files have no prefix, the older ones control_model.; both read back to the same weights."""
    source = controlnet_models["tiny_canny"]
    config = json.loads((source / "config.json").read_text())
    file = tmp_path / "control_tiny.safetensors"
    save_file(original_controlnet_weights(_state(source), config, prefix), str(file))
    with open_model(file, SourceOptions(config_dir=source), workdir=tmp_path) as model:
        assert model.family.name == "controlnet" and model.source_sha256 is not None
        converted = _state(model.path)
    expected = _state(source)
    assert converted.keys() == expected.keys() and all(torch.equal(converted[k], expected[k]) for k in expected)


def test_tiny_original_file_without_its_config_is_refused_naming_the_way_out(controlnet_models, tmp_path):
    source = controlnet_models["tiny_canny"]
    config = json.loads((source / "config.json").read_text())
    file = tmp_path / "control_tiny.safetensors"
    save_file(original_controlnet_weights(_state(source), config, "control_model."), str(file))
    with pytest.raises(ValueError, match=r"32-wide text states, which fits no published ControlNet layout.*--config"):
        with open_model(file, workdir=tmp_path):
            pass


def test_a_diffusers_layout_file_reads_its_config_off_its_weights(controlnet_models, tmp_path):
    source = controlnet_models["tiny_canny"]
    file = tmp_path / "cn.safetensors"
    save_file(_state(source), str(file))
    with open_model(file, workdir=tmp_path) as model:
        converted, config = _state(model.path), model.configs["controlnet"]
    expected = json.loads((source / "config.json").read_text())
    for key in ("block_out_channels", "layers_per_block", "down_block_types", "cross_attention_dim",
                "conditioning_embedding_out_channels", "use_linear_projection", "attention_head_dim"):  # fmt: skip
        assert config[key] == (list(expected[key]) if isinstance(expected[key], (list, tuple)) else expected[key]), key
    assert all(torch.equal(converted[k], v) for k, v in _state(source).items())


@pytest.mark.parametrize(
    ("published", "width", "linear"), [("controlnet_sd15", 768, False), ("controlnet_sd21", 1024, True)]
)
def test_full_size_original_files_take_their_published_config(published, width, linear):
    """Shape-only, on the meta device: an SD 1.5 / 2.1 ControlNet in the original layout fits its published config."""
    config = json.loads((CONFIG_DIR / f"{published}.json").read_text())
    state = _meta_state(config)
    checkpoint = original_controlnet_weights(state, config, "control_model.")
    assert is_controlnet(checkpoint)
    chosen = controlnet_config(checkpoint, "control_v11p_sd15_canny.pth")
    assert chosen == {**config, "global_pool_conditions": False}
    assert controlnet_config(checkpoint, "control_v11e_sd15_shuffle.safetensors")["global_pool_conditions"] is True
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    converted = convert_controlnet_checkpoint(dict(checkpoint), chosen)
    check_weights("controlnet", converted, empty_model("diffusers", "ControlNetModel", chosen))


def test_full_size_sdxl_diffusers_file_config_is_read_off_its_shapes():
    """SDXL ControlNets come in diffusers' layout: the inferred config builds the same architecture (shapes)."""
    from sdrt.demo.sdxl import CONFIGS

    config = demo_config(CONFIGS["sdxl"]["unet"], "sdxl")
    state = _meta_state(config)
    inferred = inferred_config(state)
    assert inferred["transformer_layers_per_block"] == [1, 2, 10]
    assert inferred["attention_head_dim"] == [5, 10, 20] and inferred["projection_class_embeddings_input_dim"] == 2816
    check_weights("controlnet", dict(state), empty_model("diffusers", "ControlNetModel", inferred))
