"""Every API's fields -> one validated GenerationRequest and its batch key, before any engine work."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

from PIL import Image

from sdrt.components import TEXT_ENCODER
from sdrt.runtime.image_inputs import size_from_image
from sdrt.runtime.latents import random_seed
from sdrt.runtime.pipeline import Pipeline
from sdrt.runtime.prompts import tokenize_prompts
from sdrt.runtime.request import GenerationRequest
from sdrt.serve.config import ServeConfig
from sdrt.serve.errors import InputError, from_runtime


def build_request(
    pipe: Pipeline,
    config: ServeConfig,
    *,
    prompts: Sequence[str],
    negative_prompts: Sequence[str] | None = None,
    height: int | None = None,
    width: int | None = None,
    steps: int,
    guidance_scales: Sequence[float] = (7.5,),
    seed: int | None = None,
    num_images_per_prompt: int = 1,
    scheduler: str | None = None,
    eta: float = 0.0,
    clip_skip: int = 0,
    image: Image.Image | None = None,
    mask_image: Image.Image | None = None,
    strength: float | None = None,
    names: Mapping[str, str] | None = None,
) -> tuple[GenerationRequest, Hashable]:
    """A request checked against the server's limits and the artifact, with its batch key; InputError otherwise.

    Defaults follow Pipeline.generate: negative prompts "", one guidance scale or negative prompt for all
    prompts, size from the input image (rounded down to the latent factor) or the artifact's tuned size,
    strength 0.8 (image-to-image) or 1.0 (inpainting), a random seed. `names` maps sdrt's field names to
    the API's, so errors name the field the client sent.
    """
    names = names or {}

    def named(field: str) -> str:
        return names.get(field, field)

    prompts = tuple(prompts)
    negatives = ("",) * len(prompts) if negative_prompts is None else tuple(negative_prompts)
    if len(negatives) == 1:
        negatives *= len(prompts)
    scales = tuple(guidance_scales)
    if len(scales) == 1:
        scales *= len(prompts)
    for field, texts in (("prompt", prompts), ("negative_prompt", negatives)):
        for text in texts:
            if isinstance(text, str) and len(text) > config.max_prompt_chars:
                raise InputError(
                    named(field),
                    f"{named(field)} is {len(text)} characters, over this server's limit of {config.max_prompt_chars}",
                )
    if isinstance(steps, int) and not 1 <= steps <= config.max_steps:
        field = named("num_inference_steps")
        raise InputError(field, f"{field} {steps} is outside 1..{config.max_steps} (this server's limit)")
    images = len(prompts) * num_images_per_prompt if isinstance(num_images_per_prompt, int) else 0
    if images > config.max_images:
        raise InputError(
            named("num_images_per_prompt"),
            f"{images} images ({len(prompts)} prompts x {num_images_per_prompt}) is over this server's limit of "
            f"{config.max_images} images per request",
        )
    ranges = pipe.manifest.ranges
    default_height = default_width = ranges.opt_size
    if image is not None:
        default_height, default_width = size_from_image(image, ranges.latent_factor)
        if strength is None:
            strength = 1.0 if mask_image is not None else 0.8
    try:
        request = GenerationRequest(
            prompts=prompts,
            negative_prompts=negatives,
            height=default_height if height is None else height,
            width=default_width if width is None else width,
            steps=steps,
            guidance_scales=scales,
            seed=random_seed() if seed is None else seed,
            num_images_per_prompt=num_images_per_prompt,
            scheduler=scheduler,
            eta=eta,
            clip_skip=clip_skip,
            image=image,
            mask_image=mask_image,
            strength=strength,
        )
    except ValueError as exc:
        raise from_runtime(exc, names) from exc
    # Pipeline.check refuses prompts longer than the text axis too, but names every text "prompt": check
    # each field first so the error names the one the client sent
    text = pipe.engines[TEXT_ENCODER].ranges
    for field, texts in (("prompt", request.prompts), ("negative_prompt", request.negative_prompts)):
        try:
            tokenize_prompts(pipe.tokenizer, texts, text.text_length, text.max_text_chunks)
        except ValueError as exc:
            raise InputError(named(field), f"{named(field)}: {exc}") from exc
    try:
        pipe.check(request)
    except ValueError as exc:
        raise from_runtime(exc, names) from exc
    return request, pipe.batch_key(request)
