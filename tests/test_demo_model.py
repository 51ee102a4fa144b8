"""The demo model: SD 1.x layout, a working CLIP BPE tokenizer, deterministic for a seed."""

from __future__ import annotations

from sdrt.demo_model import write_demo_model
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
    assert model.family == "sd1"
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
    import pytest

    with pytest.raises(ValueError, match="preset 'sdxl' is not one of tiny, sd15"):
        write_demo_model(tmp_path / "m", preset="sdxl")
    assert not (tmp_path / "m").exists()
