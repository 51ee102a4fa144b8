"""A real server on 127.0.0.1: concurrent requests share engine batches and get exactly their images alone."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from sdrt.serve import ServeConfig, create_app
from tests.serve.conftest import MAX_PIXEL_DIFF, decode_png, max_diff, metric, running

SMALL = {"height": 64, "width": 64, "steps": 2, "scheduler": "euler_a"}


@pytest.fixture(scope="module")
def server(serve_pipeline):
    app = create_app(serve_pipeline, ServeConfig(max_wait_ms=20))
    with running(app) as url:
        yield url


def _batches(url: str) -> float:
    return metric(httpx.get(f"{url}/metrics").text, "sdrt_batch_images_count")


def test_health_ready_and_metrics(server):
    assert httpx.get(f"{server}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{server}/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    text = httpx.get(f"{server}/metrics").text
    for name in ("sdrt_queue_depth", "sdrt_batch_images", "sdrt_stage_seconds", "sdrt_images_generated_total"):
        assert name in text
    assert 'sdrt_rejections_total{reason="queue_full"}' in text


def test_concurrent_requests_share_batches_and_each_gets_its_image_alone(server):
    bodies = [
        {
            "prompt": f"a {animal} in a field, photo {i}",
            "negative_prompt": "blurry" if i % 2 else "",
            "seed": 1000 + 7 * i,
            "guidance_scale": (7.5, 5.0, 1.0, 12.0)[i % 4],  # 1.0: unguided, no unconditional row
            **SMALL,
        }
        for i, animal in enumerate(["cat", "dog", "fox", "owl"] * 4)
    ]
    before = _batches(server)
    with httpx.Client(timeout=120) as client, ThreadPoolExecutor(len(bodies)) as pool:
        together = list(pool.map(lambda b: client.post(f"{server}/v1/generate", json=b), bodies))
    batches = _batches(server) - before
    assert all(r.status_code == 200 for r in together), [r.text for r in together if r.status_code != 200]
    assert batches < len(bodies)  # shared engine batches
    assert any(r.json()["batch"]["requests"] > 1 for r in together)
    assert all(r.json()["batch"]["images"] <= 2 for r in together)  # the artifact's max batch, the default

    for body, response in zip(bodies, together, strict=True):
        data = response.json()
        assert data["seeds"] == [body["seed"]] and data["images"][0]["seed"] == body["seed"]
        assert set(data["timings"]) >= {"queue", "text_encoder", "unet", "vae_decode", "batch_total", "steps"}
        alone = httpx.post(f"{server}/v1/generate", json=body, timeout=60).json()
        assert alone["batch"]["requests"] == 1
        image, image_alone = decode_png(data["images"][0]["b64_json"]), decode_png(alone["images"][0]["b64_json"])
        assert image.size == (64, 64)
        assert max_diff(image, image_alone) <= MAX_PIXEL_DIFF
        assert image.text["parameters"] == image_alone.text["parameters"] == data["images"][0]["parameters"]


def test_binary_png_response(server):
    response = httpx.post(
        f"{server}/v1/generate", json={"prompt": "a lighthouse", "seed": 5, "response_format": "png", **SMALL}
    )
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.headers["x-sdrt-seed"] == "5"
    image = decode_png(__import__("base64").b64encode(response.content))
    assert "Seed: 5," in image.text["parameters"]


def test_requests_that_cannot_share_each_complete(server):
    """Different steps and sizes are different groups: each is served, none starves."""
    bodies = [
        {"prompt": f"castle {i}", "seed": i, **SMALL, "steps": 2 + i % 3, "height": 64 + 8 * (i % 2)} for i in range(8)
    ]
    with httpx.Client(timeout=120) as client, ThreadPoolExecutor(len(bodies)) as pool:
        responses = list(pool.map(lambda b: client.post(f"{server}/v1/generate", json=b), bodies))
    assert [r.status_code for r in responses] == [200] * len(bodies)
    for body, response in zip(bodies, responses, strict=True):
        assert decode_png(response.json()["images"][0]["b64_json"]).size == (64, body["height"])
