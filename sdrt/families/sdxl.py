"""SDXL base (two CLIP text encoders, size and crop conditioning) and the SDXL refiner (ViT-bigG, aesthetic score).

Conditioning follows diffusers' StableDiffusionXL pipelines' `encode_prompt` and `_get_add_time_ids`: the
penultimate hidden states of each text encoder (`clip_skip` counts back from there), concatenated on the
feature axis; the last encoder's pooled projection as `text_embeds`; `time_ids` of (original height, width,
crop top, left, target height, width), or for the refiner (height, width, crop top, left, aesthetic score).
An empty negative prompt gives zero embeddings when the model's `force_zeros_for_empty_prompt` says so.
Long prompts are chunked for both encoders, and the pooled embedding is the first chunk's, as the web UI does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sdrt.components import residual_specs, text_encoder_spec, unet_spec, vae_specs
from sdrt.conditioning.embedders import ConditionedRequest, ConditioningContext, EmbedBatch, Embedder
from sdrt.conditioning.guidance import VECTOR, Conditioning
from sdrt.conditioning.text import TextEmbedder
from sdrt.families import register
from sdrt.families.base import Family, TextEncoderPair, model_part, support_part
from sdrt.families.sd import TOKENIZERS
from sdrt.lazy import deferred
from sdrt.params import Param
from sdrt.spec import ComponentSpec, TensorSpec

if TYPE_CHECKING:
    import torch
else:
    torch = deferred("torch")

PIPELINES = ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline")
# the web UI's "Approx cheap" fit for SDXL latents (modules/sd_vae_approx.py)
SDXL_LATENT_RGB = (
    (0.3448, 0.4168, 0.4395),
    (-0.1953, -0.0290, 0.0250),
    (0.1074, 0.0886, -0.0163),
    (-0.3730, -0.2499, -0.2088),
)
TIME_IDS_MAX = 4096  # pixel sizes: the bound sample inputs draw time ids under


AESTHETIC_PARAMS = (
    Param(
        "aesthetic_score",
        "float",
        "SDXL refiner: the aesthetic score its conditional rows ask for",
        default=6.0,
        owner="sdxl_refiner",
    ),
    Param(
        "negative_aesthetic_score",
        "float",
        "SDXL refiner: the aesthetic score of its unconditional rows",
        default=2.5,
        owner="sdxl_refiner",
    ),
)


class TimeIdsEmbedder:
    """SDXL's `time_ids`: (original height, width, crop top, left, target height, width), or for the refiner
    (height, width, crop top, left, aesthetic score), as diffusers' `_get_add_time_ids` makes them.

    diffusers' defaults: original and target size are the generated image's (height, width), the crop is (0, 0);
    the refiner asks for `aesthetic_score` on the conditional rows and `negative_aesthetic_score` on the
    unconditional ones.
    """

    def __init__(self, aesthetic: bool) -> None:
        self.aesthetic = aesthetic  # the refiner's time ids end with an aesthetic score instead of a target size

    def check(self, request: ConditionedRequest) -> None:
        if self.aesthetic:
            for param in AESTHETIC_PARAMS:
                param.check(request.option(param.name))

    def batch_key(self, request: ConditionedRequest) -> tuple:
        return ()  # per row: requests with other sizes or scores still share a batch (sizes are in the batch key)

    def embed(self, batch: EmbedBatch) -> Conditioning:
        cond, uncond = [], []
        for r in batch.requests:
            size = [float(r.height), float(r.width), 0.0, 0.0]
            if self.aesthetic:
                row = [*size, float(r.option("aesthetic_score"))]
                negative = [*size, float(r.option("negative_aesthetic_score"))]
            else:
                row = negative = [*size, float(r.height), float(r.width)]
            cond += [row] * r.num_images
            uncond += [negative] * r.num_images
        device = batch.cfg.device
        cond_ids = torch.tensor(cond, device=device)
        uncond_ids = torch.tensor(batch.cfg.guided_items(uncond), dtype=torch.float32).view(-1, len(cond[0]))
        return Conditioning(
            cond={"time_ids": cond_ids}, uncond={"time_ids": uncond_ids.to(device)}, kinds={"time_ids": VECTOR}
        )


@dataclass(frozen=True)
class SDXLFamily(Family):
    """SDXL base, or (refiner=True) the SDXL refiner."""

    refiner: bool = False  # the refiner: text_encoder_2 alone, aesthetic-score time ids

    def claims(self, index: Mapping[str, Any], configs: Mapping[str, Any]) -> bool:
        if index.get("_class_name") not in PIPELINES:
            return False
        has_first_encoder = "text_encoder" in configs
        return has_first_encoder != self.refiner

    def time_id_width(self, configs: Mapping[str, Any]) -> int:
        """Values per time-ids row, from the UNet's added-embedding input width (6 for the base, 5 for the refiner)."""
        unet, pooled = configs["unet"], int(configs["text_encoder_2"]["projection_dim"])
        per_value = int(unet["addition_time_embed_dim"])
        width, rest = divmod(int(unet["projection_class_embeddings_input_dim"]) - pooled, per_value)
        expected = 5 if self.refiner else 6
        if rest or width != expected:
            raise ValueError(
                f"the UNet's added embedding takes {unet['projection_class_embeddings_input_dim']} values, which is "
                f"not {expected} time ids of {per_value} plus a {pooled}-wide pooled text embedding: "
                f"not a {self.description}"
            )
        return width

    def networks(self, configs: Mapping[str, Any]) -> dict[str, ComponentSpec]:
        specs: dict[str, ComponentSpec] = {}
        for pair in self.text_encoders:
            text = configs[pair.network]
            pooled = int(text["projection_dim"]) if pair.network == "text_encoder_2" else None
            specs[pair.network] = text_encoder_spec(
                pair.network,
                text["hidden_size"],
                text["vocab_size"],
                text["num_hidden_layers"],
                final_layer_norm=False,  # SDXL takes the penultimate layer as it is
                layer_offset=1,
                pooled_size=pooled,
            )
        unet = configs["unet"]
        pooled = int(configs["text_encoder_2"]["projection_dim"])
        added = (
            TensorSpec("text_embeds", "float32", ("cfg_batch", pooled)),
            TensorSpec("time_ids", "float32", ("cfg_batch", self.time_id_width(configs))),
        )
        specs["unet"] = unet_spec(
            unet["in_channels"],
            unet["out_channels"],
            unet["cross_attention_dim"],
            configs["scheduler"].get("num_train_timesteps", 1000),
            bool(unet.get("upcast_attention") or False),
            added_cond=added,
            fp32_inputs=("timestep", "time_ids"),  # both go through sinusoidal embeddings of values up to ~1000
            input_bounds={"time_ids": TIME_IDS_MAX},
            # ControlNets steer the base per request (zeros without one); none exist for the refiner
            residuals=() if self.refiner else residual_specs(unet),
        )
        specs.update(vae_specs(configs["vae"]))
        return specs

    def manifest_extras(self, index: Mapping[str, Any], configs: Mapping[str, Any]) -> dict[str, Any]:
        extras = super().manifest_extras(index, configs)
        extras["requires_aesthetics_score"] = self.time_id_width(configs) == 5
        return extras

    def check_extras(self, extras: Mapping[str, Any]) -> dict[str, Any]:
        checked = super().check_extras(extras)
        if checked["requires_aesthetics_score"] != self.refiner:
            raise ValueError(
                f"manifest extra requires_aesthetics_score {checked['requires_aesthetics_score']} does not fit a "
                f"{self.description}"
            )
        return checked

    def embedders(self, context: ConditioningContext) -> list[Embedder]:
        """Both encoders' penultimate states, the last one's pooled projection, and the size (or score) ids."""
        extras = context.extras
        encoders = [context.encoders[pair.network] for pair in self.text_encoders]
        return [
            TextEmbedder(encoders, pooled="text_embeds", force_zeros=extras["force_zeros_for_empty_prompt"]),
            TimeIdsEmbedder(aesthetic=extras["requires_aesthetics_score"]),
        ]


_COMMON = (
    model_part("unet", "UNet2DConditionModel"),
    model_part("vae", "AutoencoderKL"),
    support_part("scheduler", config="scheduler_config.json"),
)
_SECOND = (
    model_part("text_encoder_2", "CLIPTextModelWithProjection"),
    support_part("tokenizer_2", *TOKENIZERS),
)
_VAE = ("vae_decoder", "vae_encoder")

SDXL = register(
    SDXLFamily(
        name="sdxl",
        parts=(model_part("text_encoder", "CLIPTextModel"), support_part("tokenizer", *TOKENIZERS), *_SECOND, *_COMMON),
        network_names=("text_encoder", "text_encoder_2", "unet", *_VAE),
        text_encoders=(TextEncoderPair("tokenizer", "text_encoder"), TextEncoderPair("tokenizer_2", "text_encoder_2")),
        description="Stable Diffusion XL model",
        default_guidance=5.0,
        default_strength=0.3,
        latent_rgb=SDXL_LATENT_RGB,
        refiners=("sdxl_refiner",),
        lora_loader="StableDiffusionXLLoraLoaderMixin",
        # diffusers' StableDiffusionXLPipeline default; requires_aesthetics_score is derived from the UNet
        extras_defaults={"force_zeros_for_empty_prompt": True, "requires_aesthetics_score": False},
    )
)
SDXL_REFINER = register(
    SDXLFamily(
        name="sdxl_refiner",
        parts=(*_SECOND, *_COMMON),
        network_names=("text_encoder_2", "unet", *_VAE),
        text_encoders=(TextEncoderPair("tokenizer_2", "text_encoder_2"),),
        description="Stable Diffusion XL refiner model",
        modes=("img2img",),
        default_guidance=5.0,
        default_strength=0.3,
        latent_rgb=SDXL_LATENT_RGB,
        lora_loader="StableDiffusionXLLoraLoaderMixin",  # an SDXL LoRA's text_encoder_2 layers fit the refiner's
        extras_defaults={"force_zeros_for_empty_prompt": True, "requires_aesthetics_score": True},
        params=AESTHETIC_PARAMS,
        refiner=True,
    )
)
