"""The web UI API's "Extras": upscaling single images and batches with the server's upscalers.

`POST /sdapi/v1/extra-single-image` and `/extra-batch-images` take the web UI's fields: upscale by
`upscaling_resize` (resize_mode 0) or to `upscaling_resize_w` x `upscaling_resize_h` (resize_mode 1, centred and
cropped with `upscaling_crop`), with `upscaler_1` and optionally `upscaler_2` blended in at
`extras_upscaler_2_visibility`. Upscalers are the files of `--upscaler-dir` by stem (GET /sdapi/v1/upscalers),
Lanczos and Nearest. Face restoration (GFPGAN, CodeFormer) is not available: asking for it is a 422.
"""

from __future__ import annotations

import html
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.concurrency import run_in_threadpool

from sdrt.runtime import extras
from sdrt.serve.a1111 import ascii_json
from sdrt.serve.codec import decode_image, png_base64
from sdrt.serve.errors import InputError
from sdrt.serve.fields import Float, Int

router = APIRouter(prefix="/sdapi/v1")


class _ExtrasBody(BaseModel):
    """The web UI's ExtrasBaseRequest, with its defaults."""

    model_config = ConfigDict(extra="ignore")

    resize_mode: Literal[0, 1] = Field(0, description="0: by upscaling_resize; 1: to upscaling_resize_w x _h")
    show_extras_results: bool = True
    gfpgan_visibility: Float = 0.0
    codeformer_visibility: Float = 0.0
    codeformer_weight: Float = 0.0
    upscaling_resize: Float = Field(2.0, description=f"upscale factor, 1..{extras.MAX_SCALE:g}")
    upscaling_resize_w: Int = 512
    upscaling_resize_h: Int = 512
    upscaling_crop: bool = True
    upscaler_1: str = Field("None", description="None, Lanczos, Nearest, or a name of GET /sdapi/v1/upscalers")
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: Float = 0.0
    upscale_first: bool = False

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data):
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data


class ExtrasSingleImageBody(_ExtrasBody):
    image: str = Field("", description="base64 image (a data: URL prefix is allowed)")


class FileData(BaseModel):
    data: str  # base64 image
    name: str = ""


class ExtrasBatchImagesBody(_ExtrasBody):
    imageList: list[FileData] = Field(default_factory=list, description="base64 images with their names")  # noqa: N815


def _request(body: _ExtrasBody, upscalers) -> extras.ExtrasUpscale:
    """The upscale the body asks for, checked against what this server serves; InputError naming the field."""
    for field in ("gfpgan_visibility", "codeformer_visibility"):
        if getattr(body, field) > 0:
            raise InputError(field, f"{field} {getattr(body, field):g} is not supported by sdrt: face restoration "
                             "is not available (GET /sdapi/v1/face-restorers)")  # fmt: skip
    to_size = body.resize_mode == 1
    for field in ("upscaling_resize_w", "upscaling_resize_h"):
        if to_size and not 1 <= getattr(body, field) <= extras.MAX_SIDE:
            raise InputError(field, f"{field} {getattr(body, field)} is outside 1..{extras.MAX_SIDE}")
    try:
        request = extras.ExtrasUpscale(
            upscaler_1=body.upscaler_1,
            scale=body.upscaling_resize if not to_size else 1.0,
            width=body.upscaling_resize_w if to_size else 0,
            height=body.upscaling_resize_h if to_size else 0,
            crop=body.upscaling_crop,
            upscaler_2=body.upscaler_2,
            upscaler_2_visibility=body.extras_upscaler_2_visibility,
        )
        extras.check(request, upscalers)
    except ValueError as exc:
        message = str(exc)
        field = message.split(maxsplit=1)[0]
        known = {"upscaling_resize", "upscaler_1", "upscaler_2", "extras_upscaler_2_visibility"}
        raise InputError(field if field in known else None, message) from exc
    return request


def _upscaled(images: list[str], names: list[str], request: extras.ExtrasUpscale, upscalers) -> tuple[list[str], str]:
    """Each base64 image decoded, upscaled and encoded with its postprocessing infotext; the first's infotext."""
    out, infos = [], []
    for b64, field in zip(images, names, strict=True):
        image = decode_image(b64, field)
        try:
            result, info = extras.upscale(image, request, upscalers)
        except ValueError as exc:
            raise InputError(field, str(exc)) from exc
        text = extras.infotext(info)
        out.append(png_base64(result, text, key="postprocessing"))
        infos.append(text)
    return out, infos[0] if infos else ""


def _html(info: str) -> str:
    return f"<p>{html.escape(info)}</p>" if info else ""


@router.post("/extra-single-image")
async def extra_single_image(body: ExtrasSingleImageBody, http: Request) -> Response:
    pipe = http.app.state.sdrt.require_pipeline()
    request = _request(body, pipe.upscalers)
    if not body.image:
        raise InputError("image", "image is required: give one base64 image")
    images, info = await run_in_threadpool(_upscaled, [body.image], ["image"], request, pipe.upscalers)
    return ascii_json({"html_info": _html(info), "image": images[0]})


@router.post("/extra-batch-images")
async def extra_batch_images(body: ExtrasBatchImagesBody, http: Request) -> Response:
    state = http.app.state.sdrt
    pipe = state.require_pipeline()
    request = _request(body, pipe.upscalers)
    if not body.imageList:
        raise InputError("imageList", "imageList is required: give at least one {data, name} image")
    if len(body.imageList) > state.config.max_images:
        raise InputError("imageList", f"imageList has {len(body.imageList)} images, over this server's limit of "
                         f"{state.config.max_images} per request")  # fmt: skip
    names = [f"imageList.{i}.data" for i in range(len(body.imageList))]
    data = [item.data for item in body.imageList]
    images, info = await run_in_threadpool(_upscaled, data, names, request, pipe.upscalers)
    return ascii_json({"html_info": _html(info), "images": images})
