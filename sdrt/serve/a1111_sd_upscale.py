"""The web UI API's img2img "SD upscale" script (`script_name: "sd upscale"`, `script_args: [info, overlap,
upscaler, scale]`): the init image upscaled, every tile redrawn as a request of its own (the batcher runs them
together), the tiles joined (`sdrt.runtime.sd_upscale`). One joined image per `n_iter`, as the web UI returns."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from sdrt.excerpt import excerpt
from sdrt.runtime import extras, sd_upscale
from sdrt.runtime.pipeline import GenerationResult, Pipeline
from sdrt.runtime.request import GenerationRequest
from sdrt.serve.codec import decode_image, png_base64
from sdrt.serve.errors import InputError
from sdrt.serve.generation import build_request
from sdrt.serve.models import Served

NAMES = ("sd upscale",)  # the script's name, as clients send it (case-insensitive)


def requested(body: Any) -> bool:
    return isinstance(body.script_name, str) and body.script_name.strip().casefold() in NAMES


def script(body: Any, pipe: Pipeline) -> sd_upscale.SdUpscale:
    """The script's arguments (the web UI's: info, overlap, upscaler by name or index, scale); InputError otherwise."""
    args = list(body.script_args) + [None] * 4
    overlap, upscaler, scale = args[1], args[2], args[3]
    names = [extras.NONE, *extras.IMAGE_UPSCALERS, *([] if pipe.upscalers is None else pipe.upscalers.names())]
    if isinstance(upscaler, int) and not isinstance(upscaler, bool):  # the web UI's index into its upscaler list
        if not 0 <= upscaler < len(names):
            raise InputError("script_args", f"script_args upscaler index {upscaler} is outside 0..{len(names) - 1}")
        upscaler = names[upscaler]
    elif isinstance(upscaler, str):  # a name, matched as the web UI matches it: case-insensitively
        found = [n for n in names if n.casefold() == upscaler.casefold()]
        if not found:
            raise InputError("script_args", f"script_args upscaler {excerpt(upscaler)} is not served here; served: "
                             f"{', '.join(names)}")  # fmt: skip
        upscaler = found[0]
    elif upscaler is not None:
        raise InputError("script_args", f"script_args upscaler {excerpt(upscaler)} is not a name or an index")
    try:
        return sd_upscale.SdUpscale(
            overlap=64 if overlap is None else overlap,
            upscaler=extras.NONE if upscaler is None else upscaler,
            scale=2.0 if scale is None else scale,
        )
    except ValueError as exc:
        raise InputError("script_args", str(exc)) from exc


async def run(
    body: Any, http: Request, api: str, served: Served, common: Mapping[str, Any], seed: int | None,
    names: Mapping[str, str],
) -> tuple[list[str], list[GenerationResult], list[str]]:  # fmt: skip
    """The joined images (base64 PNGs), every tile's result, and each joined image's infotext."""
    from sdrt.runtime.latents import random_seed

    state = http.app.state.sdrt
    pipe = served.pipeline
    args = script(body, pipe)
    if not body.init_images:
        raise InputError("init_images", "init_images is required: the SD upscale script upscales init_images[0]")
    if body.mask is not None:
        raise InputError("mask", "the SD upscale script redraws the whole image: leave out mask")
    first = seed if seed is not None else random_seed()
    plan_of: dict[str, sd_upscale.Plan] = {}

    def build(pipe: Pipeline) -> list[tuple[GenerationRequest, Hashable]]:
        image = decode_image(body.init_images[0], "init_images")
        try:
            plan = sd_upscale.prepare(image, args, body.width, body.height, pipe.upscalers)
        except ValueError as exc:
            raise InputError("script_args", str(exc)) from exc
        plan_of["plan"] = plan
        built = []
        for n in range(body.n_iter):  # the web UI's upscale_count: each iteration from the next seed
            tile_seeds = sd_upscale.seeds(first + n, len(plan.tiles), body.batch_size)
            for tile, tile_seed in zip(plan.tiles, tile_seeds, strict=True):
                params = {**common, "image": tile, "seed": tile_seed, "num_images_per_prompt": 1}
                built.append(build_request(pipe, state.config, params, names=names))
        if len(built) > state.config.max_images * 16:
            raise InputError("script_args", f"SD upscale makes {len(built)} tile images, over this server's limit "
                             f"of {state.config.max_images * 16}")  # fmt: skip
        return built

    completed = await state.generate_all(http, api, build, served)
    results = [c.result for c in completed]
    plan = plan_of["plan"]
    count = len(plan.tiles)
    images, infotexts = [], []
    fields = sd_upscale.infotext_fields(args)
    for n in range(body.n_iter):
        tiles = results[n * count : (n + 1) * count]
        joined = await run_in_threadpool(sd_upscale.join, plan, [r.images[0] for r in tiles])
        infotext = sd_upscale.with_fields(tiles[0].parameters[0], fields)
        infotexts.append(infotext)
        if body.send_images:
            images.append(await run_in_threadpool(png_base64, joined, infotext))
    return images, results, infotexts
