"""The demo model: SD layout in three variants, a working CLIP BPE tokenizer, deterministic for a seed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sdrt.demo import resolve_variant, write_demo_model
from sdrt.demo.sd import _FAMILIES, SIZES, _unet_config
from sdrt.hashing import files_sha256
from sdrt.model_dir import ModelDir


def test_deterministic_for_a_seed(demo_model, tmp_path):
    again = write_demo_model(tmp_path / "again", seed=0)
    other = write_demo_model(tmp_path / "other", seed=1)
    files = ModelDir.open(demo_model).weight_files()
    assert files_sha256(demo_model, files) == files_sha256(again, files)
    assert files_sha256(demo_model, files) != files_sha256(other, files)


def test_layout_and_architecture(demo_model):
    model = ModelDir.open(demo_model)
    assert model.family.name == "sd1"
    unet, vae = model.configs["unet"], model.configs["vae"]
    assert len(unet["down_block_types"]) == 4 and unet["down_block_types"][-1] == "DownBlock2D"
    assert 2 ** (len(vae["block_out_channels"]) - 1) == 8  # SD's 8x latent downsampling
    assert model.configs["text_encoder"]["hidden_act"] == "quick_gelu"


def test_tokenizer_is_clip_bpe(demo_model):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(demo_model / "tokenizer", local_files_only=True)
    ids = tok("A Photo of an astronaut, zebra!").input_ids
    assert tok.convert_ids_to_tokens(ids) == [
        "<|startoftext|>",
        "a</w>",
        "photo</w>",
        "of</w>",
        "an</w>",
        "astronaut</w>",
        ",</w>",
        "z",
        "e",
        "b",
        "r",
        "a</w>",
        "!</w>",
        "<|endoftext|>",
    ]  # learned merges for corpus words, lower-cased; an unseen word falls back to byte tokens
    padded = tok("a cat", padding="max_length", max_length=77).input_ids
    assert len(padded) == 77


def test_unknown_preset(tmp_path):
    with pytest.raises(ValueError, match="preset 'sd9' is not one of tiny, sd15, sd21, sdxl"):
        write_demo_model(tmp_path / "m", preset="sd9")
    assert not (tmp_path / "m").exists()


# --- variants -----------------------------------------------------------------------------------------------------


def _config(model: Path, part: str) -> dict:
    name = (
        "model_index.json"
        if part == "index"
        else f"{part}/{'scheduler_config' if part == 'scheduler' else 'config'}.json"
    )
    return json.loads((model / name).read_text())


def test_sd1_variant_is_the_default(demo_model, tmp_path):
    explicit = write_demo_model(tmp_path / "sd1", variant="sd1")
    files = sorted(str(p.relative_to(demo_model)) for p in demo_model.rglob("*") if p.is_file())
    assert files == sorted(str(p.relative_to(explicit)) for p in explicit.rglob("*") if p.is_file())
    assert files_sha256(demo_model, files) == files_sha256(explicit, files)


def test_sd2_configs(sd2_model):
    from transformers import CLIPTokenizer

    assert _config(sd2_model, "index")["_class_name"] == "StableDiffusionPipeline"
    assert _config(sd2_model, "index")["scheduler"] == ["diffusers", "DDIMScheduler"]
    assert _config(sd2_model, "text_encoder")["hidden_act"] == "gelu"
    unet = _config(sd2_model, "unet")
    assert unet["use_linear_projection"] is True and unet["upcast_attention"] is True
    assert unet["attention_head_dim"] == [4, 4, 8, 8]  # per-block head counts, 8 channels each at tiny widths
    assert unet["in_channels"] == 4
    scheduler = _config(sd2_model, "scheduler")
    assert scheduler["_class_name"] == "DDIMScheduler"
    assert {k: scheduler[k] for k in SD21_SCHEDULER} == SD21_SCHEDULER

    tok = CLIPTokenizer.from_pretrained(sd2_model / "tokenizer", local_files_only=True)
    assert tok.pad_token == "!" and tok.pad_token_id == tok.get_vocab()["!"] != tok.eos_token_id
    ids = tok("a cat", padding="max_length", max_length=77).input_ids
    assert ids[3] == tok.eos_token_id and set(ids[4:]) == {tok.pad_token_id}  # SD 2 pads with "!" after one end token


# the published stabilityai/stable-diffusion-2-1 scheduler settings
SD21_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "v_prediction",
    "timestep_spacing": "leading",
}


def test_sd21_preset_has_published_sizes():
    preset, variant = SIZES["sd21"], _FAMILIES["sd2"]
    unet = _unet_config(preset, variant)
    assert unet["attention_head_dim"] == (5, 10, 20, 20)
    assert unet["cross_attention_dim"] == 1024 and unet["sample_size"] == 96
    assert unet["block_out_channels"] == (320, 640, 1280, 1280) and unet["layers_per_block"] == 2
    assert preset.text == {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 23,
        "num_attention_heads": 16,
    }
    assert preset.vae_channels == SIZES["sd15"].vae_channels and preset.vae_layers == SIZES["sd15"].vae_layers


# Both variants run in diffusers' own pipelines, with images that are not flat, in the parity tests
# (tests/runtime/test_sd2.py, test_inpaint.py), which compare sdrt against exactly those runs.


def test_inpaint_configs(inpaint_model):
    index = _config(inpaint_model, "index")
    assert index["_class_name"] == "StableDiffusionInpaintPipeline"
    unet = _config(inpaint_model, "unet")
    assert unet["in_channels"] == 9 and unet["out_channels"] == 4  # latent + mask + masked-image latent
    assert _config(inpaint_model, "text_encoder")["hidden_act"] == "quick_gelu"
    assert _config(inpaint_model, "scheduler")["prediction_type"] == "epsilon"


def test_unknown_variant(tmp_path):
    with pytest.raises(ValueError, match="variant 'sd3' is not one of sd1, sd2, inpaint, sdxl, sdxl-refiner"):
        write_demo_model(tmp_path / "m", variant="sd3")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    ("preset", "variant", "fits"),
    [
        ("sd15", "sd2", "tiny, sd21"),
        ("sd21", "sd1", "tiny, sd15"),
        ("sd21", "inpaint", "tiny, sd15"),
        ("sd15", "sdxl", "tiny, sdxl"),
        ("sdxl", "sdxl-inpaint", "tiny"),
    ],
)
def test_variant_must_come_in_the_preset(tmp_path, preset, variant, fits):
    with pytest.raises(ValueError, match=f"variant '{variant}' does not come in preset '{preset}'.*presets {fits}"):
        write_demo_model(tmp_path / "m", preset=preset, variant=variant)
    assert not (tmp_path / "m").exists()


def test_default_variant_follows_the_preset():
    assert resolve_variant("tiny", None) == "sd1"
    assert resolve_variant("sd15", None) == "sd1"
    assert resolve_variant("sd21", None) == "sd2"
    assert resolve_variant("tiny", "inpaint") == "inpaint"
    assert resolve_variant("sdxl", None) == "sdxl"
