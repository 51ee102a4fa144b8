"""sdrt's own API: POST /v1/generate, JSON in, PNGs (base64 in JSON, or one binary PNG) out, with seeds and timings."""

from __future__ import annotations

import json
from typing import Literal

import torch
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from sdrt.runtime.params import all_params
from sdrt.runtime.pipeline import Pipeline
from sdrt.serve.batcher import Completed
from sdrt.serve.codec import decode_image, encode_all, png_bytes
from sdrt.serve.errors import InputError
from sdrt.serve.fields import api_names, body_model, body_params
from sdrt.serve.generation import build_request

router = APIRouter()

PARAMS = all_params()
_NAMES = api_names(PARAMS)  # sdrt's names -> this API's, for error messages

# the request: Pipeline.generate's parameters, each declared once (sdrt.params), with input images as base64
GenerateBody = body_model(
    "GenerateBody",
    PARAMS,
    "The request: Pipeline.generate's parameters (the runtime's, its features' and every model family's), input "
    "images as base64. Fields left out take the pipeline's defaults; one the served model does not take is a 422.",
    response_format=(
        Literal["b64_json", "png"],
        Field("b64_json", description="b64_json: JSON with base64 PNGs; png: the PNG itself (one image only)"),
    ),
    model=(
        str | None,
        Field(
            None,
            description="the model to run (a name, title or hash of GET /sdapi/v1/sd-models); default: the "
            "server's default model",
        ),
    ),
)


def timings_json(completed: Completed) -> dict:
    """Seconds per stage of the batch this request ran in, plus its own wait in the queue."""
    t = completed.result.timings
    return {
        "queue": completed.queue_seconds,
        "text_encoder": t.text_encoder,
        "vae_encode": t.vae_encode,
        "unet": t.unet,
        "scheduler": t.scheduler,
        "vae_decode": t.vae_decode,
        "batch_total": t.total,
        "steps": t.steps,
    }


@router.post("/v1/generate")
async def generate(body: GenerateBody, http: Request) -> Response:  # type: ignore[valid-type]
    state = http.app.state.sdrt
    config = state.config

    def build(pipe: Pipeline):
        def image(b64: str, field: str):
            return decode_image(b64, field, mode="L" if field == "mask_image" else "RGB")

        params = body_params(body, PARAMS, image, lambda values: torch.tensor(values, dtype=torch.float32))
        if "num_inference_steps" not in params and config.default_steps is not None:
            params["num_inference_steps"] = config.default_steps
        request, key = build_request(pipe, config, params, names=_NAMES)
        if body.response_format == "png" and request.num_images != 1:
            raise InputError(
                "response_format",
                f"response_format png returns one image, but this request makes {request.num_images}; "
                "use b64_json for several",
            )
        return request, key

    served = await state.use(http, body.model)
    completed = await state.generate(http, "native", build, served)
    result = completed.result
    timings = timings_json(completed)
    if body.response_format == "png":
        headers = {
            "X-Sdrt-Seed": str(result.seeds[0]),
            "X-Sdrt-Timings": json.dumps(timings),
            "X-Sdrt-Model": served.name,
        }
        png = await run_in_threadpool(png_bytes, result.images[0], result.parameters[0])
        return Response(png, media_type="image/png", headers=headers)
    encoded = await run_in_threadpool(encode_all, result)
    images = [
        {"b64_json": b64, "seed": seed, "parameters": parameters}
        for b64, seed, parameters in zip(encoded, result.seeds, result.parameters, strict=True)
    ]
    return JSONResponse(
        {
            "images": images,
            "model": served.name,
            "seeds": result.seeds,
            "timings": timings,
            "batch": {"requests": completed.batch_requests, "images": completed.batch_images},
        }
    )
