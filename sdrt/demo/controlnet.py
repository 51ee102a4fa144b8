"""Random-weight ControlNets for the demo models: variants "controlnet" (SD 1.x) and "controlnet-sdxl" (SDXL base).

A ControlNet copies its base UNet's encoder (down blocks, mid block, time and added embeddings) and adds a
conditioning-image embedding and zero convolutions after each block. Trained ones have learned those
convolutions away from zero; freshly made ones are exactly zero, so their residuals would change nothing: here
they are re-drawn at random, small enough to keep the images unsaturated, large enough to change them, so the
tests see a ControlNet's effect. Written in diffusers' layout: config.json and diffusion_pytorch_model.safetensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

# the conditioning image's embedding: conv_in, then one stride-2 conv per entry after the first (8x down)
_CONDITIONING_CHANNELS = {"tiny": (8, 8, 16, 16), "sd15": (16, 32, 96, 256), "sdxl": (16, 32, 96, 256)}
_CONDITIONING_CHANNELS["sdxl-small"] = _CONDITIONING_CHANNELS["sdxl"]
ZERO_CONV_STD = {"tiny": 0.3, "sd15": 0.02, "sdxl": 0.02, "sdxl-small": 0.02}  # re-drawn zero convolutions' std

_VARIANTS = {"controlnet": "sd1", "controlnet-sdxl": "sdxl"}  # variant -> the base variant it fits
VARIANTS = tuple(_VARIANTS)

_UNET_KEYS = (  # the base UNet's settings a ControlNet shares (diffusers' ControlNetModel.from_unet copies these)
    "in_channels",
    "flip_sin_to_cos",
    "freq_shift",
    "down_block_types",
    "only_cross_attention",
    "block_out_channels",
    "layers_per_block",
    "downsample_padding",
    "mid_block_scale_factor",
    "act_fn",
    "norm_num_groups",
    "norm_eps",
    "cross_attention_dim",
    "transformer_layers_per_block",
    "encoder_hid_dim",
    "encoder_hid_dim_type",
    "attention_head_dim",
    "num_attention_heads",
    "use_linear_projection",
    "class_embed_type",
    "addition_embed_type",
    "addition_time_embed_dim",
    "num_class_embeds",
    "upcast_attention",
    "resnet_time_scale_shift",
    "projection_class_embeddings_input_dim",
)


def controlnet_config(unet_config: dict[str, Any], preset: str) -> dict[str, Any]:
    """ControlNetModel arguments for a ControlNet that fits a UNet with this config."""
    config = {k: unet_config[k] for k in _UNET_KEYS if k in unet_config}
    config["in_channels"] = 4  # a ControlNet reads the latents, even beside an inpainting UNet
    config["conditioning_embedding_out_channels"] = _CONDITIONING_CHANNELS[preset]
    return config


def make_controlnet(unet_config: dict[str, Any], preset: str, seed: int):
    """A random-weight ControlNetModel for a UNet config, its zero convolutions re-drawn (see the module doc)."""
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    controlnet = ControlNetModel(**controlnet_config(unet_config, preset))
    generator = torch.Generator().manual_seed(seed + 1)
    zero_convs = [controlnet.controlnet_cond_embedding.conv_out, *controlnet.controlnet_down_blocks]
    zero_convs.append(controlnet.controlnet_mid_block)
    with torch.no_grad():
        for conv in zero_convs:
            conv.weight.copy_(ZERO_CONV_STD[preset] * torch.randn(conv.weight.shape, generator=generator))
            conv.bias.copy_(0.1 * ZERO_CONV_STD[preset] * torch.randn(conv.bias.shape, generator=generator))
    return controlnet


def _base_unet_config(base: str, preset: str) -> dict[str, Any]:
    if base == "sd1":
        from sdrt.demo import sd

        return dict(sd._unet_config(sd.SIZES[preset], sd._FAMILIES["sd1"]))
    from sdrt.demo import sdxl

    return dict(sdxl.CONFIGS[preset]["unet"])


def write(root: Path, seed: int, preset: str, variant: str, device: str | None = None) -> str:
    """Write a ControlNet for the demo base model of `preset` sizes into `root`; describe it."""
    base = _VARIANTS[variant]
    with torch.device(device or "cpu"):
        controlnet = make_controlnet(_base_unet_config(base, preset), preset, seed + 7)
    controlnet.to("cpu").save_pretrained(root, safe_serialization=True)
    family = "Stable Diffusion 1.x" if base == "sd1" else "SDXL base"
    return f"a random-weight ControlNet (diffusers layout) for the {preset} {family} demo model"
