"""SDXL base (two CLIP text encoders, size and crop conditioning) and the SDXL refiner (ViT-bigG, aesthetic score).

Conditioning follows diffusers' StableDiffusionXL pipelines' `encode_prompt` and `_get_add_time_ids`: the
penultimate hidden states of each text encoder (`clip_skip` counts back from there), concatenated on the
feature axis; the last encoder's pooled projection as `text_embeds`; `time_ids` of (original height, width,
crop top, left, target height, width), or for the refiner (height, width, crop top, left, aesthetic score).
An empty negative prompt gives zero embeddings when the model's `force_zeros_for_empty_prompt` says so.
Long prompts are chunked for both encoders, and the pooled embedding is the first chunk's, as the web UI does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from sdrt.components import text_encoder_spec, unet_spec, vae_specs
from sdrt.families import register
from sdrt.families.base import Family, TextEncoderPair, model_part, support_part
from sdrt.families.sd import TOKENIZERS
from sdrt.families.text_conditioning import TextConditioner
from sdrt.runtime.guidance import ClassifierFreeGuidance, Conditioning
from sdrt.runtime.prompts import PromptEncoder, RowCache
from sdrt.spec import ComponentSpec, TensorSpec

if TYPE_CHECKING:
    from sdrt.runtime.model import Model
    from sdrt.runtime.request import GenerationRequest

PIPELINES = ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline")
# the web UI's "Approx cheap" fit for SDXL latents (modules/sd_vae_approx.py)
SDXL_LATENT_RGB = (
    (0.3448, 0.4168, 0.4395),
    (-0.1953, -0.0290, 0.0250),
    (0.1074, 0.0886, -0.0163),
    (-0.3730, -0.2499, -0.2088),
)
TIME_IDS_MAX = 4096  # pixel sizes: the bound sample inputs draw time ids under


class SDXLConditioner(TextConditioner):
    """Prompts -> `encoder_hidden_states`, `text_embeds` (pooled) and `time_ids` for every image and guided image."""

    def __init__(self, encoders: Sequence[PromptEncoder], force_zeros: bool, aesthetic: bool) -> None:
        super().__init__(encoders)
        self.force_zeros = force_zeros  # an empty negative prompt gives zero embeddings instead of its encoding
        self.aesthetic = aesthetic  # the refiner's time ids end with an aesthetic score instead of a target size

    def condition(
        self, requests: Sequence[GenerationRequest], cfg: ClassifierFreeGuidance, step: int, cache: RowCache
    ) -> Conditioning:
        first = requests[0]
        chunks = self.chunks(requests)
        cond_states, uncond_states = [], []
        cond_pooled = uncond_pooled = None
        zero: list[bool] = []
        for encoder in self.encoders:
            uncond, cond = self.rows(requests, cfg, encoder, step)
            zero = [self.force_zeros and n.is_empty for n in uncond]  # the same rows for every encoder
            encoded = [n for n, z in zip(uncond, zero, strict=True) if not z]
            out = encoder.encode([*encoded, *cond], first.clip_skip, chunks, cache)
            k = len(encoded)
            cond_states.append(out.states[k:])
            uncond_states.append(_with_zero_rows(out.states[:k], zero))
            if out.pooled is not None:  # the pooled embedding of the last encoder that has one (diffusers' rule)
                cond_pooled, uncond_pooled = out.pooled[k:], _with_zero_rows(out.pooled[:k], zero)
        if cond_pooled is None:
            raise ValueError("an SDXL model needs a text encoder with a pooled output (text_encoder_2)")
        cond_ids, uncond_ids = self.time_ids(requests, cfg)
        device = cond_states[0].device
        return Conditioning(
            cond={
                "encoder_hidden_states": torch.cat(cond_states, dim=-1),
                "text_embeds": cond_pooled,
                "time_ids": cond_ids.to(device),
            },
            uncond={
                "encoder_hidden_states": torch.cat(uncond_states, dim=-1),
                "text_embeds": uncond_pooled,
                "time_ids": uncond_ids.to(device),
            },
        )

    def time_ids(
        self, requests: Sequence[GenerationRequest], cfg: ClassifierFreeGuidance
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, W) conditional and (K, W) unconditional time ids: the image's size, no crop, target size or score.

        diffusers' defaults: original and target size are the generated image's (height, width), the crop
        is (0, 0); the refiner asks for `aesthetic_score` on the conditional rows and
        `negative_aesthetic_score` on the unconditional ones.
        """
        cond, uncond = [], []
        for r in requests:
            size = [float(r.height), float(r.width), 0.0, 0.0]
            if self.aesthetic:
                row, negative = [*size, float(r.aesthetic_score)], [*size, float(r.negative_aesthetic_score)]
            else:
                row = negative = [*size, float(r.height), float(r.width)]
            cond += [row] * r.num_images
            uncond += [negative] * r.num_images
        return torch.tensor(cond), torch.tensor(cfg.guided_items(uncond), dtype=torch.float32).view(-1, len(cond[0]))


def _with_zero_rows(encoded: torch.Tensor, zero: Sequence[bool]) -> torch.Tensor:
    """`encoded` rows with zero rows inserted where `zero` is True (the zeroed empty negatives)."""
    if not any(zero):
        return encoded
    out = encoded.new_zeros((len(zero), *encoded.shape[1:]))
    keep = [i for i, z in enumerate(zero) if not z]
    if keep:
        out[keep] = encoded
    return out


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

    def conditioner(self, model: Model) -> SDXLConditioner:
        extras = model.manifest.extras
        return SDXLConditioner(
            [model.prompt_encoder(pair.network) for pair in self.text_encoders],
            force_zeros=extras["force_zeros_for_empty_prompt"],
            aesthetic=extras["requires_aesthetics_score"],
        )


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
        extras_defaults={"force_zeros_for_empty_prompt": True, "requires_aesthetics_score": True},
        refiner=True,
    )
)
