"""sdrt serve with an SDXL refiner: the web UI's refiner_checkpoint / refiner_switch_at, and the native API."""

from __future__ import annotations

import json

import httpx
import pytest

from sdrt.serve import ServeConfig, create_app
from tests.serve.conftest import MAX_PIXEL_DIFF, decode_png, max_diff, running

SETTINGS = {"width": 72, "height": 64, "steps": 6, "seed": 9, "cfg_scale": 5.0, "sampler_name": "Euler a"}


@pytest.fixture(scope="module")
def server(sdxl_pipelines):
    with running(create_app(sdxl_pipelines["onnxruntime"], ServeConfig(max_wait_ms=10))) as url:
        yield url


def test_web_ui_refiner_fields_run_the_ensemble(server, sdxl_pipelines):
    pipe = sdxl_pipelines["onnxruntime"]
    refiner = next(m["title"] for m in httpx.get(f"{server}/sdapi/v1/sd-models").json() if "refiner" in m["title"])
    body = {"prompt": "a lighthouse", **SETTINGS, "refiner_checkpoint": refiner, "refiner_switch_at": 0.7}
    response = httpx.post(f"{server}/sdapi/v1/txt2img", json=body, timeout=120)
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert f"Refiner: {refiner}, Refiner switch at: 0.7" in info["infotexts"][0]
    alone = pipe.generate(
        "a lighthouse", width=72, height=64, num_inference_steps=6, seed=9, guidance_scale=5.0, scheduler="euler_a",
        refiner_switch_at=0.7,
    )  # fmt: skip
    assert max_diff(decode_png(response.json()["images"][0]), alone.images[0]) <= MAX_PIXEL_DIFF


def test_refiner_checkpoint_errors_name_the_field(server):
    url = f"{server}/sdapi/v1/txt2img"
    wrong = httpx.post(url, json={"prompt": "x", **SETTINGS, "refiner_checkpoint": "nope", "refiner_switch_at": 0.8})
    assert wrong.status_code == 422 and wrong.json()["detail"][0]["loc"] == ["body", "refiner_checkpoint"]
    assert "is not the refiner this server runs" in wrong.json()["detail"][0]["msg"]
    refiner = next(m["title"] for m in httpx.get(f"{server}/sdapi/v1/sd-models").json() if "refiner" in m["title"])
    missing = httpx.post(url, json={"prompt": "x", **SETTINGS, "refiner_checkpoint": refiner})
    assert missing.status_code == 422 and "refiner_switch_at is required" in missing.json()["detail"][0]["msg"]
    bad = httpx.post(url, json={"prompt": "x", **SETTINGS, "refiner_checkpoint": refiner, "refiner_switch_at": 2})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "refiner_switch_at"]


def test_native_api_takes_refiner_switch_at(server):
    body = {"prompt": "a lighthouse", "width": 72, "height": 64, "steps": 6, "seed": 9, "refiner_switch_at": 0.7}
    response = httpx.post(f"{server}/v1/generate", json=body, timeout=120)
    assert response.status_code == 200, response.text
    assert "Refiner switch at: 0.7" in response.json()["images"][0]["parameters"]
    assert "CFG scale: 5," in response.json()["images"][0]["parameters"]  # SDXL's default guidance


def test_a_server_without_a_refiner_refuses_refiner_requests(serve_pipeline):
    with running(create_app(serve_pipeline, ServeConfig(max_wait_ms=10))) as url:
        body = {"prompt": "x", "width": 64, "height": 64, "steps": 2, "refiner_checkpoint": "refiner"}
        response = httpx.post(f"{url}/sdapi/v1/txt2img", json=body)
        assert response.status_code == 422
        assert "this server runs no refiner (start it with --refiner)" in response.json()["detail"][0]["msg"]
