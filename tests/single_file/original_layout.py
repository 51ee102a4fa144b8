"""Test helper: a diffusers model's weights in the original single-file layout (LDM / SGM key names).

The reverse of diffusers' single-file conversion, written from the layouts' key names; `check_round_trip`
runs diffusers' own forward conversion on the result, so a wrong reverse name fails the tests, not sdrt.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
           "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}  # fmt: skip
_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def _resnet(rest: str) -> str:
    layer, _, param = rest.partition(".")
    return f"{_RESNET[layer]}.{param}"


def unet_key(key: str, config: Mapping[str, Any]) -> str:
    """A diffusers UNet2DConditionModel key's name in the LDM UNet (without model.diffusion_model.)."""
    per = int(config["layers_per_block"]) + 1
    if key == "class_embedding.weight":  # the x4 upscaler's noise-level embedding (num_classes)
        return "label_emb.weight"
    for new, old in _UNET_TOP.items():
        if key.startswith(new + "."):
            return old + key[len(new) :]
    if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        block, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = 1 + block * per + j
        return f"input_blocks.{index}.0.{_resnet(rest)}" if kind == "resnets" else f"input_blocks.{index}.1.{rest}"
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"input_blocks.{(int(m[1]) + 1) * per}.0.op.{m[2]}"
    if m := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", key):
        return f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"
    if m := re.match(r"mid_block\.attentions\.0\.(.*)", key):
        return f"middle_block.1.{m[1]}"
    up_types = config["up_block_types"]
    if m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        block, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = block * per + j
        return f"output_blocks.{index}.0.{_resnet(rest)}" if kind == "resnets" else f"output_blocks.{index}.1.{rest}"
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
        block = int(m[1])
        slot = 2 if up_types[block].startswith("CrossAttn") else 1
        return f"output_blocks.{block * per + per - 1}.{slot}.conv.{m[2]}"
    raise KeyError(f"no LDM name for UNet key {key}")


def vae_key(key: str, config: Mapping[str, Any]) -> tuple[str, bool]:
    """A diffusers AutoencoderKL key's LDM name, and whether the weight is a 1x1 conv there (attention)."""
    n = len(config["up_block_types"])
    key = key.replace("conv_shortcut", "nin_shortcut")
    if m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(\w+?)(?:\.0)?\.(weight|bias)", key):
        names = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}
        return f"{m[1]}.mid.attn_1.{names[m[2]]}.{m[3]}", m[2] != "group_norm" and m[3] == "weight"
    if m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}", False
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
        return f"encoder.down.{m[1]}.block.{m[2]}.{m[3]}", False
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}", False
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
        return f"decoder.up.{n - 1 - int(m[1])}.block.{m[2]}.{m[3]}", False
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
        return f"decoder.up.{n - 1 - int(m[1])}.upsample.conv.{m[2]}", False
    return key.replace("conv_norm_out", "norm_out"), False


def original_vae_weights(state: Mapping[str, torch.Tensor], config: Mapping[str, Any], prefix: str = "") -> dict:
    """An AutoencoderKL's weights in the original layout, as standalone VAE files hold them (no prefix)."""
    out = {}
    for key, value in state.items():
        name, conv = vae_key(key, config)
        out[prefix + name] = value[:, :, None, None] if conv else value
    return out


def openclip_weights(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """A transformers CLIP text model's weights in OpenCLIP's layout (q, k, v fused into in_proj), under `prefix`."""
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    names = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
             "self_attn.out_proj": "attn.out_proj"}  # fmt: skip
    for key, value in state.items():
        key = key.removeprefix("text_model.")
        if key == "embeddings.token_embedding.weight":
            out[prefix + "token_embedding.weight"] = value
        elif key == "embeddings.position_embedding.weight":
            out[prefix + "positional_embedding"] = value
        elif key.startswith("final_layer_norm."):
            out[prefix + "ln_final." + key.split(".")[-1]] = value
        elif key == "text_projection.weight":
            out[prefix + "text_projection"] = value.T.contiguous()
        elif m := re.match(r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", key):
            fused.setdefault(f"{prefix}transformer.resblocks.{m[1]}.attn.in_proj_{m[3]}", {})[m[2]] = value
        elif m := re.match(r"encoder\.layers\.(\d+)\.(.*)\.(weight|bias)", key):
            out[f"{prefix}transformer.resblocks.{m[1]}.{names[m[2]]}.{m[3]}"] = value
        elif not key.endswith("position_ids"):
            raise KeyError(f"no OpenCLIP name for {key}")
    for key, parts in fused.items():
        out[key] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def original_weights(parts: Mapping[str, tuple[Mapping[str, torch.Tensor], Mapping[str, Any]]], family: str) -> dict:
    """{part: (diffusers state dict, config)} -> one state dict in the original layout of `family`'s checkpoints."""
    out: dict[str, torch.Tensor] = {}
    unet, unet_config = parts["unet"]
    for key, value in unet.items():
        out["model.diffusion_model." + unet_key(key, unet_config)] = value
    out.update(original_vae_weights(*parts["vae"], prefix="first_stage_model."))
    clip_prefix = {"sd1": "cond_stage_model.transformer.", "sdxl": "conditioner.embedders.0.transformer."}
    if family in clip_prefix:
        text, _ = parts["text_encoder"]
        for key, value in text.items():
            out[clip_prefix[family] + "text_model." + key.removeprefix("text_model.")] = value
        # real SD 1.x files carry the position ids buffer; the conversion must ignore it
        out[clip_prefix[family] + "text_model.embeddings.position_ids"] = torch.arange(77)[None]
    if family == "sd2":
        out.update(openclip_weights(parts["text_encoder"][0], "cond_stage_model.model."))
    if family in ("sdxl", "sdxl_refiner"):
        prefix = "conditioner.embedders.1.model." if family == "sdxl" else "conditioner.embedders.0.model."
        out.update(openclip_weights(parts["text_encoder_2"][0], prefix))
    return out


def diffusers_parts(model_dir: Path) -> dict[str, tuple[dict[str, torch.Tensor], dict[str, Any]]]:
    """Every model part's state dict and config, read from a diffusers directory."""
    import json

    from safetensors.torch import load_file

    parts = {}
    for name in ("text_encoder", "text_encoder_2", "unet", "vae"):
        folder = model_dir / name
        if folder.is_dir():
            weights = next(f for f in folder.glob("*.safetensors"))
            parts[name] = (load_file(str(weights)), json.loads((folder / "config.json").read_text()))
    return parts


def write_checkpoint(model_dir: Path, path: Path, family: str, dtype: torch.dtype | None = None) -> Path:
    """A diffusers directory's weights saved as one original-layout checkpoint (.safetensors or a .ckpt pickle)."""
    from safetensors.torch import save_file

    state = original_weights(diffusers_parts(model_dir), family)
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"state_dict": state, "global_step": 1}, path)
    return path


def controlnet_key(key: str, config: Mapping[str, Any]) -> str:
    """A diffusers ControlNetModel key's name in the original ControlNet layout (without control_model.)."""
    if key.startswith("controlnet_cond_embedding."):
        rest = key[len("controlnet_cond_embedding.") :]
        if rest.startswith("conv_in."):
            return "input_hint_block.0." + rest[len("conv_in.") :]
        if rest.startswith("conv_out."):
            return "input_hint_block.14." + rest[len("conv_out.") :]
        m = re.match(r"blocks\.(\d+)\.(.*)", rest)
        assert m, key
        return f"input_hint_block.{2 * (int(m[1]) + 1)}.{m[2]}"
    if m := re.match(r"controlnet_down_blocks\.(\d+)\.(.*)", key):
        return f"zero_convs.{m[1]}.0.{m[2]}"
    if key.startswith("controlnet_mid_block."):
        return "middle_block_out.0." + key[len("controlnet_mid_block.") :]
    return unet_key(key, config)


def original_controlnet_weights(state: Mapping[str, torch.Tensor], config: Mapping[str, Any], prefix: str) -> dict:
    """A ControlNet's weights in the original layout (`prefix`: "control_model." as the web UI's files have)."""
    return {prefix + controlnet_key(k, config): v for k, v in state.items()}
