"""Stable unCLIP 2.1 ("Stable Diffusion Reimagine"): variations of an image from its CLIP image embedding.

As diffusers' StableUnCLIPImg2ImgPipeline: the image goes through the model's own CLIPImageProcessor and
the CLIP vision encoder (with projection); the embedding is normalized with the image normalizer's mean
and std, noised to `noise_level` by the image-noising scheduler, unnormalized, and the sinusoidal
embedding of the noise level is appended; that vector (2E wide) is the UNet's `class_labels`, zeros for
the unconditional rows. The prompt (optional, "" by default) conditions as SD 2.x's does. Denoising starts
from pure noise: the image reaches the UNet through its embedding only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sdrt.components import image_encoder_spec, text_encoder_spec, unet_spec, vae_specs
from sdrt.conditioning.embedders import ConditionedRequest, ConditioningContext, EmbedBatch, Embedder
from sdrt.conditioning.guidance import VECTOR, Conditioning
from sdrt.conditioning.text import TextEmbedder
from sdrt.engines import call_in_chunks
from sdrt.families import register
from sdrt.families.base import NOISE_LEVEL, Family, TextEncoderPair, model_part, support_part
from sdrt.families.sd import SD_LATENT_RGB, TOKENIZERS
from sdrt.files import read_json_object
from sdrt.lazy import deferred
from sdrt.params import Param
from sdrt.spec import ComponentSpec, TensorSpec

if TYPE_CHECKING:
    import torch
else:
    torch = deferred("torch")

PIPELINES = ("StableUnCLIPImg2ImgPipeline",)
NORMALIZER_WEIGHTS = "diffusion_pytorch_model.safetensors"


PARAMS = (
    NOISE_LEVEL,  # unCLIP's default: 0
    Param(
        "image_embeds",
        "vector",
        "unCLIP: the image's CLIP embedding (E,) or (1, E), instead of the image itself",
        flag=None,
        owner="unclip",
    ),
)


def noise_level(request: ConditionedRequest) -> int:
    """The request's noise level for its image embedding: unCLIP's default is 0."""
    value = NOISE_LEVEL.check(request.option("noise_level"))
    return 0 if value is None else int(value)


class ImageEmbedder:
    """Images (or their CLIP embeddings) -> `class_labels`: the embedding noised to `noise_level`, then the level's
    sinusoid; zeros for the unconditional rows."""

    def __init__(
        self,
        engines: Mapping[str, Any],
        processor: Any,
        normalizer: tuple[torch.Tensor, torch.Tensor],
        noising_scheduler: Any,
    ) -> None:
        self._engines = engines  # the model's engines, read at each call (a wrapper, a timer, is seen)
        self.processor = processor  # the model's own CLIPImageProcessor (transformers)
        self.mean, self.std = normalizer  # the image normalizer's (1, E) mean and std
        self.noising = noising_scheduler  # adds noise_level noise to the normalized embedding

    @property
    def embedding_dim(self) -> int:
        return int(self.mean.shape[-1])

    @property
    def noise_levels(self) -> int:
        """noise_level is a timestep of the noising scheduler: 0 up to this, exclusive."""
        return int(self.noising.config.num_train_timesteps)

    def check(self, request: ConditionedRequest) -> None:
        embeds = request.option("image_embeds")
        if request.image is None and embeds is None:
            raise ValueError(
                "a Stable unCLIP 2.1 model runs variation, not txt2img: give an input image (image=...) or its CLIP "
                "embedding (image_embeds=...)"
            )
        if request.image is not None and embeds is not None:
            raise ValueError("give image or image_embeds, not both: image_embeds is the image's CLIP embedding")
        if embeds is not None:
            if not isinstance(embeds, torch.Tensor) or embeds.dim() not in (1, 2):
                raise ValueError("image_embeds must be a tensor of shape (E,) or (1, E): one image's CLIP embedding")
            if embeds.dim() == 2 and embeds.shape[0] != 1:
                raise ValueError(f"image_embeds has {embeds.shape[0]} rows; give one image's embedding")
        level = noise_level(request)
        if not 0 <= level < self.noise_levels:
            raise ValueError(
                f"noise_level {level} is outside 0..{self.noise_levels - 1} "
                "(the timesteps of this model's image-noising scheduler)"
            )
        if embeds is not None and embeds.shape[-1] != self.embedding_dim:
            raise ValueError(
                f"image_embeds is {embeds.shape[-1]} wide; this model's image embeddings are {self.embedding_dim} wide"
            )

    def batch_key(self, request: ConditionedRequest) -> tuple:
        return ()  # per row: requests with different images and noise levels share a batch

    def embed(self, batch: EmbedBatch) -> Conditioning:
        labels = []
        first_image = 0  # index of each request's first image: its generator draws the request's embedding noise
        for request, embeds in zip(batch.requests, self.image_embeddings(batch.requests), strict=True):
            noised = self.noise_augment(embeds, noise_level(request), batch.generators[first_image])
            labels.append(noised.expand(request.num_images, -1))
            first_image += request.num_images
        cond = torch.cat(labels).to(batch.cfg.device)
        zeros = cond.new_zeros((batch.cfg.num_uncond, cond.shape[-1]))
        return Conditioning({"class_labels": cond}, {"class_labels": zeros}, kinds={"class_labels": VECTOR})

    def image_embeddings(self, requests: Sequence[ConditionedRequest]) -> list[torch.Tensor]:
        """Each request's (1, E) CLIP image embedding: given, or its image through processor and vision encoder."""
        images = [r.image.convert("RGB") for r in requests if r.option("image_embeds") is None]
        encoded: list[torch.Tensor] = []
        if images:
            (name,) = (n for n, e in self._engines.items() if e.spec.role == "image_encoder")
            engine = self._engines[name]
            pixels = self.processor(images=images, return_tensors="pt").pixel_values.to(engine.device, torch.float32)
            encoded = list(call_in_chunks(engine, {"pixel_values": pixels})["image_embeds"].cpu().split(1))
        out = []
        for r in requests:
            given = r.option("image_embeds")
            out.append(given.reshape(1, -1).float().cpu() if given is not None else encoded.pop(0))
        return out

    def noise_augment(self, embeds: torch.Tensor, noise_level: int, generator: torch.Generator) -> torch.Tensor:
        """(1, E) -> (1, 2E): noised at `noise_level` as diffusers' noise_image_embeddings, its level's sinusoid after.

        The noise is drawn on the CPU from `generator` (diffusers' randn_tensor draws one row for one image).
        """
        from diffusers.models.embeddings import get_timestep_embedding

        noise = torch.randn(embeds.shape, generator=generator, dtype=embeds.dtype)
        level = torch.tensor([noise_level] * embeds.shape[0])
        scaled = (embeds - self.mean) / self.std
        noised = self.noising.add_noise(scaled, timesteps=level, noise=noise)
        unscaled = noised * self.std + self.mean
        sinusoid = get_timestep_embedding(level, unscaled.shape[-1], flip_sin_to_cos=True, downscale_freq_shift=0)
        return torch.cat([unscaled, sinusoid.to(unscaled.dtype)], dim=1)  # computed in float32


@dataclass(frozen=True)
class UnCLIPFamily(Family):
    """SD 2.1 unCLIP image variations: SD 2.x text conditioning plus a noised CLIP image embedding."""

    def claims(self, index: Mapping[str, Any], configs: Mapping[str, Any]) -> bool:
        return index.get("_class_name") in PIPELINES

    def networks(self, configs: Mapping[str, Any]) -> dict[str, ComponentSpec]:
        text, vision, unet = configs["text_encoder"], configs["image_encoder"], configs["unet"]
        width = int(unet["projection_class_embeddings_input_dim"])
        embedding = int(vision["projection_dim"])
        if unet.get("class_embed_type") != "projection" or width != 2 * embedding:
            raise ValueError(
                f"the unCLIP UNet takes class labels of width {width} ({unet.get('class_embed_type')!r} embedding); "
                f"an image embedding of {embedding} plus its noise-level embedding needs a projection of "
                f"{2 * embedding}"
            )
        return {
            "text_encoder": text_encoder_spec(
                "text_encoder", text["hidden_size"], text["vocab_size"], text["num_hidden_layers"]
            ),
            "image_encoder": image_encoder_spec(int(vision["image_size"]), embedding),
            "unet": unet_spec(
                unet["in_channels"],
                unet["out_channels"],
                unet["cross_attention_dim"],
                configs["scheduler"].get("num_train_timesteps", 1000),
                bool(unet.get("upcast_attention") or False),
                # the noise-level sinusoid is computed in float32 by the conditioner; the class embedding's own
                # projection runs in the UNet's precision, as diffusers runs it
                class_labels=TensorSpec("class_labels", "float32", ("cfg_batch", width)),
            ),
            **vae_specs(configs["vae"], encoder=False),  # variations start from noise: no VAE encoder
        }

    def embedders(self, context: ConditioningContext) -> list[Embedder]:
        """SD 2.x's text states, then the noised image embedding (its noise drawn after the text, as diffusers)."""
        from safetensors.torch import load_file
        from transformers import CLIPImageProcessor

        from sdrt.schedulers import make_scheduler

        support = context.support
        try:
            processor = CLIPImageProcessor.from_pretrained(support["feature_extractor"], local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot load the image processor in {support['feature_extractor']}: {exc}") from exc
        weights = load_file(str(support["image_normalizer"] / NORMALIZER_WEIGHTS))
        noising = make_scheduler(None, read_json_object(support["image_noising_scheduler"] / "scheduler_config.json"))
        image = ImageEmbedder(context.engines, processor, (weights["mean"].float(), weights["std"].float()), noising)
        return [TextEmbedder([context.encoders["text_encoder"]]), image]


UNCLIP = register(
    UnCLIPFamily(
        name="unclip",
        parts=(
            model_part("text_encoder", "CLIPTextModel"),
            support_part("tokenizer", *TOKENIZERS),
            model_part("image_encoder", "CLIPVisionModelWithProjection"),
            support_part("feature_extractor", "CLIPImageProcessor", config="preprocessor_config.json"),
            support_part("image_normalizer", "StableUnCLIPImageNormalizer", config="config.json"),
            support_part("image_noising_scheduler", config="scheduler_config.json"),
            model_part("unet", "UNet2DConditionModel"),
            model_part("vae", "AutoencoderKL"),
            support_part("scheduler", config="scheduler_config.json"),
        ),
        network_names=("text_encoder", "image_encoder", "unet", "vae_decoder"),
        text_encoders=(TextEncoderPair("tokenizer", "text_encoder"),),
        description="Stable unCLIP 2.1 model",
        modes=("variation",),
        default_steps=20,  # StableUnCLIPImg2ImgPipeline's defaults
        default_guidance=10.0,
        latent_rgb=SD_LATENT_RGB,
        image_conditioned=True,
        params=PARAMS,
    )
)
