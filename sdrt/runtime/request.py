"""A generation request (text-to-image, image-to-image, inpainting, variations), validated before any engine runs.

The request holds what every generation has (prompts, size, steps, guidance, seed, sampler, input images) and
the runtime's features (hires fix, refiner hand-off); parameters a model family declares (unCLIP's noise
level, the SDXL refiner's aesthetic scores) are in `options`, read with `option(name)`, so no family's fields
live here. A pass the workflow makes (a refiner pass, a hires second pass) is a request too, with its input
latents and where it starts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from PIL import Image

from sdrt.conditioning.lora_prompts import HypernetTags, LoraTags, request_hypernetworks, request_loras
from sdrt.conditioning.prompts import PromptTokens
from sdrt.excerpt import check_text, excerpt
from sdrt.lazy import deferred
from sdrt.runtime.control import Control
from sdrt.runtime.deep_cache import DeepCache
from sdrt.runtime.hires import Hires
from sdrt.runtime.image_inputs import check_mask_matches
from sdrt.runtime.latents import MAX_SEED
from sdrt.runtime.params import CORE
from sdrt.schedulers import check_sampler

if TYPE_CHECKING:
    import torch
else:
    torch = deferred("torch")

T = TypeVar("T")
_CORE = {p.name: p for p in CORE}
STAGES = ("base", "refiner")


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
    strength: float | None = None  # with an image: share of the schedule run, 0 < s <= 1
    # the input image (or its embedding) conditions the model instead of starting its latents (unCLIP variations)
    image_conditions: bool = False
    refiner_switch_at: float | None = None  # base + refiner: share of the schedule the base runs, 0 < F < 1
    hires: Hires | None = None  # text-to-image: the web UI's hires fix, a second pass at a larger size
    tiling: bool = False  # seamless tiling: the UNet's and VAE's convolutions pad circularly (runtime.seamless)
    control: tuple[Control, ...] = ()  # ControlNet units, their hints made (Pipeline.request opens them)
    guess_mode: bool = False  # diffusers' guess mode for every unit: conditional rows only, logspace scales
    deep_cache: DeepCache | None = None  # DeepCache step caching (None: every step runs the whole UNet)
    # parameters model families declare (sdrt.params), by name: every one of the pipeline's, defaults filled in
    options: Mapping[str, Any] = field(default_factory=dict, compare=False)
    # a later pass (the workflow's): latents in instead of an image, (images, C, h, w), scaled
    init_latents: torch.Tensor | None = field(default=None, compare=False, repr=False)
    stage: str = "base"  # whose model runs the request: "base", or "refiner" for the refiner's pass
    # the refiner's pass begins where this share of the schedule is done, from init_latents as they are
    denoising_start: float | None = None
    # a later pass continues its images' random streams (diffusers' refiner draws on from the base's generators)
    generator_states: tuple[torch.Tensor, ...] | None = field(default=None, compare=False, repr=False)
    calls_before: int = 0  # UNet calls earlier passes made: prompt-editing schedules count on from there
    steps_before: int = 0  # steps earlier passes ran: a step callback's index goes on from there
    # tokenizer key -> the prompts' tokens, made once when the request is checked (Pipeline.request)
    tokens: Mapping[str, PromptTokens] = field(default_factory=dict, compare=False, repr=False)
    # the LoRAs its prompts name (<lora:name:weight>), one set for the request: read from the prompts
    loras: LoraTags = field(init=False, default=())
    # the hypernetwork chain its prompts name (<hypernet:name:multiplier>), in order: read from the prompts
    hypernetworks: HypernetTags = field(init=False, default=())
    # the pass that follows (hires, refiner) as checked: its input is made when this pass ends
    next_pass: GenerationRequest | None = field(default=None, compare=False, repr=False)
    plan: Any = field(default=None, compare=False, repr=False)  # the runtime's Plan, computed once when checked

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
        object.__setattr__(self, "hypernetworks", request_hypernetworks(self.prompts, self.negative_prompts))
        _CORE["num_inference_steps"].check(self.steps)
        _CORE["num_images_per_prompt"].check(self.num_images_per_prompt)
        for scale in self.guidance_scales:
            if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
                raise ValueError(f"guidance_scale {excerpt(scale)} is not a finite number")
        if not math.isfinite(self.eta) or not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"eta {excerpt(self.eta)} is outside 0..1")
        _check_seed(self.seed, self.num_images)
        check_sampler(self.scheduler)
        _CORE["clip_skip"].check(self.clip_skip)
        switch = self.refiner_switch_at
        if switch is not None and (
            isinstance(switch, bool) or not isinstance(switch, (int, float)) or not 0.0 < switch < 1.0
        ):
            raise ValueError(f"refiner_switch_at {excerpt(switch)} is outside 0 < F < 1 (the share the base runs)")
        if not isinstance(self.tiling, bool):
            raise ValueError(f"tiling {excerpt(self.tiling)} is not true or false")
        if self.stage not in STAGES:
            raise ValueError(f"stage {excerpt(self.stage)} is not one of {', '.join(STAGES)}")
        if self.denoising_start is not None and self.init_latents is None:
            raise ValueError("denoising_start continues latents: give init_latents")
        self._check_images()
        self._check_control()
        if self.deep_cache is not None and not isinstance(self.deep_cache, DeepCache):
            raise ValueError(f"deep_cache {excerpt(self.deep_cache)} is not a DeepCache")

    def _check_control(self) -> None:
        for i, unit in enumerate(self.control):
            if not isinstance(unit, Control):
                raise ValueError(f"control[{i}] {excerpt(unit)} is not a Control unit")
            if unit.hint is None:
                raise ValueError(f"control[{i}] has no hint: make the request with Pipeline.request, which reads it")
        if not isinstance(self.guess_mode, bool):
            raise ValueError(f"guess_mode {excerpt(self.guess_mode)} is not true or false")

    def _check_images(self) -> None:
        if self.hires is not None and not isinstance(self.hires, Hires):
            raise ValueError(f"hires {excerpt(self.hires)} is not a Hires")
        if self.hires is not None and self.mode != "txt2img":
            raise ValueError(
                "hires fixes text-to-image: leave out image (an input image is upscaled by img2img itself)"
            )
        if self.hires is not None and self.refiner_switch_at is not None:
            raise ValueError("hires runs the base model in both passes: leave out refiner_switch_at")
        if self.init_latents is not None and (self.image is not None or self.mask_image is not None):
            raise ValueError("init_latents replace the input image: give one of image and init_latents, no mask")
        if self.mask_image is not None and self.image is None:
            raise ValueError("mask_image needs an image to inpaint: give image as well")
        if self.image_conditions:
            if self.mask_image is not None:
                raise ValueError(
                    "inpainting needs a strength, but this model's input image conditions it (a variation): "
                    "leave out mask_image"
                )
            if self.strength is not None or self.init_latents is not None:
                raise ValueError("this model's input image conditions it (a variation): leave out strength")
            return
        if self.init_latents is not None and self.strength is None and self.denoising_start is None:
            raise ValueError("init_latents need a strength: the share of the schedule image-to-image runs")
        if self.image is None and self.init_latents is None:
            if self.strength is not None:
                raise ValueError(f"strength {self.strength} needs an input image (image-to-image or inpainting)")
            return
        if self.image is not None and self.strength is None:
            raise ValueError("an input image needs a strength: the share of the schedule image-to-image runs")
        if self.mask_image is not None:
            check_mask_matches(self.image, self.mask_image)
        strength = self.strength
        if strength is None:  # a refiner pass: its window, not a strength, says where it starts
            return
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength {excerpt(strength)} is outside 0..1")
        if strength == 0:
            raise ValueError("strength 0 runs no step: give strength above 0 (the share of the steps to run)")

    @property
    def num_images(self) -> int:
        return len(self.prompts) * self.num_images_per_prompt

    @property
    def mode(self) -> str:
        """ "txt2img", "img2img", "inpaint", or "variation" (an image, or its embedding, conditions the model)."""
        if self.image_conditions:
            return "variation"
        if self.image is None and self.init_latents is None:
            return "txt2img"
        return "img2img" if self.mask_image is None else "inpaint"

    def option(self, name: str) -> Any:
        """The value of a parameter a model family declares (None when this request's pipeline has no such one)."""
        return self.options.get(name)

    @property
    def steps_run(self) -> int:
        """Denoising steps actually run: all of them, or int(steps * strength) with an input image."""
        return self.steps if self.strength is None else strength_steps(self.steps, self.strength)

    @property
    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.num_images)]

    def per_image(self, values: tuple[T, ...]) -> list[T]:
        """Expand a per-prompt tuple to one entry per image, in diffusers' order (prompt-major)."""
        return [v for v in values for _ in range(self.num_images_per_prompt)]


def strength_steps(steps: int, strength: float) -> int:
    """Steps image-to-image runs: int(steps * strength) as diffusers, but at least one, as the web UI runs."""
    return max(1, min(int(steps * strength), steps))


def _check_seed(seed: object, images: int) -> None:
    """The seed, and the last image's (seed + images - 1), must be torch seeds."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed {excerpt(seed)} is not an integer")
    last = MAX_SEED - images + 1
    if not 0 <= seed <= last:
        raise ValueError(f"seed {seed} is outside 0..{last}")
