"""Random-weight SD 1.x / 2.x models: the demo variants "sd1", "sd2" and "inpaint".

The topology is SD's (four UNet levels with cross-attention in the first three, a four-level VAE with 8x
downsampling, a CLIP text encoder, 77 tokens). The variant picks the family: "sd1" (CLIP with quick-GELU,
epsilon prediction), "sd2" (SD 2.x 768: GELU text encoder, linear-projection UNet with upcast attention,
v-prediction) or "inpaint" (SD 1.x with a 9-channel UNet input). Preset "tiny" has tiny widths; presets "sd15"
and "sd21" have the published SD 1.5 and SD 2.1 sizes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sdrt.demo.tokenizer import demo_tokenizer


@dataclass(frozen=True)
class Preset:
    """Widths and depths of one demo architecture; the variant decides everything else."""

    text: dict[str, int]  # CLIPTextConfig sizes
    unet_channels: tuple[int, ...]  # UNet block_out_channels
    unet_layers: int  # UNet layers_per_block
    vae_channels: tuple[int, ...]  # VAE block_out_channels
    vae_layers: int  # VAE layers_per_block
    head_width: int  # channels per attention head in SD 2.x-style UNets (SD 2.1: 64)
    sample_size: int  # UNet sample_size: default latent size (64 -> 512 px, 96 -> 768 px)

    def __post_init__(self) -> None:
        if any(c % self.head_width for c in self.unet_channels):
            raise ValueError(f"head_width {self.head_width} does not divide the UNet widths {self.unet_channels}")


SIZES = {
    # tiny: seconds to write, export and run on a 2-core CPU
    "tiny": Preset(
        text={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4},
        unet_channels=(32, 32, 64, 64),
        unet_layers=1,
        vae_channels=(32, 32, 64, 64),
        vae_layers=1,
        head_width=8,
        sample_size=64,
    ),
    # sd15: the published Stable Diffusion 1.5 sizes (860M-parameter UNet), so it times like the real model
    "sd15": Preset(
        text={"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12},
        unet_channels=(320, 640, 1280, 1280),
        unet_layers=2,
        vae_channels=(128, 256, 512, 512),
        vae_layers=2,
        head_width=64,
        sample_size=64,
    ),
    # sd21: the published Stable Diffusion 2.1 (768) sizes; SD 2 uses 23 of OpenCLIP ViT-H's 24 text layers
    "sd21": Preset(
        text={"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23, "num_attention_heads": 16},
        unet_channels=(320, 640, 1280, 1280),
        unet_layers=2,
        vae_channels=(128, 256, 512, 512),
        vae_layers=2,
        head_width=64,
        sample_size=96,
    ),
}


@dataclass(frozen=True)
class Variant:
    """What one model family changes on top of a preset's sizes."""

    pipeline: str  # model_index.json _class_name
    hidden_act: str  # text encoder activation: SD 1.x's CLIP uses quick_gelu, SD 2.x's OpenCLIP gelu
    pad_token: str  # tokenizer pad token: SD 1.x pads with the end token, SD 2.x with "!"
    unet_in_channels: int  # 4 latent channels; inpainting adds 1 mask + 4 masked-image latent channels
    sd2_attention: bool  # SD 2.x UNet: per-block head counts of head_width channels, linear projections, upcast
    prediction_type: str  # what the UNet predicts: "epsilon" (SD 1.x) or "v_prediction" (SD 2.x 768)
    class_labels: int = 0  # width of the UNet's projection class embedding (unCLIP's image embedding); 0: none

    def __post_init__(self) -> None:
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type {self.prediction_type!r} is not one of epsilon, v_prediction")


_FAMILIES = {
    "sd1": Variant(
        pipeline="StableDiffusionPipeline",
        hidden_act="quick_gelu",
        pad_token="<|endoftext|>",
        unet_in_channels=4,
        sd2_attention=False,
        prediction_type="epsilon",
    ),
    "sd2": Variant(
        pipeline="StableDiffusionPipeline",
        hidden_act="gelu",
        pad_token="!",
        unet_in_channels=4,
        sd2_attention=True,
        prediction_type="v_prediction",
    ),
    "inpaint": Variant(
        pipeline="StableDiffusionInpaintPipeline",
        hidden_act="quick_gelu",
        pad_token="<|endoftext|>",
        unet_in_channels=9,
        sd2_attention=False,
        prediction_type="epsilon",
    ),
}


def _unet_config(preset: Preset, variant: Variant) -> dict[str, Any]:
    """UNet2DConditionModel arguments for `preset` sizes in `variant`'s family."""
    if variant.sd2_attention:
        # SD 2.x: heads of a fixed width at every level (diffusers calls the per-block head counts attention_head_dim)
        attention: dict[str, Any] = {
            "attention_head_dim": tuple(c // preset.head_width for c in preset.unet_channels),
            "use_linear_projection": True,
            "upcast_attention": True,
        }
    else:
        attention = {"attention_head_dim": 8}  # SD 1.x: 8 heads at every level
    if variant.class_labels:
        attention |= {"class_embed_type": "projection", "projection_class_embeddings_input_dim": variant.class_labels}
    return {
        "sample_size": preset.sample_size,
        "in_channels": variant.unet_in_channels,
        "out_channels": 4,
        "block_out_channels": preset.unet_channels,
        "layers_per_block": preset.unet_layers,
        "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        "cross_attention_dim": preset.text["hidden_size"],
        **attention,
        "norm_num_groups": 32,
    }


def _components(seed: int, preset: Preset, variant: Variant):
    from diffusers import AutoencoderKL, DDIMScheduler, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = demo_tokenizer(variant.pad_token)
    vocab = tokenizer.get_vocab()
    hidden = preset.text["hidden_size"]
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            **preset.text,
            max_position_embeddings=77,
            hidden_act=variant.hidden_act,
            projection_dim=hidden,
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab[variant.pad_token],
        )
    )
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(**_unet_config(preset, variant))
    torch.manual_seed(seed + 2)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=preset.vae_channels,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=preset.vae_layers,
        norm_num_groups=32,
        sample_size=512,
        scaling_factor=0.18215,
    )
    # The weights are random; halving the UNet's output keeps the images from saturating, which keeps
    # parity checks meaningful (a clipped image hides errors). It suits every variant: v-prediction's update mixes
    # the latents and the output, so there the output's share of the image is larger, not saturated.
    with torch.no_grad():
        unet.conv_out.weight.mul_(0.5)
        randomize_layer_norm(final_layer_norm(text_encoder), seed + 3)
    if variant.prediction_type == "v_prediction":
        # the published SD 2.1 (768) scheduler config
        scheduler = DDIMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            num_train_timesteps=1000,
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
            prediction_type="v_prediction",
            timestep_spacing="leading",
        )
    else:
        scheduler = PNDMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            num_train_timesteps=1000,
            skip_prk_steps=True,
            set_alpha_to_one=False,
            steps_offset=1,
        )
    return tokenizer, text_encoder, unet, vae, scheduler


def randomize_layer_norm(norm: torch.nn.LayerNorm, seed: int) -> None:
    """Give a freshly made LayerNorm random scales and offsets, as a trained one has.

    transformers initializes them to 1 and 0, so a text encoder's normed output would have a mean of
    exactly ~0, and the web UI's emphasis (which divides by the mean of the weighted embeddings) would
    divide by rounding noise: a real CLIP's final norm has offsets that keep that mean away from 0.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        norm.weight.copy_(1.0 + 0.1 * torch.randn(norm.weight.shape, generator=generator))
        norm.bias.copy_(0.2 + 0.2 * torch.randn(norm.bias.shape, generator=generator))


def final_layer_norm(text_encoder) -> torch.nn.LayerNorm:
    # transformers 5 keeps it on the model itself; older releases under .text_model
    return getattr(text_encoder, "final_layer_norm", None) or text_encoder.text_model.final_layer_norm


def model_index(pipeline: str, scheduler: str) -> dict:
    """model_index.json: which class loads each part (no safety checker or feature extractor)."""
    index: dict = {"_class_name": pipeline}
    if pipeline == "StableDiffusionInpaintPipeline":
        import diffusers

        # diffusers' loader reads this to send pre-0.6 inpainting checkpoints to its legacy class; without it, it fails
        index["_diffusers_version"] = diffusers.__version__
    return index | {
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", scheduler],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


_README = {
    "sd1": "random weights in the Stable Diffusion 1.x architecture",
    "sd2": "random weights in the Stable Diffusion 2.x (768, v-prediction) architecture",
    "inpaint": "random weights in the Stable Diffusion 1.x inpainting architecture (9-channel UNet input)",
}


def write(root: Path, seed: int, preset: str, variant: str, device: str | None = None) -> str:
    """Write the parts of an SD variant of `preset` sizes into `root` (weights made on `device`); describe it."""
    family = _FAMILIES[variant]
    with torch.device(device or "cpu"):
        tokenizer, text_encoder, unet, vae, scheduler = _components(seed, SIZES[preset], family)
    tokenizer.save_pretrained(root / "tokenizer")
    for name, module in (("text_encoder", text_encoder), ("unet", unet), ("vae", vae)):
        module.to("cpu").save_pretrained(root / name, safe_serialization=True)
    scheduler.save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps(model_index(family.pipeline, type(scheduler).__name__), indent=2))
    return _README[variant]


VARIANTS = tuple(_FAMILIES)
