"""The web UI API's listings, options and PNG info: what this server really serves, in the web UI's shapes.

Listings name only what runs here: the samplers, the models (and a refiner), the upscalers (those that need no
weights and the files of `--upscaler-dir`), the prompt styles of `--styles`, the img2img script it runs ("SD
upscale"); extra networks in `sdrt.serve.extra_networks`. Face restorers and Real-ESRGAN's built-in models are empty
lists: sdrt has none, and a request that asks for one is refused with a 422 saying so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from sdrt.runtime.images import parse_infotext
from sdrt.schedulers import sampler_choices
from sdrt.serve import a1111_settings
from sdrt.serve.catalog import CatalogEntry
from sdrt.serve.codec import decode_image

router = APIRouter(prefix="/sdapi/v1")

SCHEDULERS = ("automatic", "uniform", "karras")


@router.get("/samplers")
async def samplers() -> list[dict]:
    return [{"name": label, "aliases": [name], "options": {}} for name, label in sampler_choices()]


@router.get("/schedulers")
async def schedulers() -> list[dict]:
    return [
        {"name": name, "label": name.capitalize(), "aliases": None, "default_rho": -1, "need_inner_model": False}
        for name in SCHEDULERS
    ]


def _listed(entry: CatalogEntry) -> dict:
    return {
        "title": entry.title,
        "model_name": entry.name,
        "hash": entry.sha256[:10],
        "sha256": entry.sha256,
        "filename": entry.name,  # the artifact directory's name; the server's paths stay private
        "config": None,
    }


@router.get("/sd-models")
async def sd_models(http: Request) -> list[dict]:
    """Every model served (loaded or not; not one whose files are unreadable), then a loaded refiner."""
    state = http.app.state.sdrt
    listed = [_listed(entry) for entry in state.catalog.servable()]
    pipe = state.pipeline
    if pipe is not None and pipe.refiner is not None:  # a refiner_checkpoint
        refiner = pipe.refiner
        listed.append(
            _listed(CatalogEntry(refiner.name, refiner.path or Path(refiner.name), refiner.manifest.source_sha256))
        )
    return listed


@router.post("/refresh-checkpoints")
async def refresh_checkpoints(http: Request) -> dict:
    """Scan the artifacts again: new ones are listed and served, changed ones reload when next asked for, removed
    ones are unloaded once idle; models that failed to load may be tried again."""
    return await http.app.state.sdrt.refresh()


@router.get("/options")
async def get_options(http: Request) -> dict:
    state = http.app.state.sdrt
    return a1111_settings.read_options(state.entry(http), state.options)


@router.post("/options")
async def set_options(options: dict[str, Any], http: Request) -> None:
    """Settings are shared by every client, as in the web UI; only those that exist here can be written.

    `sd_model_checkpoint` makes a model the default, loaded before the answer, as the web UI loads it."""
    state = http.app.state.sdrt
    name = options.get("sd_model_checkpoint")
    served = await state.use(http, name, "sd_model_checkpoint") if name is not None else await state.use(http)
    a1111_settings.write_options(served.pipeline, state.options, options)
    if name is not None:
        state.default = served.name


@router.get("/cmd-flags")
async def cmd_flags(http: Request) -> dict:
    """The server's settings, under the web UI's flag names where it has one."""
    config = http.app.state.sdrt.config
    return {
        "api": True,
        "nowebui": True,
        "styles_file": [] if not config.styles else ["--styles"],
        "max_batch": config.max_batch,
        "max_wait_ms": config.max_wait_ms,
        "max_queue": config.max_queue,
        "max_body_bytes": config.max_body_bytes,
        "max_prompt_chars": config.max_prompt_chars,
        "max_steps": config.max_steps,
        "max_images": config.max_images,
    }


@router.get("/upscalers")
async def upscalers(http: Request) -> list[dict]:
    """The image upscalers: those that need no weights, then the files of --upscaler-dir by stem, each with its
    true scale (read from its weights) and its file's name (never the server's path)."""
    from sdrt.runtime.hires import IMAGE_UPSCALERS

    listed = [
        {"name": name, "model_name": None, "model_path": None, "model_url": None, "scale": 4}
        for name in ("None", *IMAGE_UPSCALERS)
    ]
    library = http.app.state.sdrt.require_pipeline().upscalers
    if library is not None:
        entries = await run_in_threadpool(library.entries)  # the first listing reads each file's weights
        listed += [
            {"name": e.name, "model_name": e.architecture, "model_path": e.path.name, "model_url": None,
             "scale": e.scale}
            for e in entries
        ]  # fmt: skip
    return listed


@router.get("/latent-upscale-modes")
async def latent_upscale_modes() -> list[dict]:
    from sdrt.runtime.hires import LATENT_UPSCALERS

    return [{"name": name} for name in LATENT_UPSCALERS]


@router.get("/prompt-styles")
async def prompt_styles(http: Request) -> list[dict]:
    return [
        {"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt}
        for s in http.app.state.sdrt.config.styles
    ]


@router.get("/face-restorers")
@router.get("/realesrgan-models")
async def none_here() -> list:
    """sdrt has none of these; requests that ask for one are refused with a 422."""
    return []


@router.get("/scripts")
async def scripts() -> dict:
    """The web UI scripts sdrt runs: img2img's "SD upscale"."""
    return {"txt2img": [], "img2img": ["sd upscale"]}


@router.get("/script-info")
async def script_info(http: Request) -> list[dict]:
    """The SD upscale script's arguments, as the web UI describes them (script_args in this order)."""
    from sdrt.runtime.extras import NONE
    from sdrt.runtime.hires import IMAGE_UPSCALERS

    library = http.app.state.sdrt.require_pipeline().upscalers
    upscalers = [NONE, *IMAGE_UPSCALERS, *([] if library is None else await run_in_threadpool(library.names))]
    args = [
        {"label": "", "value": None},
        {"label": "Tile overlap", "value": 64, "minimum": 0, "maximum": 256, "step": 16},
        {"label": "Upscaler", "value": NONE, "choices": upscalers},
        {"label": "Scale Factor", "value": 2.0, "minimum": 1.0, "maximum": 4.0, "step": 0.05},
    ]
    return [{"name": "sd upscale", "is_alwayson": False, "is_img2img": True, "args": args}]


class PngInfoBody(BaseModel):
    image: str


@router.post("/png-info")
async def png_info(body: PngInfoBody) -> dict:
    """The PNG's text chunks: `info` is its `parameters` infotext, `parameters` that infotext read back."""
    image = decode_image(body.image, "image", mode=None)  # a decompression bomb is refused as every input image
    items = {k: v for k, v in getattr(image, "text", {}).items() if isinstance(v, str)}
    info = items.pop("parameters", "")
    return {"info": info, "items": items, "parameters": parse_infotext(info) if info else {}}


@router.get("/progress")
async def progress(http: Request, skip_current_image: bool = False) -> dict:
    """The running batch: share of its steps done, seconds left, job counts, and a cheap latent preview."""
    batcher = http.app.state.sdrt.require_batcher()
    return batcher.progress.snapshot(batcher.queued, with_image=not skip_current_image)


@router.post("/interrupt")
async def interrupt(http: Request) -> dict:
    """Stop the caller's running job at the next step; it answers with the images it has then."""
    return _stop(http, skip=False)


@router.post("/skip")
async def skip(http: Request) -> dict:
    """As /interrupt: a job here is one request, so skipping its current image ends it too."""
    return _stop(http, skip=True)


def _stop(http: Request, skip: bool) -> dict:
    batcher = http.app.state.sdrt.require_batcher()
    caller = http.client.host if http.client is not None else None
    return {"stopping": batcher.progress.stop(caller, skip=skip)}
