"""Hostile input answers 4xx before any engine work, echoing at most a short excerpt of the bad value."""

from __future__ import annotations

import base64
import io
import json

import httpx
import pytest
from PIL import Image

from sdrt.serve import ServeConfig, create_app
from tests.runtime.test_img2img import input_image
from tests.serve.conftest import decode_png, metric, png_b64, running

TXT2IMG = {"prompt": "a cat", "width": 64, "height": 64, "steps": 2, "seed": 3}


@pytest.fixture(scope="module")
def server(serve_pipeline):
    with running(create_app(serve_pipeline, ServeConfig(max_wait_ms=0, max_images=8))) as url:
        yield url


def _post(server: str, path: str, body: dict | str) -> httpx.Response:
    if isinstance(body, str):  # raw JSON text: escapes such as \ud800 that a dict cannot hold as UTF-8
        return httpx.post(f"{server}{path}", content=body, headers={"content-type": "application/json"}, timeout=120)
    return httpx.post(f"{server}{path}", json=body, timeout=120)


def _unit_count(server: str) -> float:
    return metric(httpx.get(f"{server}/metrics").text, "sdrt_batch_images_count")


SURROGATE = {
    "/v1/generate": '{"prompt": "a \\ud800 cat", "height": 64, "width": 64, "steps": 2}',
    "/v1/images/generations": '{"prompt": "a \\ud800 cat", "size": "64x64"}',
    "/sdapi/v1/txt2img": '{"prompt": "a \\ud800 cat", "width": 64, "height": 64, "steps": 2}',
    "/sdapi/v1/txt2img#negative": '{"prompt": "a cat", "negative_prompt": "\\udfff", "width": 64, "height": 64}',
}


@pytest.mark.parametrize("path", SURROGATE)
def test_a_lone_surrogate_is_refused_on_every_endpoint(server, path):
    before = _unit_count(server)
    response = _post(server, path.split("#")[0], SURROGATE[path])
    assert response.status_code == 422, response.text
    assert "lone surrogate" in response.json()["detail"][0]["msg"]
    assert response.json()["detail"][0]["loc"][1] in ("prompt", "negative_prompt")
    assert _unit_count(server) == before  # refused before any engine work


@pytest.mark.parametrize("field", ["script_args", "comments", "alwayson_scripts", "override_settings"])
def test_deep_nesting_in_an_echoed_field_is_refused_before_work(server, field):
    nested: object = []
    for _ in range(300):
        nested = [nested]
    value = nested if field == "script_args" else {"x": nested}
    before = _unit_count(server)
    response = _post(server, "/sdapi/v1/txt2img", {**TXT2IMG, field: value})
    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", field] and "levels deep; at most 32" in detail["msg"]
    assert _unit_count(server) == before


def test_echoed_text_with_a_surrogate_cannot_break_the_answer(server):
    # a free-form echoed field (comments) holding a lone surrogate comes back escaped, not as a 500
    body = '{"prompt": "a cat", "width": 64, "height": 64, "steps": 1, "comments": {"note": "\\ud83d"}}'
    response = _post(server, "/sdapi/v1/txt2img", body)
    assert response.status_code == 200, response.text
    assert json.loads(response.text)["parameters"]["comments"] == {"note": "\ud83d"}


def test_raw_base64_jpeg_without_a_data_prefix(server):
    out = io.BytesIO()
    input_image(64, 64, seed=2).save(out, format="JPEG")
    raw = base64.b64encode(out.getvalue()).decode()
    assert raw.startswith("/9j/")
    body = {**TXT2IMG, "init_images": [raw], "denoising_strength": 0.5}
    response = _post(server, "/sdapi/v1/img2img", body)
    assert response.status_code == 200, response.text
    assert _post(server, "/v1/generate", {**TXT2IMG, "image": raw, "strength": 0.5}).status_code == 200
    # a path is still refused as one
    path = _post(server, "/sdapi/v1/img2img", {**body, "init_images": ["/etc/passwd"]})
    assert path.status_code == 422 and "not fetched from URLs or paths" in path.json()["detail"][0]["msg"]


def test_errors_echo_a_short_excerpt_of_a_bad_value(server):
    huge = "9" * 5_000_000
    response = _post(server, "/v1/images/generations", {"prompt": "a cat", "size": huge})
    assert response.status_code == 422
    assert len(response.content) < 2_000
    assert "(5000000 characters)" in response.json()["detail"][0]["msg"]
    sampler = _post(server, "/sdapi/v1/txt2img", {**TXT2IMG, "sampler_name": "x" * 100_000})
    assert sampler.status_code == 422 and len(sampler.content) < 4_000


def test_a_mask_of_another_size_is_resized_like_the_web_ui(server):
    init = png_b64(input_image(64, 64, seed=1))
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (0, 0, 16, 32))  # the left half, at half the size
    body = {**TXT2IMG, "init_images": [init], "mask": png_b64(mask), "denoising_strength": 0.9, "steps": 3}
    response = _post(server, "/sdapi/v1/img2img", body)
    assert response.status_code == 200, response.text
    assert decode_png(response.json()["images"][0]).size == (64, 64)


def test_one_step_at_strength_three_quarters_runs_one_step(server):
    body = {**TXT2IMG, "init_images": [png_b64(input_image(64, 64))], "steps": 1, "denoising_strength": 0.75}
    response = _post(server, "/sdapi/v1/img2img", body)
    assert response.status_code == 200, response.text
    native = _post(
        server, "/v1/generate", {**TXT2IMG, "image": png_b64(input_image(64, 64)), "steps": 1, "strength": 0.75}
    )
    assert native.status_code == 200 and native.json()["timings"]["steps"] == 1


def test_seed_minus_two_is_a_seed(server):
    first = _post(server, "/sdapi/v1/txt2img", {**TXT2IMG, "seed": -2})
    second = _post(server, "/sdapi/v1/txt2img", {**TXT2IMG, "seed": -2})
    assert first.status_code == 200, first.text
    seed = json.loads(first.json()["info"])["seed"]
    assert seed == 2**64 - 2 and json.loads(second.json()["info"])["seed"] == seed
    assert first.json()["images"] == second.json()["images"]


@pytest.mark.parametrize(
    ("fields", "field", "says"),
    [
        ({"sampler_name": "Euler a", "scheduler": "Karras"}, "scheduler", "not available with sampler_name 'Euler a'"),
        ({"sampler_name": "DPM++ 2M", "scheduler": "Exponential"}, "scheduler", "known: Automatic"),
        ({"batch_size": 2, "n_iter": 5}, "n_iter", "over this server's limit of 8"),
        ({"batch_size": 9}, "batch_size", "over this server's limit of 8"),
        ({"steps": True}, "steps", "boolean"),
        ({"batch_size": False}, "batch_size", "boolean"),
        ({"cfg_scale": True}, "cfg_scale", "boolean"),
        ({"eta": 0.5, "sampler_name": "Euler a"}, "eta", "eta 1 (or eta 0"),
    ],
)
def test_errors_name_the_right_field(server, fields, field, says):
    response = _post(server, "/sdapi/v1/txt2img", {**TXT2IMG, **fields})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", field]
    assert says in detail["msg"]


def test_several_init_images_one_per_batch_item(server):
    images = [png_b64(input_image(64, 64, seed=s)) for s in (1, 2)]
    body = {**TXT2IMG, "init_images": images, "batch_size": 2, "n_iter": 2, "denoising_strength": 0.6, "seed": 10}
    response = _post(server, "/sdapi/v1/img2img", body)
    assert response.status_code == 200, response.text
    assert json.loads(response.json()["info"])["all_seeds"] == [10, 11, 12, 13]
    assert len(response.json()["images"]) == 4
    alone = _post(
        server, "/sdapi/v1/img2img", {**body, "init_images": images[1:], "batch_size": 1, "n_iter": 1, "seed": 13}
    )
    assert alone.json()["images"][0] == response.json()["images"][3]
    too_many = _post(server, "/sdapi/v1/img2img", {**body, "batch_size": 1})
    assert too_many.status_code == 422 and too_many.json()["detail"][0]["loc"] == ["body", "init_images"]


def test_the_openapi_schema_states_the_real_limits_and_answers(server):
    doc = httpx.get(f"{server}/openapi.json").json()
    schemas = doc["components"]["schemas"]
    width = schemas["Txt2ImgBody"]["properties"]["width"]  # optional (the artifact's tuned size): its integer branch
    width = next(b for b in width.get("anyOf", [width]) if b.get("type") == "integer")
    assert (width["minimum"], width["maximum"], width["multipleOf"]) == (64, 256, 8)  # the artifact's range
    assert schemas["Txt2ImgBody"]["properties"]["batch_size"]["maximum"] == 8  # this server's --max-images
    assert schemas["Img2ImgBody"]["properties"]["prompt"]["maxLength"] == 4000
    generate = doc["paths"]["/v1/generate"]["post"]["responses"]
    assert {"400", "413", "422", "429", "500", "503"} <= set(generate)
    assert "Retry-After" in generate["429"]["headers"] and "image/png" in generate["200"]["content"]
    assert list(doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain; version=0.0.4"]
    # and the statuses it states are the ones it gives: a body that is not UTF-8 is a 400
    not_utf8 = httpx.post(
        f"{server}/sdapi/v1/txt2img", content=b'{"prompt": "\xff"}', headers={"content-type": "application/json"}
    )
    assert not_utf8.status_code == 400
    assert httpx.get(f"{server}/metrics").headers["content-type"].startswith("text/plain")
