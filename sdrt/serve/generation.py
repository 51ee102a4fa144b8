"""Every API's fields -> one validated GenerationRequest and its batch key, before any engine work."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

from PIL import Image

from sdrt.runtime.hires import Hires
from sdrt.runtime.pipeline import Pipeline
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
    guidance_scales: Sequence[float] | None = None,
    seed: int | None = None,
    num_images_per_prompt: int = 1,
    scheduler: str | None = None,
    eta: float = 0.0,
    clip_skip: int = 0,
    image: Image.Image | None = None,
    mask_image: Image.Image | None = None,
    strength: float | None = None,
    refiner_switch_at: float | None = None,
    aesthetic_score: float = 6.0,
    negative_aesthetic_score: float = 2.5,
    hires: Hires | None = None,
    names: Mapping[str, str] | None = None,
) -> tuple[GenerationRequest, Hashable]:
    """A request checked against the server's limits and the artifact, with its batch key; InputError otherwise.

    Defaults are Pipeline.request's (those of Pipeline.generate). `names` maps sdrt's field names to the
    API's, so errors name the field the client sent.
    """
    names = names or {}

    def named(field: str) -> str:
        return names.get(field, field)

    prompts = tuple(prompts)
    negatives = ("",) * len(prompts) if negative_prompts is None else tuple(negative_prompts)
    if len(negatives) == 1:
        negatives *= len(prompts)
    scales = None if guidance_scales is None else tuple(guidance_scales)
    if scales is not None and len(scales) == 1:
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
    try:
        request = pipe.request(
            prompts,
            negative_prompt=negatives,
            height=height,
            width=width,
            num_inference_steps=steps,
            guidance_scale=scales,
            seed=seed,
            num_images_per_prompt=num_images_per_prompt,
            scheduler=scheduler,
            eta=eta,
            clip_skip=clip_skip,
            image=image,
            mask_image=mask_image,
            strength=strength,
            refiner_switch_at=refiner_switch_at,
            aesthetic_score=aesthetic_score,
            negative_aesthetic_score=negative_aesthetic_score,
            hires=hires,
        )
    except ValueError as exc:
        raise from_runtime(exc, names) from exc
    return request, pipe.batch_key(request)
