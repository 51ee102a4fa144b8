"""Every API's fields -> one validated GenerationRequest and its batch key, before any engine work."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from sdrt.runtime.pipeline import Pipeline
from sdrt.runtime.request import GenerationRequest
from sdrt.serve.config import ServeConfig
from sdrt.serve.errors import InputError, from_runtime


def build_request(
    pipe: Pipeline,
    config: ServeConfig,
    params: Mapping[str, Any],
    names: Mapping[str, str] | None = None,
) -> tuple[GenerationRequest, Hashable]:
    """A request checked against the server's limits and the artifact, with its batch key; InputError otherwise.

    `params` are `Pipeline.request`'s keywords (the declared request parameters, `sdrt.params`); those left out
    take the pipeline's defaults. `names` maps sdrt's parameter names to the API's, so errors name the field the
    client sent.
    """
    names = names or {}

    def named(field: str) -> str:
        return names.get(field, field)

    prompt = params.get("prompt", "")
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    negative = params.get("negative_prompt")
    negatives = [] if negative is None else [negative] if isinstance(negative, str) else list(negative)
    for field, texts in (("prompt", prompts), ("negative_prompt", negatives)):
        for text in texts:
            if isinstance(text, str) and len(text) > config.max_prompt_chars:
                raise InputError(
                    named(field),
                    f"{named(field)} is {len(text)} characters, over this server's limit of {config.max_prompt_chars}",
                )
    steps = params.get("num_inference_steps")
    if isinstance(steps, int) and not isinstance(steps, bool) and not 1 <= steps <= config.max_steps:
        field = named("num_inference_steps")
        raise InputError(field, f"{field} {steps} is outside 1..{config.max_steps} (this server's limit)")
    per_prompt = params.get("num_images_per_prompt", 1)
    images = len(prompts) * per_prompt if isinstance(per_prompt, int) else 0
    if images > config.max_images:
        raise InputError(
            named("num_images_per_prompt"),
            f"{images} images ({len(prompts)} prompts x {per_prompt}) is over this server's limit of "
            f"{config.max_images} images per request",
        )
    try:
        request = pipe.request(**params)
    except ValueError as exc:
        raise from_runtime(exc, names) from exc
    except TypeError as exc:  # a parameter no pipeline takes: the API let an unknown field through
        raise InputError(None, str(exc)) from exc
    return request, pipe.batch_key(request)
