"""Stable Diffusion 1.x and 2.x (and their inpainting models): one CLIP text encoder, a UNet, the VAE."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sdrt.components import residual_specs, text_encoder_spec, unet_spec, vae_specs
from sdrt.conditioning.embedders import ConditioningContext, Embedder
from sdrt.conditioning.text import TextEmbedder
from sdrt.families import register
from sdrt.families.base import Family, TextEncoderPair, model_part, support_part
from sdrt.spec import ComponentSpec

PIPELINES = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline")
TOKENIZERS = ("CLIPTokenizer", "CLIPTokenizerFast")
PARTS = (
    model_part("text_encoder", "CLIPTextModel"),
    support_part("tokenizer", *TOKENIZERS),
    model_part("unet", "UNet2DConditionModel"),
    model_part("vae", "AutoencoderKL"),
    support_part("scheduler", config="scheduler_config.json"),
)
# Keturn's fit for SD 1.x latents (https://discuss.huggingface.co/t/decoding-latents-to-rgb-without-upscaling/23204/2),
# which the web UI's "Approx cheap" preview uses for SD 1.x and 2.x
SD_LATENT_RGB = (
    (0.298, 0.207, 0.208),
    (0.187, 0.286, 0.173),
    (-0.158, 0.189, 0.264),
    (-0.184, -0.271, -0.473),
)


@dataclass(frozen=True)
class SDFamily(Family):
    """SD 1.x (CLIP ViT-L text encoder, quick GELU) or SD 2.x (OpenCLIP ViT-H text encoder, GELU)."""

    hidden_act: str = "quick_gelu"  # the text encoder's activation, which tells SD 1.x from SD 2.x

    def claims(self, index: Mapping[str, Any], configs: Mapping[str, Any]) -> bool:
        text = configs.get("text_encoder", {})
        return index.get("_class_name") in PIPELINES and text.get("hidden_act", "quick_gelu") == self.hidden_act

    def networks(self, configs: Mapping[str, Any]) -> dict[str, ComponentSpec]:
        text, unet = configs["text_encoder"], configs["unet"]
        return {
            "text_encoder": text_encoder_spec(
                "text_encoder", text["hidden_size"], text["vocab_size"], text["num_hidden_layers"]
            ),
            "unet": unet_spec(
                unet["in_channels"],
                unet["out_channels"],
                unet["cross_attention_dim"],
                configs["scheduler"].get("num_train_timesteps", 1000),
                bool(unet.get("upcast_attention", False)),
                residuals=residual_specs(unet),  # ControlNets steer it per request (zeros without one)
            ),
            **vae_specs(configs["vae"]),
        }

    def embedders(self, context: ConditioningContext) -> list[Embedder]:
        """The text encoder's states for each image and each guided image's negative prompt."""
        return [TextEmbedder([context.encoders["text_encoder"]])]


_TEXT = (TextEncoderPair("tokenizer", "text_encoder"),)
_NETWORKS = ("text_encoder", "unet", "vae_decoder", "vae_encoder")
SD1 = register(
    SDFamily(
        name="sd1",
        parts=PARTS,
        network_names=_NETWORKS,
        text_encoders=_TEXT,
        description="Stable Diffusion 1.x model",
        latent_rgb=SD_LATENT_RGB,
        lora_loader="StableDiffusionLoraLoaderMixin",
        hidden_act="quick_gelu",
    )
)
SD2 = register(
    SDFamily(
        name="sd2",
        parts=PARTS,
        network_names=_NETWORKS,
        text_encoders=_TEXT,
        description="Stable Diffusion 2.x model",
        latent_rgb=SD_LATENT_RGB,
        lora_loader="StableDiffusionLoraLoaderMixin",
        hidden_act="gelu",
    )
)
