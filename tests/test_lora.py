"""Fusing LoRAs into the torch modules: W' = W + scale * alpha / rank * up @ down, base weights restored exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sdrt.lora import LoraFuser, lora_layer_count
from sdrt.model_dir import ModelDir

RANK = 4
# (kohya key, module path in the UNet or text encoder, conv kernel or None); the text encoder's full
# attention set, as trainers write it (diffusers' format detection needs more than a lone q_proj)
KOHYA_LAYERS = [
    (
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
        "unet",
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
        None,
    ),
    (
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k",
        "unet",
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
        None,
    ),
    (
        "lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_ff_net_2",
        "unet",
        "up_blocks.1.attentions.0.transformer_blocks.0.ff.net.2",
        None,
    ),
    ("lora_unet_down_blocks_0_resnets_0_conv1", "unet", "down_blocks.0.resnets.0.conv1", 3),
    ("lora_te_text_model_encoder_layers_0_self_attn_q_proj", "text_encoder", "encoder.layers.0.self_attn.q_proj", None),
    ("lora_te_text_model_encoder_layers_0_self_attn_k_proj", "text_encoder", "encoder.layers.0.self_attn.k_proj", None),
    ("lora_te_text_model_encoder_layers_0_self_attn_v_proj", "text_encoder", "encoder.layers.0.self_attn.v_proj", None),
    (
        "lora_te_text_model_encoder_layers_0_self_attn_out_proj",
        "text_encoder",
        "encoder.layers.0.self_attn.out_proj",
        None,
    ),
    ("lora_te_text_model_encoder_layers_1_mlp_fc1", "text_encoder", "encoder.layers.1.mlp.fc1", None),
]


@pytest.fixture(scope="module")
def modules(demo_model):
    model = ModelDir.open(demo_model)
    return {"text_encoder": model.load_part("text_encoder"), "unet": model.load_part("unet")}


def lora_factors(modules, seed: int, layers=KOHYA_LAYERS) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """Random (down, up, alpha) per kohya key, shaped for the demo model's layers."""
    g = torch.Generator().manual_seed(seed)
    factors = {}
    for key, part, path, kernel in layers:
        weight = modules[part].get_submodule(path).weight
        out_f, in_f = weight.shape[:2]
        down_shape = (RANK, in_f, kernel, kernel) if kernel else (RANK, in_f)
        up_shape = (out_f, RANK, 1, 1) if kernel else (out_f, RANK)
        factors[key] = (torch.randn(down_shape, generator=g), torch.randn(up_shape, generator=g), 1.0 + seed)
    return factors


def write_kohya_lora(path: Path, factors) -> Path:
    """A LoRA in kohya's format: lora_down, lora_up and alpha per layer."""
    tensors = {}
    for key, (down, up, alpha) in factors.items():
        tensors[f"{key}.lora_down.weight"] = down
        tensors[f"{key}.lora_up.weight"] = up
        tensors[f"{key}.alpha"] = torch.tensor(alpha)
    save_file(tensors, str(path))
    return path


def expected_delta(down: torch.Tensor, up: torch.Tensor, factor: float) -> torch.Tensor:
    """factor * up @ down; for a conv, the 1x1 up applied after the k x k down."""
    if down.dim() == 4:
        return factor * torch.einsum("or,rikl->oikl", up[:, :, 0, 0], down)
    return factor * up @ down


def test_kohya_lora_fuses_the_standard_formula_and_restores_the_base(modules, tmp_path):
    factors = lora_factors(modules, seed=1)
    path = write_kohya_lora(tmp_path / "a.safetensors", factors)
    fuser = LoraFuser(modules)
    base = {part: {n: p.detach().clone() for n, p in m.named_parameters()} for part, m in modules.items()}
    scale = 0.7
    with fuser.fused(path, scale=scale) as changed:
        adapted = set()
        for key, part, layer, _ in KOHYA_LAYERS:
            down, up, alpha = factors[key]
            weight = modules[part].get_submodule(layer).weight
            want = base[part][f"{layer}.weight"] + expected_delta(down, up, scale * alpha / RANK)
            torch.testing.assert_close(weight, want, rtol=1e-5, atol=1e-5)
            adapted.add((part, f"{layer}.weight"))
        assert {(part, n) for part, names in changed.items() for n in names} == adapted
        assert all(type(m).__name__ != "LoraLayer" for m in modules["unet"].modules())
    for part, module in modules.items():  # exactly the base again, and no peft wrappers left
        for name, p in module.named_parameters():
            assert torch.equal(p, base[part][name]), name
        assert not any("lora" in n for n, _ in module.named_parameters())


def test_diffusers_peft_format(modules, tmp_path):
    """unet./text_encoder. keys with lora_A/lora_B and no alpha (alpha = rank)."""
    g = torch.Generator().manual_seed(5)
    to_q = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    weight = modules["unet"].get_submodule(to_q).weight
    down, up = torch.randn(RANK, weight.shape[1], generator=g), torch.randn(weight.shape[0], RANK, generator=g)
    path = tmp_path / "peft.safetensors"
    save_file({f"unet.{to_q}.lora_A.weight": down, f"unet.{to_q}.lora_B.weight": up}, str(path))
    base = weight.detach().clone()
    with LoraFuser(modules).fused(path, scale=1.0) as changed:
        torch.testing.assert_close(modules["unet"].get_submodule(to_q).weight, base + up @ down, rtol=1e-5, atol=1e-5)
        assert changed == {"text_encoder": set(), "unet": {f"{to_q}.weight"}}
    assert torch.equal(modules["unet"].get_submodule(to_q).weight, base)


def test_a_b_a_gives_a_exactly(modules, tmp_path):
    a = write_kohya_lora(tmp_path / "a.safetensors", lora_factors(modules, seed=1))
    b = write_kohya_lora(tmp_path / "b.safetensors", lora_factors(modules, seed=2))
    fuser = LoraFuser(modules)

    def snapshot(path):
        with fuser.fused(path):
            return {(part, n): p.detach().clone() for part, m in modules.items() for n, p in m.named_parameters()}

    first, other, again = snapshot(a), snapshot(b), snapshot(a)
    assert any(not torch.equal(first[k], other[k]) for k in first)
    assert all(torch.equal(first[k], again[k]) for k in first)


def test_lora_for_another_model_is_refused(modules, tmp_path):
    layers = [
        *KOHYA_LAYERS[:2],
        ("lora_unet_mid_block_attentions_7_proj_in", "unet", "down_blocks.0.attentions.0.proj_in", None),
    ]
    path = write_kohya_lora(tmp_path / "other.safetensors", lora_factors(modules, seed=3, layers=layers))
    base = {n: p.detach().clone() for n, p in modules["unet"].named_parameters()}
    fuser = LoraFuser(modules)
    with pytest.raises(ValueError, match="adapts 3 layers of the unet, but only 2 match a layer of this model"):
        with fuser.fused(path):
            pass
    assert all(torch.equal(p, base[n]) for n, p in modules["unet"].named_parameters())
    assert not any("lora" in n for n, _ in modules["unet"].named_parameters())


def test_unreadable_files_are_refused(modules, tmp_path):
    fuser = LoraFuser(modules)
    pickled = tmp_path / "lora.ckpt"
    pickled.write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="not a .safetensors file; sdrt does not load pickled weights"):
        with fuser.fused(pickled):
            pass
    empty = tmp_path / "empty.safetensors"
    save_file({"something.weight": torch.zeros(2)}, str(empty))
    with pytest.raises(ValueError, match="holds no LoRA layers"):
        with fuser.fused(empty):
            pass
    with pytest.raises(ValueError, match="does not exist"):
        with fuser.fused(tmp_path / "missing.safetensors"):
            pass


def test_layer_count_reads_every_naming():
    keys = {
        "lora_unet_a.lora_down.weight": 0,
        "lora_unet_a.lora_up.weight": 0,
        "unet.b.lora_A.weight": 0,
        "unet.b.lora_B.weight": 0,
        "unet.c.processor.to_q_lora.down.weight": 0,
        "text_encoder.d.lora_linear_layer.down.weight": 0,
        "lora_unet_a.alpha": 0,
    }
    assert lora_layer_count(keys) == 4
