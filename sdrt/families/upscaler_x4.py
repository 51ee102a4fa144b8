"""Stability's Stable Diffusion x4 upscaler: a low-resolution image made four times larger, guided by a prompt.

As diffusers' StableDiffusionUpscalePipeline: the low-res image (resized to a quarter of the output, in [-1, 1])
is noised to `noise_level` by the model's own low-res scheduler, with noise drawn from the request's first
generator, and concatenated to the latents as three more UNet input channels (CONCAT conditioning, the same for
the unconditional rows); `noise_level` is also the UNet's class label (its class embedding, a VECTOR input). The
latents have the low-res image's size: the model's VAE (three levels, 4x, scaling factor 0.08333) decodes them to
four times it. The prompt conditions as SD 2.x's does (OpenCLIP ViT-H, v-prediction). An artifact's size range
counts output pixels: `--min-size 256 --max-size 1024` takes low-res images of 64..256 pixels.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sdrt.components import latent_factor, text_encoder_spec, unet_spec, vae_specs
from sdrt.conditioning.embedders import ConditionedRequest, ConditioningContext, EmbedBatch, Embedder
from sdrt.conditioning.guidance import CONCAT, VECTOR, Conditioning
from sdrt.conditioning.text import TextEmbedder
from sdrt.families import register
from sdrt.families.base import NOISE_LEVEL, Family, TextEncoderPair, model_part, support_part
from sdrt.families.sd import TOKENIZERS
from sdrt.files import read_json_object
from sdrt.lazy import deferred
from sdrt.spec import ComponentSpec, TensorSpec

if TYPE_CHECKING:
    import torch
else:
    torch = deferred("torch")

PIPELINES = ("StableDiffusionUpscalePipeline",)
IMAGE = "low_res_image"  # the UNet input of the noised low-res image (concatenated to the latents' channels)
LABELS = "class_labels"  # the UNet's class-embedding input: the noise level
IMAGE_CHANNELS = 3  # RGB


class LowResImageEmbedder:
    """The low-res image, noised by the low-res scheduler, as CONCAT channels; its noise level as class labels."""

    def __init__(self, noising_scheduler: Any, max_noise_level: int, factor: int) -> None:
        self.noising = noising_scheduler  # the model's low_res_scheduler (diffusers' DDPMScheduler)
        self.max_noise_level = max_noise_level  # the pipeline's max_noise_level (350)
        self.factor = factor  # output pixels per low-res pixel: the VAE's 4

    def check(self, request: ConditionedRequest) -> None:
        if request.image is None:
            raise ValueError("a Stable Diffusion x4 upscaler upscales an image: give the low-res image (image=...)")
        level = NOISE_LEVEL.check(request.option("noise_level"))
        if level is not None and level > self.max_noise_level:
            raise ValueError(f"noise_level {level} is over this model's max_noise_level {self.max_noise_level}")

    def batch_key(self, request: ConditionedRequest) -> tuple:
        return ()  # per row: requests with different images and noise levels share a batch

    def level(self, request: ConditionedRequest) -> int:
        value = request.option("noise_level")
        return DEFAULT_NOISE_LEVEL if value is None else int(value)

    def embed(self, batch: EmbedBatch) -> Conditioning:
        """One row per image: each request's image noised once (its first generator's draw), repeated."""
        from diffusers.image_processor import VaeImageProcessor

        processor = VaeImageProcessor(vae_scale_factor=self.factor, resample="bicubic")
        images, labels, first = [], [], 0
        for request in batch.requests:
            height, width = request.height // self.factor, request.width // self.factor
            pixels = processor.preprocess(request.image.convert("RGB"), height=height, width=width)
            noise = torch.randn(pixels.shape, generator=batch.generators[first], dtype=pixels.dtype)
            level = self.level(request)
            noised = self.noising.add_noise(pixels, noise, torch.tensor([level]))
            images.append(noised.expand(request.num_images, -1, -1, -1))
            labels += [level] * request.num_images
            first += request.num_images
        device = batch.cfg.device
        cond = {IMAGE: torch.cat(images).to(device), LABELS: torch.tensor(labels, dtype=torch.int32, device=device)}
        # the unconditional rows see the same image and level (diffusers repeats both for every row)
        return Conditioning(cond, {}, kinds={IMAGE: CONCAT, LABELS: VECTOR})


DEFAULT_NOISE_LEVEL = 20  # diffusers' StableDiffusionUpscalePipeline's


@dataclass(frozen=True)
class UpscalerX4Family(Family):
    """The SD x4 upscaler: SD 2.x text conditioning, a 7-channel UNet with a noise-level class embedding, a 4x VAE."""

    def claims(self, index: Mapping[str, Any], configs: Mapping[str, Any]) -> bool:
        return index.get("_class_name") in PIPELINES

    def networks(self, configs: Mapping[str, Any]) -> dict[str, ComponentSpec]:
        text, unet, vae = configs["text_encoder"], configs["unet"], configs["vae"]
        latent = int(vae["latent_channels"])
        if int(unet["in_channels"]) != latent + IMAGE_CHANNELS or not unet.get("num_class_embeds"):
            raise ValueError(
                f"an x4 upscaler UNet takes {latent} latent + {IMAGE_CHANNELS} image channels and a noise-level class "
                f"embedding; this one takes {unet['in_channels']} channels, num_class_embeds "
                f"{unet.get('num_class_embeds')}"
            )
        return {
            "text_encoder": text_encoder_spec(
                "text_encoder", text["hidden_size"], text["vocab_size"], text["num_hidden_layers"]
            ),
            "unet": unet_spec(
                unet["in_channels"],
                unet["out_channels"],
                unet["cross_attention_dim"],
                configs["scheduler"].get("num_train_timesteps", 1000),
                bool(unet.get("upcast_attention") or False),
                class_labels=TensorSpec(LABELS, "int32", ("cfg_batch",)),
                input_bounds={LABELS: int(unet["num_class_embeds"])},
            ),
            **vae_specs(vae, encoder=False),  # the low-res image is concatenated as it is, never encoded
        }

    def embedders(self, context: ConditioningContext) -> list[Embedder]:
        """SD 2.x's text states, then the noised low-res image (its noise drawn before the latents', as diffusers)."""
        from sdrt.schedulers import make_scheduler

        config = read_json_object(context.support["low_res_scheduler"] / "scheduler_config.json")
        factor = context.engines[self.vae_decoder].ranges.latent_factor  # output pixels per latent (low-res) pixel
        image = LowResImageEmbedder(make_scheduler(None, config), int(context.extras["max_noise_level"]), factor)
        return [TextEmbedder([context.encoders["text_encoder"]]), image]

    def native_size(self, configs: Mapping[str, Mapping[str, Any]]) -> int:
        """Output pixels the model was trained for: its UNet's sample size (low-res) times the VAE's 4."""
        return int(configs["unet"].get("sample_size", 128)) * latent_factor(configs["vae"])


UPSCALER_X4 = register(
    UpscalerX4Family(
        name="upscaler_x4",
        parts=(
            model_part("text_encoder", "CLIPTextModel"),
            support_part("tokenizer", *TOKENIZERS),
            model_part("unet", "UNet2DConditionModel"),
            model_part("vae", "AutoencoderKL"),
            support_part("scheduler", config="scheduler_config.json"),
            support_part("low_res_scheduler", config="scheduler_config.json"),
        ),
        network_names=("text_encoder", "unet", "vae_decoder"),
        text_encoders=(TextEncoderPair("tokenizer", "text_encoder"),),
        description="Stable Diffusion x4 upscaler",
        modes=("variation",),  # the image conditions the model (as unCLIP's): denoising starts from noise
        default_steps=75,  # StableDiffusionUpscalePipeline's defaults
        default_guidance=9.0,
        image_conditioned=True,
        image_scale=4,
        image_channels=IMAGE_CHANNELS,
        extras_defaults={"max_noise_level": 350},
        params=(NOISE_LEVEL,),
    )
)
