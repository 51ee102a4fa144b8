"""sdrt's own API: POST /v1/generate, JSON in, PNGs (base64 in JSON, or one binary PNG) out, with seeds and timings."""

from __future__ import annotations

import json
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from sdrt.runtime.pipeline import Pipeline
from sdrt.serve.batcher import Completed
from sdrt.serve.codec import decode_image, encode_all, png_bytes
from sdrt.serve.errors import InputError
from sdrt.serve.fields import Int
from sdrt.serve.generation import build_request

router = APIRouter()

# sdrt's runtime names -> this API's names, for error messages
_NAMES = {"num_inference_steps": "steps"}


class GenerateBody(BaseModel):
    """The request: Pipeline.generate's arguments, with input images as base64."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | list[str] = Field(description="prompt, or a list of prompts; web UI emphasis syntax")
    negative_prompt: str | list[str] | None = Field(None, description="one for all prompts, or one per prompt")
    height: Int | None = Field(None, description="pixels; default the input image's or the artifact's tuned size")
    width: Int | None = Field(None, description="pixels; default the input image's or the artifact's tuned size")
    steps: Int | None = Field(None, description="denoising steps; default the server's --default-steps (30)")
    guidance_scale: float | list[float] | None = Field(
        None, description="one for all prompts, or one per prompt; default the model family's (7.5; SDXL 5)"
    )
    seed: Int | None = Field(None, description="seed of the first image; image i uses seed + i; default random")
    num_images_per_prompt: Int = 1
    scheduler: str | None = Field(None, description="sampler name or web UI label; default the model's own")
    eta: float = Field(0.0, description="DDIM eta")
    clip_skip: Int = Field(0, description="diffusers' numbering: 1 is the web UI's 'CLIP skip 2'")
    image: str | None = Field(None, description="base64 input image: image-to-image, or inpainting with mask_image")
    mask_image: str | None = Field(None, description="base64 inpainting mask of the image's size: white is repainted")
    strength: float | None = Field(None, description="with an image: share of the schedule run, 0..1")
    refiner_switch_at: float | None = Field(
        None, description="with a refiner (sdrt serve --refiner): share of the steps the base runs, 0 < F < 1"
    )
    aesthetic_score: float = Field(6.0, description="SDXL refiner: the aesthetic score to ask for")
    negative_aesthetic_score: float = Field(2.5, description="SDXL refiner: the unconditional rows' score")
    response_format: Literal["b64_json", "png"] = Field(
        "b64_json", description="b64_json: JSON with base64 PNGs; png: the PNG itself (one image only)"
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
async def generate(body: GenerateBody, http: Request) -> Response:
    state = http.app.state.sdrt
    config = state.config

    def build(pipe: Pipeline):
        image = None if body.image is None else decode_image(body.image, "image")
        mask = None if body.mask_image is None else decode_image(body.mask_image, "mask_image", mode="L")
        negatives = body.negative_prompt
        scales = body.guidance_scale
        request, key = build_request(
            pipe,
            config,
            prompts=[body.prompt] if isinstance(body.prompt, str) else body.prompt,
            negative_prompts=[negatives] if isinstance(negatives, str) else negatives,
            height=body.height,
            width=body.width,
            steps=config.default_steps if body.steps is None else body.steps,
            guidance_scales=scales if isinstance(scales, list) or scales is None else [scales],
            seed=body.seed,
            num_images_per_prompt=body.num_images_per_prompt,
            scheduler=body.scheduler,
            eta=body.eta,
            clip_skip=body.clip_skip,
            image=image,
            mask_image=mask,
            strength=body.strength,
            refiner_switch_at=body.refiner_switch_at,
            aesthetic_score=body.aesthetic_score,
            negative_aesthetic_score=body.negative_aesthetic_score,
            names=_NAMES,
        )
        if body.response_format == "png" and request.num_images != 1:
            raise InputError(
                "response_format",
                f"response_format png returns one image, but this request makes {request.num_images}; "
                "use b64_json for several",
            )
        return request, key

    completed = await state.generate(http, "native", build)
    result = completed.result
    timings = timings_json(completed)
    if body.response_format == "png":
        headers = {"X-Sdrt-Seed": str(result.seeds[0]), "X-Sdrt-Timings": json.dumps(timings)}
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
            "seeds": result.seeds,
            "timings": timings,
            "batch": {"requests": completed.batch_requests, "images": completed.batch_images},
        }
    )
