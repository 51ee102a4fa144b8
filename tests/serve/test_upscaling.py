"""The web UI API's upscalers through `sdrt serve`: the listing, the extras endpoints, and hires fix with a GAN."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from PIL import Image

from sdrt import Hires, Pipeline
from sdrt.runtime import extras
from sdrt.serve import ServeConfig, create_app
from sdrt.upscalers import to_image
from sdrt.upscalers.library import UpscalerLibrary
from tests.serve.conftest import MAX_PIXEL_DIFF, decode_png, max_diff, png_b64, running
from tests.upscalers.conftest import smooth_image


@pytest.fixture(scope="module")
def library(upscaler_dir):
    return UpscalerLibrary(upscaler_dir)


@pytest.fixture(scope="module")
def pipe(serve_pipeline, library):
    return Pipeline(serve_pipeline.model, upscalers=library)


@pytest.fixture(scope="module")
def server(pipe):
    with running(create_app(pipe, ServeConfig(max_wait_ms=10, max_images=4))) as url:
        yield url


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return to_image(smooth_image(36, 44, seed=9)[0])


def test_the_listing_names_each_file_by_stem_with_its_true_scale(server):
    listed = httpx.get(f"{server}/sdapi/v1/upscalers").json()
    assert [u["name"] for u in listed[:3]] == ["None", "Lanczos", "Nearest"]
    files = {u["name"]: u for u in listed[3:]}
    assert files["realesrgan-x2plus"] == {
        "name": "realesrgan-x2plus", "model_name": "ESRGAN", "model_path": "realesrgan-x2plus.safetensors",
        "model_url": None, "scale": 2,
    }  # fmt: skip
    assert {n: u["scale"] for n, u in files.items()} == {
        "compact-x4": 4, "esrgan-bsrgan": 4, "esrgan-original": 4, "realesrgan-x2plus": 2, "realesrgan-x4plus": 4,
        "swinir-x2": 2, "swinir-x4": 4,
    }  # fmt: skip


def test_extra_single_image_upscales_by_a_factor(server, library, photo):
    body = {"image": png_b64(photo), "upscaler_1": "esrgan-original", "upscaling_resize": 2.5}
    response = httpx.post(f"{server}/sdapi/v1/extra-single-image", json=body, timeout=120)
    assert response.status_code == 200, response.text
    got = decode_png(response.json()["image"])
    assert got.size == (110 // 8 * 8, 90 // 8 * 8)  # 2.5x, sides rounded down to multiples of 8, as the web UI
    expected = library.get("esrgan-original").upscale(photo, 2.5)
    assert max_diff(got.convert("RGB"), expected) == 0
    info = "Postprocess upscale by: 2.5, Postprocess upscaler: esrgan-original"
    assert got.text["postprocessing"] == info and info in response.json()["html_info"]


def test_extra_batch_images_to_a_size_with_two_upscalers_blended(server, library, photo):
    other = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    body = {
        "imageList": [{"data": png_b64(photo), "name": "a.png"}, {"data": png_b64(other), "name": "b.png"}],
        "resize_mode": 1, "upscaling_resize_w": 120, "upscaling_resize_h": 80, "upscaling_crop": True,
        "upscaler_1": "swinir-x2", "upscaler_2": "Lanczos", "extras_upscaler_2_visibility": 0.3,
    }  # fmt: skip
    response = httpx.post(f"{server}/sdapi/v1/extra-batch-images", json=body, timeout=120)
    assert response.status_code == 200, response.text
    images = [decode_png(b).convert("RGB") for b in response.json()["images"]]
    request = extras.ExtrasUpscale("swinir-x2", width=120, height=80, upscaler_2="Lanczos", upscaler_2_visibility=0.3)
    for got, source in zip(images, (photo, other), strict=True):
        expected, info = extras.upscale(source, request, library)
        assert got.size == (120, 80) and max_diff(got, expected) == 0
    assert info == {
        "Postprocess upscale to": "120x80", "Postprocess upscaler": "swinir-x2", "Postprocess upscaler 2": "Lanczos",
        "Postprocess crop to": "120x80",
    }  # fmt: skip
    assert np.asarray(images[0])[0, 0].tolist() == [0, 0, 0]  # 44x36 by 2.73 is 120x98: centred, top rows cut


@pytest.mark.parametrize(
    ("change", "field", "says"),
    [
        ({"upscaler_1": "R-ESRGAN 4x+"}, "upscaler_1", "not served here; served: None, Lanczos, Nearest, compact-x4"),
        ({"upscaler_2": "nope", "extras_upscaler_2_visibility": 0.5}, "upscaler_2", "not served here"),
        ({"gfpgan_visibility": 0.5}, "gfpgan_visibility", "face restoration is not available"),
        ({"codeformer_visibility": 1.0}, "codeformer_visibility", "face restoration is not available"),
        ({"upscaling_resize": 9.0}, "upscaling_resize", "outside 1..8"),
        ({"resize_mode": 1, "upscaling_resize_w": 100000}, "upscaling_resize_w", "outside 1..8192"),
        ({"image": "not base64!"}, "image", "not valid base64"),
    ],
)
def test_bad_extras_are_refused_naming_the_field(server, photo, change, field, says):
    body = {"image": png_b64(photo), "upscaler_1": "compact-x4", **change}
    response = httpx.post(f"{server}/sdapi/v1/extra-single-image", json=body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", field] and says in detail["msg"], detail


def test_hires_fix_with_a_gan_upscaler_over_http(server, pipe):
    body = {
        "prompt": "a castle", "width": 64, "height": 64, "steps": 3, "seed": 5, "sampler_name": "Euler",
        "enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "realesrgan-x2plus", "denoising_strength": 0.5,
    }  # fmt: skip
    response = httpx.post(f"{server}/sdapi/v1/txt2img", json=body, timeout=120)
    assert response.status_code == 200, response.text
    got = decode_png(response.json()["images"][0]).convert("RGB")
    hires = Hires(scale=1.5, upscaler="realesrgan-x2plus", strength=0.5)
    alone = pipe.generate("a castle", height=64, width=64, num_inference_steps=3, seed=5, scheduler="euler",
                          guidance_scale=7.0, hires=hires)  # fmt: skip
    assert got.size == (96, 96) and max_diff(got, alone.images[0]) <= MAX_PIXEL_DIFF
    assert "Hires upscaler: realesrgan-x2plus" in json.loads(response.json()["info"])["infotexts"][0]


@pytest.fixture(scope="module")
def x4_server(x4_pipelines):
    with running(create_app(x4_pipelines["onnxruntime"], ServeConfig(max_wait_ms=10))) as url:
        yield url


def test_the_x4_upscaler_over_the_native_api_and_the_web_uis_img2img(x4_server, x4_pipelines):
    from tests.runtime.test_upscaler_x4 import low_res

    image = low_res(seed=4)
    alone = x4_pipelines["onnxruntime"].generate(
        "a house", image=image, noise_level=60, num_inference_steps=3, seed=8, scheduler="euler"
    )
    native = httpx.post(f"{x4_server}/v1/generate", json={
        "prompt": "a house", "image": png_b64(image), "noise_level": 60, "steps": 3, "seed": 8, "scheduler": "euler",
    }, timeout=120)  # fmt: skip
    assert native.status_code == 200, native.text
    got = decode_png(native.json()["images"][0]["b64_json"])
    assert got.size == (96, 64) and max_diff(got.convert("RGB"), alone.images[0]) <= MAX_PIXEL_DIFF
    # the web UI's img2img: init_images[0] is the low-res image, width and height the output's
    body = {"prompt": "a house", "init_images": [png_b64(image)], "steps": 3, "seed": 8, "sampler_name": "Euler",
            "cfg_scale": 9, "width": 96, "height": 64, "denoising_strength": 0.75}  # fmt: skip
    webui = httpx.post(f"{x4_server}/sdapi/v1/img2img", json=body, timeout=120)
    assert webui.status_code == 200, webui.text
    default_level = x4_pipelines["onnxruntime"].generate(
        "a house", image=image, num_inference_steps=3, seed=8, scheduler="euler"
    )  # noise level 20, the model's default
    assert max_diff(decode_png(webui.json()["images"][0]).convert("RGB"), default_level.images[0]) <= MAX_PIXEL_DIFF
    too_noisy = httpx.post(
        f"{x4_server}/v1/generate", json={"prompt": "x", "image": png_b64(image), "noise_level": 400}
    )
    assert too_noisy.status_code == 422 and "over this model's max_noise_level 350" in too_noisy.text


def test_sd_upscale_script_redraws_every_tile_with_the_web_uis_seeds(server, pipe, library):
    """A GAN upscaler by index, two tiles per web UI batch: tile k's seed is seed + k // 2 + k % 2; the result
    equals the tiles run one by one and joined."""
    from sdrt.runtime import sd_upscale

    image = to_image(smooth_image(40, 48, seed=3)[0])
    names = [u["name"] for u in httpx.get(f"{server}/sdapi/v1/upscalers").json()]
    body = {
        "prompt": "a village", "init_images": [png_b64(image)], "denoising_strength": 0.4, "steps": 3, "seed": 30,
        "width": 64, "height": 64, "batch_size": 2, "sampler_name": "Euler", "cfg_scale": 7,
        "script_name": "SD upscale", "script_args": ["", 16, names.index("compact-x4"), 2.5],
    }  # fmt: skip
    response = httpx.post(f"{server}/sdapi/v1/img2img", json=body, timeout=300)
    assert response.status_code == 200, response.text
    got = decode_png(response.json()["images"][0]).convert("RGB")
    script = sd_upscale.SdUpscale(overlap=16, upscaler="compact-x4", scale=2.5)
    plan = sd_upscale.prepare(image, script, 64, 64, library)
    assert plan.size == (120, 96) and plan.grid.count == 6  # 3 x 2 tiles of 64 over the 120x96 upscale
    seeds = sd_upscale.seeds(30, plan.grid.count, 2)
    assert seeds == [30, 31, 31, 32, 32, 33]
    redrawn = [
        pipe.generate("a village", image=tile, strength=0.4, num_inference_steps=3, seed=s, scheduler="euler",
                      guidance_scale=7.0, height=64, width=64).images[0]
        for tile, s in zip(plan.tiles, seeds, strict=True)
    ]  # fmt: skip
    assert got.size == (120, 96) and max_diff(got, sd_upscale.join(plan, redrawn)) <= MAX_PIXEL_DIFF
    info = json.loads(response.json()["info"])
    assert "SD upscale upscaler: compact-x4" in info["infotexts"][0] and "Seed: 30," in info["infotexts"][0]
    bad = httpx.post(f"{server}/sdapi/v1/img2img", json={**body, "script_args": ["", 16, "nope", 2.0]})
    assert bad.status_code == 422 and "script_args upscaler 'nope' is not served here" in bad.text
