"""ControlNet single files as the web UI and model sites distribute them, read as data into a diffusers ControlNet
directory (config.json and diffusion_pytorch_model.safetensors).

Two layouts: the original ControlNet one (`control_v11p_sd15_canny.pth` / `.safetensors`: `input_blocks`,
`zero_convs`, `input_hint_block`, with or without a `control_model.` prefix), renamed by diffusers' own
`convert_controlnet_checkpoint` with the published config of its family (SD 1.5 or SD 2.1, told apart by the
width of its cross-attention and its projections; a "shuffle" file pools its residuals, as the extension decides
by the name); and diffusers' own layout in one file (SDXL ControlNets are distributed so), whose config is
read off its weights' names and shapes. `config_dir` (a diffusers ControlNet directory) overrides both. Every
weight must fit the architecture key for key and shape for shape, or nothing is written.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from sdrt.files import read_json_object
from sdrt.single_file.checkpoint import CONFIG_DIR, check_weights, empty_model

WEIGHTS = "diffusion_pytorch_model.safetensors"
_LDM_KEYS = ("control_model.time_embed.0.weight", "time_embed.0.weight")
_DIFFUSERS_KEY = "controlnet_cond_embedding.conv_in.weight"
_HINT_KEY = "input_hint_block.0.weight"


def is_controlnet(checkpoint: Mapping[str, torch.Tensor]) -> bool:
    """True for a ControlNet's weights in either layout."""
    if _DIFFUSERS_KEY in checkpoint:
        return True
    return any(f"{prefix}{_HINT_KEY}" in checkpoint for prefix in ("control_model.", ""))


def controlnet_config(checkpoint: Mapping[str, torch.Tensor], name: str, config_dir: Path | None = None) -> dict:
    """The diffusers ControlNetModel config a ControlNet file is read with."""
    if config_dir is not None:
        config = read_json_object(Path(config_dir) / "config.json")
        if config.get("_class_name") != "ControlNetModel":
            raise ValueError(f"--config {config_dir} is not a diffusers ControlNet directory (config.json's class)")
        return config
    if _DIFFUSERS_KEY in checkpoint:
        return inferred_config(checkpoint)
    prefix = "control_model." if _LDM_KEYS[0] in checkpoint else ""
    key = f"{prefix}input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    if key not in checkpoint:
        raise ValueError(f"its first attention ({key}) is missing: not an SD 1.x or 2.x ControlNet")
    width = int(checkpoint[key].shape[1])
    published = {768: "controlnet_sd15", 1024: "controlnet_sd21"}
    if width not in published:
        raise ValueError(
            f"its cross-attention reads {width}-wide text states, which fits no published ControlNet layout "
            "(SD 1.x: 768, SD 2.x: 1024); pass --config DIR (a diffusers ControlNet directory of its architecture)"
        )
    config = read_json_object(CONFIG_DIR / f"{published[width]}.json")
    config["global_pool_conditions"] = "shuffle" in name.lower()  # the extension decides by the file's name
    return config


def inferred_config(checkpoint: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """A diffusers-layout ControlNet's config from its weights' names and shapes.

    Head counts are not in the weights: SD 1.x-style ControlNets (convolutional projections) have 8 heads per
    level, the linear-projection ones (SD 2.x, SDXL) heads of 64 channels, as the published architectures do.
    """
    levels = sorted(
        {int(m.group(1)) for k in checkpoint if (m := re.match(r"down_blocks\.(\d+)\.resnets\.0\.conv1\.weight$", k))}
    )
    if not levels:
        raise ValueError("it has no down_blocks.N.resnets.0.conv1.weight: not a diffusers-layout ControlNet")
    channels = [int(checkpoint[f"down_blocks.{i}.resnets.0.conv1.weight"].shape[0]) for i in levels]
    layers = len({k.split(".")[3] for k in checkpoint if k.startswith("down_blocks.0.resnets.")})
    attention = [any(k.startswith(f"down_blocks.{i}.attentions.") for k in checkpoint) for i in levels]
    depth = [
        len({k.split(".")[5] for k in checkpoint if k.startswith(f"down_blocks.{i}.attentions.0.transformer_blocks.")})
        for i in levels
    ]
    first = next((i for i, a in enumerate(attention) if a), None)
    if first is None:
        raise ValueError("it has no cross-attention: not a text-conditioned ControlNet")
    to_k = checkpoint[f"down_blocks.{first}.attentions.0.transformer_blocks.0.attn2.to_k.weight"]
    linear = checkpoint[f"down_blocks.{first}.attentions.0.proj_in.weight"].dim() == 2
    embedding = [int(checkpoint[_DIFFUSERS_KEY].shape[0])]
    embedding += [
        int(checkpoint[f"controlnet_cond_embedding.blocks.{2 * j + 1}.weight"].shape[0])
        for j in range(
            len({k.split(".")[2] for k in checkpoint if k.startswith("controlnet_cond_embedding.blocks.")}) // 2
        )
    ]
    config: dict[str, Any] = {
        "_class_name": "ControlNetModel",
        "in_channels": int(checkpoint["conv_in.weight"].shape[1]),
        "conditioning_channels": int(checkpoint[_DIFFUSERS_KEY].shape[1]),
        "block_out_channels": channels,
        "layers_per_block": layers,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        "mid_block_type": (
            "UNetMidBlock2DCrossAttn"
            if any(k.startswith("mid_block.attentions.") for k in checkpoint)
            else "UNetMidBlock2D"
        ),
        "transformer_layers_per_block": [max(d, 1) for d in depth],
        "cross_attention_dim": int(to_k.shape[1]),
        "use_linear_projection": linear,
        "attention_head_dim": [max(c // 64, 1) for c in channels] if linear else 8,
        "conditioning_embedding_out_channels": embedding,
    }
    if "add_embedding.linear_1.weight" in checkpoint:  # SDXL's pooled text and time ids (256 per id, as published)
        config |= {
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 256,
            "projection_class_embeddings_input_dim": int(checkpoint["add_embedding.linear_1.weight"].shape[1]),
        }
    return config


def write_controlnet_dir(
    checkpoint: Mapping[str, torch.Tensor], out: Path, name: str, config_dir: Path | None = None
) -> None:
    """Convert and check a ControlNet file's weights and write them as a diffusers directory at `out`."""
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint
    from safetensors.torch import save_file

    from sdrt.single_file.checkpoint import _storable

    config = controlnet_config(checkpoint, name, config_dir)
    weights = convert_controlnet_checkpoint(dict(checkpoint), config)
    try:
        weights = check_weights("controlnet", weights, empty_model("diffusers", "ControlNetModel", config))
    except ValueError as exc:
        raise ValueError(
            f"{exc}. If it is another architecture, pass --config DIR (a diffusers ControlNet directory)"
        ) from exc
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(_storable(weights), str(out / WEIGHTS), metadata={"format": "pt"})
