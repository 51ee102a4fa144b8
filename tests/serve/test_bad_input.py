"""Bad input gets a 4xx naming the field and what is allowed; nothing a client sends reads files or stops the server."""

from __future__ import annotations

import base64
import io

import httpx
import pytest
from PIL import Image

from sdrt.serve import ServeConfig, create_app
from tests.serve.conftest import png_b64, running

GOOD = {"prompt": "a cat", "height": 64, "width": 64, "steps": 2, "seed": 1}


@pytest.fixture(scope="module")
def server(serve_pipeline):
    config = ServeConfig(max_wait_ms=0, max_body_bytes=200_000, max_prompt_chars=1000, max_steps=50, max_images=4)
    with running(create_app(serve_pipeline, config)) as url:
        yield url


def _bomb() -> str:
    """A small PNG that claims 5000 x 5000 pixels: over the decompression-bomb limit once decoded."""
    out = io.BytesIO()
    Image.new("1", (5000, 5000)).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def _image(size=(64, 64)) -> str:
    return png_b64(Image.new("RGB", size, (200, 30, 30)))


@pytest.mark.parametrize(
    ("fields", "field", "says"),
    [
        ({"height": 68}, "height", "not a multiple of 8"),
        ({"width": 512}, "width", "outside the artifact's range 64..256"),
        ({"width": 32}, "width", "outside the artifact's range 64..256"),
        ({"steps": 0}, "steps", "outside 1..50"),
        ({"steps": 51}, "steps", "outside 1..50"),
        ({"steps": 2.5}, "steps", "integer"),
        ({"steps": True}, "steps", "is a boolean; give a number"),
        ({"num_images_per_prompt": True}, "num_images_per_prompt", "boolean"),
        ({"num_images_per_prompt": 5}, "num_images_per_prompt", "limit of 4"),
        ({"num_images_per_prompt": 0}, "num_images_per_prompt", "at least 1"),
        ({"prompt": ["a", "b", "c"], "num_images_per_prompt": 2}, "num_images_per_prompt", "limit of 4"),
        ({"scheduler": "warp_drive"}, "scheduler", "known: ddim"),
        ({"guidance_scale": [7.0, 2.0]}, "guidance_scale", "2 entries for 1 prompts"),
        ({"seed": -3}, "seed", "outside 0.."),
        ({"clip_skip": 40}, "clip_skip", "outside 0.."),
        ({"eta": 2.0}, "eta", "outside 0..1"),
        ({"strength": 0.5}, "strength", "needs an input image"),
        ({"prompt": "x" * 1001}, "prompt", "limit of 1000"),
        ({"prompt": "a," * 200}, "prompt", "at most 4 chunks"),
        ({"negative_prompt": "b," * 200}, "negative_prompt", "at most 4 chunks"),
        ({"image": "this is not base64!"}, "image", "not valid base64"),
        ({"image": base64.b64encode(b"GIF89a but not really").decode()}, "image", "cannot be read as an image"),
        ({"image": "/etc/passwd"}, "image", "not fetched from URLs or paths"),
        ({"image": "file:///etc/passwd"}, "image", "not fetched from URLs or paths"),
        ({"image": "https://example.com/cat.png"}, "image", "not fetched from URLs or paths"),
        ({"image": _bomb()}, "image", "pixels allowed"),
        ({"image": _image(), "mask_image": _image((32, 32))}, "mask_image", "give a mask of the image's size"),
        ({"mask_image": _image()}, "mask_image", "needs an image"),
        ({"response_format": "png", "num_images_per_prompt": 2}, "response_format", "returns one image"),
        ({"response_format": "tiff"}, "response_format", "b64_json"),
        ({"upscale": True}, "upscale", "Extra inputs are not permitted"),
    ],
)
def test_bad_fields_get_422_naming_the_field(server, fields, field, says):
    response = httpx.post(f"{server}/v1/generate", json={**GOOD, **fields})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"][:2] == ["body", field]
    assert says in detail["msg"]


def test_malformed_bodies_and_oversized_bodies(server):
    url = f"{server}/v1/generate"
    bad_json = httpx.post(url, content=b'{"prompt": "a cat", ', headers={"content-type": "application/json"})
    assert bad_json.status_code == 422 and "JSON" in bad_json.text
    nan = httpx.post(
        url, content=b'{"prompt": "a cat", "guidance_scale": NaN}', headers={"content-type": "application/json"}
    )
    assert nan.status_code == 422 and nan.json()["detail"][0]["loc"] == ["body", "guidance_scale"]
    big = httpx.post(url, json={**GOOD, "image": "A" * 300_000})
    assert big.status_code == 413 and "limit of 200000 bytes" in big.text

    def chunks():  # no Content-Length: the limit holds while the body streams in
        yield b'{"prompt": "'
        for _ in range(30):
            yield b"x" * 10_000
        yield b'"}'

    streamed = httpx.post(url, content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413
    # and after all that the server still serves
    assert httpx.get(f"{server}/health").status_code == 200
    assert httpx.post(url, json=GOOD, timeout=60).status_code == 200
    metrics = httpx.get(f"{server}/metrics").text
    assert 'sdrt_rejections_total{reason="too_large"} 2.0' in metrics


def test_png_info_refuses_a_decompression_bomb(server):
    # 5000 x 5000 is over sdrt's input limit; 20000 x 20000 is over PIL's own (which raised past the handler: a 500)
    for size in (5000, 20000):
        out = io.BytesIO()
        Image.new("1", (size, size)).save(out, format="PNG")
        bomb = base64.b64encode(out.getvalue()).decode()
        response = httpx.post(f"{server}/sdapi/v1/png-info", json={"image": bomb}, timeout=60)
        assert response.status_code == 422, response.text
        detail = response.json()["detail"][0]
        assert detail["loc"] == ["body", "image"] and "pixels" in detail["msg"]
    readable = httpx.post(f"{server}/sdapi/v1/png-info", json={"image": _image()})
    assert readable.status_code == 200 and readable.json()["info"] == ""
