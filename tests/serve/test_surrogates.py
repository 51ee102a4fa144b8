"""A lone surrogate in every string field and as every key of every endpoint: a 4xx or an answer, never a 500.

The cases come from the server's own OpenAPI schema, so a route or field added later is covered without editing
this file: every string (or list of strings) field gets "\\ud800", every object field and every body gets a key
"\\ud800", form fields get the bytes UTF-8 would have for it, query parameters the same percent-encoded.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from PIL import Image

from sdrt.serve import ServeConfig, create_app
from tests.serve.conftest import png_b64, running

SURROGATE = "\ud800"
SURROGATE_BYTES = b"\xed\xa0\x80"  # what an encoder that lets lone surrogates through (WTF-8) sends
IMAGE = png_b64(Image.new("RGB", (64, 64), (90, 140, 200)))
SMALL = {"width": 64, "height": 64, "steps": 1, "seed": 1}

# a valid, cheap body per endpoint, so that a field the endpoint ignores runs a one-step generation
BASES: dict[str, dict[str, Any]] = {
    "/v1/generate": {"prompt": "a cat", **SMALL},
    "/sdapi/v1/txt2img": {"prompt": "a cat", **SMALL},
    "/sdapi/v1/img2img": {"prompt": "a cat", "init_images": [IMAGE], "denoising_strength": 0.5, **SMALL},
    "/v1/images/generations": {"prompt": "a cat", "size": "64x64"},
    "/sdapi/v1/png-info": {"image": IMAGE},
    "/sdapi/v1/options": {},
}
# where the issue found a 500: a lone surrogate key of override_settings and of the options body
MUST_REFUSE = {("/sdapi/v1/txt2img", "override_settings"), ("/sdapi/v1/img2img", "override_settings")}


@pytest.fixture(scope="module")
def app(serve_pipeline):
    return create_app(serve_pipeline, ServeConfig(max_wait_ms=0))


@pytest.fixture(scope="module")
def server(app):
    with running(app) as url:
        yield url


def _resolve(schema: dict, doc: dict) -> dict:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _branches(schema: dict, doc: dict) -> list[dict]:
    return [_resolve(b, doc) for b in schema.get("anyOf", [schema])]


def _values(schema: dict, doc: dict, depth: int = 0) -> list[tuple[str, Any]]:
    """(what, value) pairs with a lone surrogate for a field of this schema: as text, in a list, as a key."""
    out: list[tuple[str, Any]] = []
    for branch in _branches(schema, doc):
        kind = branch.get("type")
        if kind == "string":
            out.append(("text", SURROGATE))
        elif kind == "array" and _resolve(branch.get("items", {}), doc).get("type") == "string":
            out.append(("text in a list", [SURROGATE]))
        elif kind == "object" or "properties" in branch:
            out.append(("key", {SURROGATE: 1}))
            for name, sub in branch.get("properties", {}).items() if depth < 2 else ():
                out += [(f"{name}: {what}", {name: value}) for what, value in _values(sub, doc, depth + 1)]
    return out


def _json_cases(doc: dict) -> list[tuple[str, str, str, dict]]:
    cases = []
    for path, item in doc["paths"].items():
        operation = item.get("post")
        content = (operation or {}).get("requestBody", {}).get("content", {})
        if "application/json" not in content:
            continue
        schema = _resolve(content["application/json"]["schema"], doc)
        base = BASES.get(path, {})
        cases.append((path, "(body)", "key", {**base, SURROGATE: 1}))
        for field, sub in schema.get("properties", {}).items():
            values = _values(sub, doc) or [("text in a field of another type", SURROGATE)]
            for what, value in values:
                cases.append((path, field, what, {**base, field: value}))
    return cases


def test_every_json_field_and_key_of_every_endpoint(app, server):
    doc = app.openapi()
    cases = _json_cases(doc)
    assert len(cases) > 150  # every field of txt2img, img2img, generate, OpenAI's, options, png-info, ...
    refused, answered, failures = 0, 0, []
    with httpx.Client(timeout=120) as client:
        for path, field, what, body in cases:
            text = json.dumps(body)  # ASCII: the surrogate travels as the escape \ud800, as JSON allows
            response = client.post(f"{server}{path}", content=text, headers={"content-type": "application/json"})
            if response.status_code >= 500 or not _json(response):
                failures.append(f"{path} {field} ({what}): {response.status_code} {response.text[:200]}")
            elif (path, field) in MUST_REFUSE and what == "key" and response.status_code != 422:
                failures.append(f"{path} {field} ({what}): {response.status_code}, not refused")
            refused += 400 <= response.status_code < 500
            answered += response.status_code == 200
        options = client.post(
            f"{server}/sdapi/v1/options",
            content=json.dumps({SURROGATE: 1}),
            headers={"content-type": "application/json"},
        )
    assert not failures, "\n".join(failures)
    assert refused > 100 and answered > 10  # a text field an endpoint ignores is accepted (and echoed safely)
    assert options.status_code == 422 and options.json()["detail"][0]["loc"] == ["body", "'\\ud800'"]


def test_override_settings_keys_and_the_options_body(server):
    for path, base in (
        ("/sdapi/v1/txt2img", BASES["/sdapi/v1/txt2img"]),
        ("/sdapi/v1/img2img", BASES["/sdapi/v1/img2img"]),
    ):
        body = json.dumps({**base, "override_settings": {SURROGATE: "x", "CLIP_stop_at_last_layers": 1}})
        response = httpx.post(f"{server}{path}", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 422, response.text
        detail = response.json()["detail"][0]
        assert detail["loc"] == ["body", "override_settings", "'\\ud800'"]
        assert "override_settings.'\\ud800' 'x' is not supported by sdrt" in detail["msg"]


def test_form_fields_and_query_parameters(app, server):
    doc = app.openapi()
    checked = 0
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "query":
                    response = httpx.request(method, f"{server}{path}?{parameter['name']}=%ED%A0%80", timeout=60)
                    assert response.status_code < 500 and _json(response), (path, parameter["name"], response.text)
                    checked += 1
            form = operation.get("requestBody", {}).get("content", {}).get("multipart/form-data")
            if form is None:
                continue
            schema = _resolve(form["schema"], doc)
            for field, sub in schema.get("properties", {}).items():
                if any(b.get("format") == "binary" for b in _branches(sub, doc)):
                    continue
                files = {"image": ("p.png", Image_bytes(), "image/png")}
                response = httpx.post(f"{server}{path}", files=files, data={field: SURROGATE_BYTES}, timeout=60)
                assert response.status_code < 500 and _json(response), (path, field, response.text)
                checked += 1
    assert checked >= 5


def Image_bytes() -> bytes:  # noqa: N802  (a helper named for what it returns)
    import base64

    return base64.b64decode(IMAGE)


def _json(response: httpx.Response) -> bool:
    if not response.headers.get("content-type", "").startswith("application/json"):
        return True
    try:
        response.json()
    except ValueError:
        return False
    return True
