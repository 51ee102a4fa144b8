"""OpenAI's POST /v1/images/variations through the official `openai` client, and the web UI's img2img on unCLIP."""

from __future__ import annotations

import io

import httpx
import pytest

from sdrt.serve import ServeConfig, create_app
from tests.runtime.test_img2img import input_image
from tests.serve.conftest import MAX_PIXEL_DIFF, decode_png, max_diff, png_b64, running


@pytest.fixture(scope="module")
def unclip_server(unclip_pipelines):
    with running(create_app(unclip_pipelines["onnxruntime"], ServeConfig(max_wait_ms=10, default_steps=4))) as url:
        yield url


def _png(image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def test_openai_client_creates_variations(unclip_server, unclip_pipelines):
    from openai import OpenAI

    client = OpenAI(base_url=f"{unclip_server}/v1", api_key="unused", max_retries=0)
    image = input_image(seed=9)
    response = client.images.create_variation(
        image=("photo.png", _png(image), "image/png"), n=2, size="104x72", response_format="b64_json", user="u1"
    )
    assert len(response.data) == 2
    images = [decode_png(item.b64_json) for item in response.data]
    assert images[0].size == (104, 72)
    seed = int(images[0].text["parameters"].split("Seed: ")[1].split(",")[0])
    alone = unclip_pipelines["onnxruntime"].generate(
        image=image, height=72, width=104, num_inference_steps=4, seed=seed, num_images_per_prompt=2
    )
    for ours, theirs in zip(images, alone.images, strict=True):
        assert max_diff(ours, theirs) <= MAX_PIXEL_DIFF


def test_variations_errors(unclip_server, serve_pipeline):
    from openai import BadRequestError, OpenAI, UnprocessableEntityError

    client = OpenAI(base_url=f"{unclip_server}/v1", api_key="unused", max_retries=0)
    with pytest.raises(UnprocessableEntityError, match="response_format 'url' is not supported"):
        client.images.create_variation(image=("p.png", _png(input_image()), "image/png"), response_format="url")
    with pytest.raises(UnprocessableEntityError, match="cannot be read as an image"):
        client.images.create_variation(image=("p.png", b"GIF89a not really", "image/png"))
    with pytest.raises(BadRequestError, match="makes variations of an image: use /v1/images/variations"):
        client.images.generate(prompt="a cat")
    # a server of a text-to-image model cannot make variations: 400 naming what it needs
    with running(create_app(serve_pipeline, ServeConfig(max_wait_ms=10))) as url:
        other = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        with pytest.raises(BadRequestError, match="image variations need an unCLIP model"):
            other.images.create_variation(image=("p.png", _png(input_image()), "image/png"))


def test_web_ui_img2img_makes_variations_of_the_init_image(unclip_server, unclip_pipelines):
    image = input_image(seed=11)
    body = {"init_images": [png_b64(image)], "steps": 4, "cfg_scale": 10, "seed": 21, "width": 104, "height": 72,
            "sampler_name": "Euler a", "denoising_strength": 0.75}  # fmt: skip
    response = httpx.post(f"{unclip_server}/sdapi/v1/img2img", json=body, timeout=120)
    assert response.status_code == 200, response.text
    alone = unclip_pipelines["onnxruntime"].generate(
        image=image, height=72, width=104, num_inference_steps=4, seed=21, scheduler="euler_a"
    )
    assert max_diff(decode_png(response.json()["images"][0]), alone.images[0]) <= MAX_PIXEL_DIFF
    txt2img = httpx.post(f"{unclip_server}/sdapi/v1/txt2img", json={"prompt": "x", "width": 64, "height": 64})
    assert txt2img.status_code == 400 and "use /sdapi/v1/img2img with init_images" in txt2img.text
