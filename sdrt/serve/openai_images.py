"""OpenAI's images API: POST /v1/images/generations and (unCLIP models) /v1/images/variations, as base64 PNGs."""

from __future__ import annotations

import re
import time
from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from sdrt.excerpt import excerpt
from sdrt.runtime.pipeline import Pipeline
from sdrt.serve.codec import decode_image_bytes, encode_all
from sdrt.serve.errors import InputError
from sdrt.serve.fields import Int
from sdrt.serve.generation import build_request

router = APIRouter()

_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")
OPENAI_MODELS = ("dall-e-", "gpt-image-")  # prefixes of OpenAI's own image models
_NAMES = {"prompt": "prompt", "num_images_per_prompt": "n", "height": "size", "width": "size"}

# field -> values sdrt honours (None: absent); anything else would change the image in a way sdrt cannot
_HONOURED = {
    "quality": (None, "auto", "standard"),
    "style": (None,),
    "output_format": (None, "png"),
    "background": (None, "auto", "opaque"),
    "output_compression": (None, 100),
    "stream": (None, False),
    "partial_images": (None, 0),
}


class ImagesBody(BaseModel):
    """OpenAI's image-generation request; `model` picks one of the server's models, `user` is ignored."""

    model_config = ConfigDict(extra="forbid")

    prompt: str
    model: str | None = Field(
        None,
        description="a model of GET /sdapi/v1/sd-models (name, title or hash); OpenAI's own names (dall-e-*, "
        "gpt-image-*) and none mean the server's default model",
    )
    n: Int | None = Field(1, ge=1, le=10)
    size: str | None = Field(None, description="WxH in pixels or auto; default the artifact's tuned size")
    response_format: str | None = Field(None, description="b64_json (the default here); url is not offered")
    quality: str | None = None
    style: str | None = None
    user: str | None = None
    output_format: str | None = None
    background: str | None = None
    moderation: str | None = None  # sdrt runs no moderation model; the field is accepted and has no effect
    output_compression: int | None = None
    stream: bool | None = None
    partial_images: int | None = None


def _size(value: str | None, opt_size: int) -> tuple[int, int]:
    """(height, width) from "WxH", or the artifact's tuned size for None or "auto"."""
    if value is None or value == "auto":
        return opt_size, opt_size
    match = _SIZE.match(value)
    if match is None:
        raise InputError("size", f"size {excerpt(value)} is not WIDTHxHEIGHT in pixels (e.g. 512x512) or auto")
    return int(match.group(2)), int(match.group(1))


def _check_response_format(value: str | None) -> None:
    if value not in (None, "b64_json"):
        raise InputError(
            "response_format",
            f"response_format {excerpt(value)} is not supported: this server keeps no images to link to; use b64_json",
        )


def _model(value: str | None) -> str | None:
    """The model an OpenAI request names; OpenAI's own model names (clients send them by habit) are the default."""
    if value is not None and value.startswith(OPENAI_MODELS):
        return None
    return value


def _check_serves(pipe: Pipeline, variations: bool) -> None:
    """400 for the endpoint the loaded model cannot serve: variations need unCLIP, generations a text-to-image model."""
    if variations and not pipe.family.image_conditioned:
        raise InputError(
            "image",
            f"image variations need an unCLIP model (family unclip); this server runs a {pipe.family.description}: "
            "use /v1/images/generations",
            status=400,
        )
    if not variations and pipe.family.image_conditioned:
        raise InputError(
            "prompt",
            f"this server runs a {pipe.family.description}, which makes variations of an image: use "
            "/v1/images/variations",
            status=400,
        )


@router.post("/v1/images/generations")
async def generations(body: ImagesBody, http: Request) -> dict:
    state = http.app.state.sdrt
    _check_response_format(body.response_format)
    for field, allowed in _HONOURED.items():
        value = getattr(body, field)
        if value not in allowed:
            shown = ", ".join(repr(v) for v in allowed if v is not None) or "nothing"
            raise InputError(field, f"{field} {excerpt(value)} is not supported by this server; it accepts {shown}")
    served = await state.use(http, _model(body.model))
    _check_serves(served.pipeline, variations=False)

    def build(pipe: Pipeline):
        height, width = _size(body.size, pipe.manifest.ranges.opt_size)
        params = dict(prompt=body.prompt, height=height, width=width, num_images_per_prompt=body.n or 1)
        if state.config.default_steps is not None:
            params["num_inference_steps"] = state.config.default_steps
        return build_request(pipe, state.config, params, names=_NAMES)

    completed = await state.generate(http, "openai", build, served)
    encoded = await run_in_threadpool(encode_all, completed.result)
    return {"created": int(time.time()), "data": [{"b64_json": b64} for b64 in encoded]}


@router.post("/v1/images/variations")
async def variations(
    http: Request,
    image: Annotated[UploadFile, File(description="the image to vary: PNG, JPEG or WebP")],
    n: Annotated[int, Form(ge=1, le=10, description="images to make")] = 1,
    size: Annotated[str | None, Form(description="WxH in pixels; default the artifact's tuned size")] = None,
    response_format: Annotated[str | None, Form(description="b64_json (the default here); url is not offered")] = None,
    model: Annotated[
        str | None, Form(description="a model of GET /sdapi/v1/sd-models; OpenAI's names and none: the default")
    ] = None,
    user: Annotated[str | None, Form(description="accepted and ignored")] = None,
) -> dict:
    """OpenAI's image variations, from an unCLIP model: the image's CLIP embedding conditions every image."""
    state = http.app.state.sdrt
    _check_response_format(response_format)
    served = await state.use(http, _model(model))
    _check_serves(served.pipeline, variations=True)
    data = await image.read()

    def build(pipe: Pipeline):
        height, width = _size(size, pipe.manifest.ranges.opt_size)
        params = dict(height=height, width=width, num_images_per_prompt=n, image=decode_image_bytes(data, "image"))
        if state.config.default_steps is not None:
            params["num_inference_steps"] = state.config.default_steps
        return build_request(pipe, state.config, params, names=_NAMES)

    completed = await state.generate(http, "openai_variations", build, served)
    encoded = await run_in_threadpool(encode_all, completed.result)
    return {"created": int(time.time()), "data": [{"b64_json": b64} for b64 in encoded]}
