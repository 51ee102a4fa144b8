"""The OpenAPI schema as this server really answers: its limits, its error statuses, its content types.

FastAPI describes the request models and a 422; this adds what a schema-driven client or fuzzer needs to
know: the server's own limits (steps, images, prompt length, and once the engines are loaded the artifact's
sizes) on the fields that carry them, the 400/413/429/500/503 answers, PNG bodies and the metrics' text.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

_ERROR = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}}}
_RETRY = {"Retry-After": {"description": "seconds after which to try again", "schema": {"type": "integer"}}}
ERRORS = {
    "400": {"description": "the body cannot be parsed (not UTF-8 JSON)"},
    "413": {"description": "the body is over the server's --max-body-mb", **_ERROR},
    "429": {"description": "the queue is full (--max-queue)", "headers": _RETRY, **_ERROR},
    "500": {
        "description": "the engine failed on this request (alone: a failed batch is retried per request)",
        **_ERROR,
    },
    "503": {"description": "the engines are loading, or the server is shutting down", "headers": _RETRY, **_ERROR},
}
GENERATION = ("/v1/generate", "/v1/images/generations", "/sdapi/v1/txt2img", "/sdapi/v1/img2img")
_JSON_OBJECT = {"application/json": {"schema": {"type": "object"}}}
CONTENT = {
    "/v1/generate": {**_JSON_OBJECT, "image/png": {"schema": {"type": "string", "format": "binary"}}},
    "/sdapi/v1/txt2img": _JSON_OBJECT,
    "/sdapi/v1/img2img": _JSON_OBJECT,
    "/metrics": {"text/plain; version=0.0.4": {"schema": {"type": "string"}}},
}


def install(app: FastAPI, state: Any) -> None:
    """Make `app.openapi()` state this server's limits and answers (recomputed: the artifact loads later)."""

    def schema() -> dict:
        doc = get_openapi(title=app.title, version=app.version, routes=app.routes, description=app.description)
        for path, item in doc.get("paths", {}).items():
            for operation in item.values():
                responses = operation.setdefault("responses", {})
                if path in GENERATION:
                    for status, answer in ERRORS.items():
                        responses.setdefault(status, answer)
                elif path.startswith("/sdapi/"):
                    responses.setdefault("503", ERRORS["503"])
                if path in CONTENT:
                    responses.setdefault("200", {"description": "OK"})["content"] = CONTENT[path]
        _limits(doc.get("components", {}).get("schemas", {}), state)
        return doc

    app.openapi = schema  # type: ignore[method-assign]


def _limits(schemas: dict, state: Any) -> None:
    config = state.config
    steps = {"minimum": 1, "maximum": config.max_steps}
    images = {"minimum": 1, "maximum": config.max_images}
    prompt = {"maxLength": config.max_prompt_chars}
    fields = {
        "GenerateBody": {"steps": steps, "num_images_per_prompt": images},
        "Txt2ImgBody": {"steps": steps, "batch_size": images, "n_iter": images, "hr_second_pass_steps": steps},
        "Img2ImgBody": {"steps": steps, "batch_size": images, "n_iter": images},
        "ImagesBody": {},
    }
    pipe = state.pipeline
    for name, extra in fields.items():
        extra = {**extra, "prompt": prompt, "negative_prompt": prompt}
        if pipe is not None and name != "ImagesBody":
            ranges = pipe.manifest.ranges
            size = {"minimum": ranges.min_size, "maximum": ranges.max_size, "multipleOf": ranges.latent_factor}
            extra.update(height=size, width=size)
        properties = schemas.get(name, {}).get("properties", {})
        for field, limits in extra.items():
            if field in properties:
                _constrain(properties[field], limits)


def _constrain(prop: dict, limits: dict) -> None:
    """Put `limits` on a property, or on the matching branch of an anyOf (an optional field)."""
    branches = prop.get("anyOf")
    if branches:
        for branch in branches:
            if branch.get("type") in ("integer", "number", "string") or "$ref" not in branch and "items" in branch:
                branch.update(_for_type(branch, limits))
        return
    prop.update(_for_type(prop, limits))


def _for_type(prop: dict, limits: dict) -> dict:
    kind = prop.get("type")
    if kind == "string":
        return {k: v for k, v in limits.items() if k == "maxLength"}
    if kind in ("integer", "number"):
        return {k: v for k, v in limits.items() if k != "maxLength"}
    if kind == "array":  # a list of prompts: the limit is on each
        prop.setdefault("items", {}).update(_for_type(prop.get("items", {}), limits))
    return {}
