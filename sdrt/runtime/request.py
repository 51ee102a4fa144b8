"""A generation request (text-to-image, image-to-image, inpainting), validated before any engine runs."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import torch
from PIL import Image

from sdrt.excerpt import check_text, excerpt
from sdrt.runtime.hires import Hires
from sdrt.runtime.image_inputs import check_mask_matches
from sdrt.runtime.latents import MAX_SEED
from sdrt.runtime.lora_prompts import LoraTags, request_loras
from sdrt.runtime.prompts import PromptTokens
from sdrt.runtime.schedulers import check_sampler
from sdrt.spec import ShapeRanges

MAX_STEPS = 1000
T = TypeVar("T")


@dataclass(frozen=True)
class GenerationRequest:
    """Everything that determines a generation's images."""

    prompts: tuple[str, ...]  # one entry per prompt; each gives num_images_per_prompt images
    negative_prompts: tuple[str, ...]  # one per prompt ("" = unconditional)
    height: int  # pixels, a multiple of the latent factor inside the artifact's range
    width: int  # pixels, likewise
    steps: int  # denoising steps, 1..1000
    guidance_scales: tuple[float, ...]  # classifier-free guidance scale per prompt; <= 1 skips the uncond pass
    seed: int  # seed of the first image; image i uses seed + i
    num_images_per_prompt: int = 1  # images per prompt
    scheduler: str | None = None  # sampler name, or None for the model's own scheduler
    eta: float = 0.0  # DDIM's eta (noise added per step); ignored by other samplers
    clip_skip: int = 0  # text-encoder layers skipped from the end, diffusers' numbering (1 = web UI "CLIP skip 2")
    image: Image.Image | None = None  # image-to-image / inpainting input, resized to height x width
    mask_image: Image.Image | None = None  # inpainting mask of the image's size: white is repainted, black kept
    strength: float | None = (
        None  # with an image: share of the schedule run, 0 < s <= 1; None: the image conditions (unCLIP)
    )
    noise_level: int = 0  # unCLIP: noise added to the image embedding, a timestep of the model's noising scheduler
    image_embeds: torch.Tensor | None = field(default=None, compare=False)  # unCLIP: (E,) or (1, E) CLIP embedding
    refiner_switch_at: float | None = None  # base + refiner: share of the schedule the base runs, 0 < F < 1
    aesthetic_score: float = 6.0  # SDXL refiner: the aesthetic score its conditional rows ask for
    negative_aesthetic_score: float = 2.5  # SDXL refiner: the aesthetic score of its unconditional rows
    hires: Hires | None = None  # text-to-image: the web UI's hires fix, a second pass at a larger size
    # image-to-image from latents instead of an image (the hires fix's second pass): (images, C, h, w), scaled
    init_latents: torch.Tensor | None = field(default=None, compare=False, repr=False)
    # tokenizer key -> the prompts' tokens, made once when the request is checked (Pipeline.request)
    tokens: Mapping[str, PromptTokens] = field(default_factory=dict, compare=False, repr=False)
    # the LoRAs its prompts name (<lora:name:weight>), one set for the request: read from the prompts
    loras: LoraTags = field(init=False, default=())
    # with hires: the second pass's request as checked and batched (its input is made when the first pass ends)
    second_pass: GenerationRequest | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.prompts:
            raise ValueError("prompt is empty: give at least one prompt")
        for field_name, texts in (("prompt", self.prompts), ("negative_prompt", self.negative_prompts)):
            for text in texts:
                if not isinstance(text, str):
                    raise ValueError(f"{field_name} {excerpt(text)} is not a string")
                check_text(field_name, text)
        per_prompt = (("negative_prompt", self.negative_prompts), ("guidance_scale", self.guidance_scales))
        for field_name, values in per_prompt:
            if len(values) != len(self.prompts):
                raise ValueError(
                    f"{field_name} has {len(values)} entries for {len(self.prompts)} prompts; "
                    "give one, or one per prompt"
                )
        object.__setattr__(self, "loras", request_loras(self.prompts, self.negative_prompts))
        _check_int("num_inference_steps", self.steps, 1, MAX_STEPS)
        _check_int("num_images_per_prompt", self.num_images_per_prompt, 1, None)
        for scale in self.guidance_scales:
            if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
                raise ValueError(f"guidance_scale {excerpt(scale)} is not a finite number")
        if not math.isfinite(self.eta) or not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"eta {excerpt(self.eta)} is outside 0..1")
        _check_int("seed", self.seed, 0, MAX_SEED - self.num_images + 1)  # the last image's seed is MAX_SEED at most
        check_sampler(self.scheduler)
        _check_int("clip_skip", self.clip_skip, 0, None)
        for name in ("aesthetic_score", "negative_aesthetic_score"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} {excerpt(value)} is not a finite number")
        switch = self.refiner_switch_at
        if switch is not None and (
            isinstance(switch, bool) or not isinstance(switch, (int, float)) or not 0.0 < switch < 1.0
        ):
            raise ValueError(f"refiner_switch_at {excerpt(switch)} is outside 0 < F < 1 (the share the base runs)")
        self._check_images()

    def _check_images(self) -> None:
        if self.hires is not None and not isinstance(self.hires, Hires):
            raise ValueError(f"hires {excerpt(self.hires)} is not a Hires")
        if self.hires is not None and (self.image is not None or self.init_latents is not None):
            raise ValueError(
                "hires fixes text-to-image: leave out image (an input image is upscaled by img2img itself)"
            )
        if self.hires is not None and self.refiner_switch_at is not None:
            raise ValueError("hires runs the base model in both passes: leave out refiner_switch_at")
        if self.init_latents is not None and (self.image is not None or self.mask_image is not None):
            raise ValueError("init_latents replace the input image: give one of image and init_latents, no mask")
        if self.mask_image is not None and self.image is None:
            raise ValueError("mask_image needs an image to inpaint: give image as well")
        _check_int("noise_level", self.noise_level, 0, None)
        if self.image_embeds is not None:
            if self.image is not None or self.init_latents is not None:
                raise ValueError("give image or image_embeds, not both: image_embeds is the image's CLIP embedding")
            if not isinstance(self.image_embeds, torch.Tensor) or self.image_embeds.dim() not in (1, 2):
                raise ValueError("image_embeds must be a tensor of shape (E,) or (1, E): one image's CLIP embedding")
            if self.image_embeds.dim() == 2 and self.image_embeds.shape[0] != 1:
                raise ValueError(f"image_embeds has {self.image_embeds.shape[0]} rows; give one image's embedding")
        if self.hires is not None and self.image_embeds is not None:
            raise ValueError("hires fixes text-to-image: leave out image_embeds")
        if self.init_latents is not None and self.strength is None:
            raise ValueError("init_latents need a strength: the share of the schedule image-to-image runs")
        if self.image is None and self.init_latents is None:
            if self.strength is not None:
                raise ValueError(f"strength {self.strength} needs an input image (image-to-image or inpainting)")
            return
        if self.strength is None:
            if self.mask_image is not None:
                raise ValueError("inpainting needs a strength; an image without strength conditions an unCLIP model")
            return  # the image conditions the model (unCLIP variations): no strength, no VAE encoding
        if self.mask_image is not None:
            check_mask_matches(self.image, self.mask_image)
        strength = self.strength
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength {excerpt(strength)} is outside 0..1")
        if strength == 0:
            raise ValueError("strength 0 runs no step: give strength above 0 (the share of the steps to run)")

    @property
    def num_images(self) -> int:
        return len(self.prompts) * self.num_images_per_prompt

    @property
    def mode(self) -> str:
        """ "txt2img", "img2img", "inpaint", or "variation" (an image, or its embedding, conditions; no strength)."""
        if self.image_embeds is not None or (self.image is not None and self.strength is None):
            return "variation"
        if self.image is None and self.init_latents is None:
            return "txt2img"
        return "img2img" if self.mask_image is None else "inpaint"

    @property
    def steps_run(self) -> int:
        """Denoising steps actually run: all of them, or int(steps * strength) with an input image."""
        return self.steps if self.strength is None else strength_steps(self.steps, self.strength)

    def check_against(self, ranges: ShapeRanges, max_images: int) -> None:
        """Raise ValueError unless the artifact supports this request's size and image count."""
        ranges.check_size(self.height, self.width)
        if self.num_images > max_images:
            raise ValueError(
                f"batch of {self.num_images} images ({len(self.prompts)} prompts x {self.num_images_per_prompt}) "
                f"is over the pipeline's maximum of {max_images} per request"
            )

    @property
    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.num_images)]

    def per_image(self, values: tuple[T, ...]) -> list[T]:
        """Expand a per-prompt tuple to one entry per image, in diffusers' order (prompt-major)."""
        return [v for v in values for _ in range(self.num_images_per_prompt)]


def strength_steps(steps: int, strength: float) -> int:
    """Steps image-to-image runs: int(steps * strength) as diffusers, but at least one, as the web UI runs."""
    return max(1, min(int(steps * strength), steps))


def _check_int(name: str, value: object, low: int, high: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} {excerpt(value)} is not an integer")
    if high is None and value < low:
        raise ValueError(f"{name} {value} must be at least {low}")
    if high is not None and not low <= value <= high:
        raise ValueError(f"{name} {value} is outside {low}..{high}")
