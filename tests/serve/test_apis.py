"""The web UI's API and OpenAI's images API, answered for requests shaped as their own documentation shapes them."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from PIL import Image

from sdrt.serve import ServeConfig, create_app
from tests.runtime.test_img2img import input_image
from tests.serve.conftest import MAX_PIXEL_DIFF, decode_png, max_diff, png_b64, running


@pytest.fixture(scope="module")
def server(serve_pipeline):
    with running(create_app(serve_pipeline, ServeConfig(max_wait_ms=10, default_steps=3))) as url:
        yield url


def _mask() -> Image.Image:
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[16:48, 8:40] = 255
    return Image.fromarray(mask, mode="L")


def test_web_ui_txt2img_defaults(server):
    # the web UI wiki's first example, {"prompt": ..., "steps": 5}: its 512x512 default is outside this artifact
    response = httpx.post(f"{server}/sdapi/v1/txt2img", json={"prompt": "maltese puppy", "steps": 5})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "height"]
    assert "outside the artifact's range 64..256" in response.json()["detail"][0]["msg"]

    response = httpx.post(
        f"{server}/sdapi/v1/txt2img", json={"prompt": "maltese puppy", "steps": 2, "width": 64, "height": 64}
    )
    assert response.status_code == 200
    data = response.json()
    assert set(data) == {"images", "parameters", "info"} and len(data["images"]) == 1
    info = json.loads(data["info"])
    assert info["sampler_name"] == "Euler" and info["cfg_scale"] == 7.0 and info["steps"] == 2
    assert 0 <= info["seed"] < 2**32 and info["all_seeds"] == [info["seed"]]
    assert data["parameters"]["seed"] == -1 and data["parameters"]["sampler_index"] == "Euler"
    image = decode_png(data["images"][0])
    assert image.size == (64, 64)
    assert image.text["parameters"] == info["infotexts"][0]
    assert f"Sampler: Euler, CFG scale: 7, Seed: {info['seed']}, Size: 64x64" in info["infotexts"][0]


def test_web_ui_txt2img_matches_the_native_api(server):
    payload = {
        "prompt": "a (castle:1.2) on a hill",
        "negative_prompt": "blurry",
        "styles": [],
        "seed": 42,
        "subseed": -1,
        "subseed_strength": 0,
        "seed_resize_from_h": -1,
        "seed_resize_from_w": -1,
        "sampler_name": "DPM++ 2M",
        "scheduler": "Karras",
        "batch_size": 2,
        "n_iter": 1,
        "steps": 3,
        "cfg_scale": 6.5,
        "width": 72,
        "height": 64,
        "restore_faces": False,
        "tiling": False,
        "do_not_save_samples": False,
        "do_not_save_grid": False,
        "eta": None,
        "denoising_strength": 0,
        "s_churn": 0,
        "s_tmax": 0,
        "s_tmin": 0,
        "s_noise": 1,
        "override_settings": {"CLIP_stop_at_last_layers": 2, "sd_vae": "Automatic"},
        "override_settings_restore_afterwards": True,
        "script_args": [],
        "sampler_index": "Euler",
        "script_name": None,
        "send_images": True,
        "save_images": False,
        "alwayson_scripts": {},
        "enable_hr": False,
        "hr_scale": 2,
        "hr_upscaler": "Latent",
        "some_extension_field": "ignored, as the web UI ignores it",
    }
    response = httpx.post(f"{server}/sdapi/v1/txt2img", json=payload, timeout=60)
    assert response.status_code == 200, response.text
    data = response.json()
    info = json.loads(data["info"])
    assert info["all_seeds"] == [42, 43] and info["seed"] == 42
    assert info["sampler_name"] == "DPM++ 2M Karras" and info["clip_skip"] == 2
    assert data["parameters"]["override_settings"] == payload["override_settings"]
    assert "some_extension_field" not in data["parameters"]
    native = httpx.post(
        f"{server}/v1/generate",
        json={
            "prompt": payload["prompt"],
            "negative_prompt": "blurry",
            "seed": 42,
            "num_images_per_prompt": 2,
            "scheduler": "dpmpp_2m_karras",
            "steps": 3,
            "guidance_scale": 6.5,
            "width": 72,
            "height": 64,
            "clip_skip": 1,  # the web UI's CLIP skip 2
        },
        timeout=60,
    ).json()
    for web_ui, ours in zip(data["images"], native["images"], strict=True):
        web_ui_image, image = decode_png(web_ui), decode_png(ours["b64_json"])
        assert max_diff(web_ui_image, image) <= MAX_PIXEL_DIFF
        assert "Clip skip: 2" in web_ui_image.text["parameters"]


def test_web_ui_img2img_and_inpainting(server):
    init = png_b64(input_image(64, 64, seed=3))
    payload = {"prompt": "an oil painting", "init_images": [init], "denoising_strength": 0.5, "steps": 4, "seed": 7}
    response = httpx.post(f"{server}/sdapi/v1/img2img", json={**payload, "width": 64, "height": 64}, timeout=60)
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["parameters"]["init_images"] is None  # include_init_images is false
    info = json.loads(data["info"])
    assert info["denoising_strength"] == 0.5 and "Denoising strength: 0.5" in info["infotexts"][0]
    assert decode_png(data["images"][0]).size == (64, 64)

    inpaint = {**payload, "mask": png_b64(_mask()), "width": 64, "height": 64, "mask_blur": 4, "inpainting_fill": 1}
    response = httpx.post(f"{server}/sdapi/v1/img2img", json=inpaint, timeout=60)
    assert response.status_code == 200, response.text
    painted = np.asarray(decode_png(response.json()["images"][0]), dtype=np.int16)
    original = np.asarray(input_image(64, 64, seed=3), dtype=np.int16)
    # far from the mask the image is kept (up to the VAE's round trip); inside it is repainted
    assert (
        np.abs(painted[56:, 48:] - original[56:, 48:]).mean()
        < np.abs(painted[20:44, 12:36] - original[20:44, 12:36]).mean()
    )

    assert httpx.post(f"{server}/sdapi/v1/img2img", json={"prompt": "x"}).json()["detail"][0]["loc"] == [
        "body",
        "init_images",
    ]


def test_web_ui_lists(server):
    samplers = httpx.get(f"{server}/sdapi/v1/samplers").json()
    assert {"name": "Euler a", "aliases": ["euler_a"], "options": {}} in samplers
    assert len(samplers) == 17
    models = httpx.get(f"{server}/sdapi/v1/sd-models").json()
    assert len(models) == 1 and set(models[0]) == {"title", "model_name", "hash", "sha256", "filename", "config"}
    options = httpx.get(f"{server}/sdapi/v1/options").json()
    assert options["sd_model_checkpoint"] == models[0]["title"] and options["CLIP_stop_at_last_layers"] == 1
    assert httpx.post(f"{server}/sdapi/v1/options", json={"sd_model_checkpoint": models[0]["title"]}).status_code == 200
    refused = httpx.post(f"{server}/sdapi/v1/options", json={"sd_vae": "kl-f8-anime.ckpt"})
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "sd_vae"]
    assert [s["name"] for s in httpx.get(f"{server}/sdapi/v1/schedulers").json()] == ["automatic", "uniform", "karras"]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"enable_hr": True, "hr_upscaler": "4x-UltraSharp"}, "hr_upscaler"),
        ({"restore_faces": True}, "restore_faces"),
        ({"subseed_strength": 0.3}, "subseed_strength"),
        ({"styles": ["cinematic"]}, "styles"),
        ({"script_name": "x/y/z plot"}, "script_name"),
        ({"alwayson_scripts": {"ADetailer": {"args": []}}}, "alwayson_scripts.ADetailer"),  # ControlNet's runs
        ({"sampler_name": "Euler a", "eta": 0.5}, "eta"),
        ({"sampler_name": "Euler a", "scheduler": "Karras"}, "scheduler"),
        ({"batch_size": 20}, "batch_size"),
        ({"n_iter": 20}, "n_iter"),
        ({"steps": True}, "steps"),
        ({"width": True}, "width"),
        ({"seed": False}, "seed"),
        ({"script_args": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}, "script_args"),
        ({"sampler_name": "Magic sampler"}, "sampler_name"),
        ({"scheduler": "Exponential"}, "scheduler"),
        (
            {"override_settings": {"sd_model_checkpoint": "v1-5-pruned.safetensors"}},
            "override_settings.sd_model_checkpoint",
        ),
        ({"override_settings": {"CLIP_stop_at_last_layers": 40}}, "override_settings.CLIP_stop_at_last_layers"),
        ({"override_settings": {"sd_vae": "kl-f8-anime.ckpt"}}, "override_settings.sd_vae"),
        ({"cfg_scale": "lots"}, "cfg_scale"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_web_ui_refuses_what_it_cannot_honour(server, fields, field):
    response = httpx.post(f"{server}/sdapi/v1/txt2img", json={"prompt": "a cat", "width": 64, "height": 64, **fields})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", *field.split(".")]


def test_openai_images_generations(server):
    # as in OpenAI's API reference (size chosen inside this artifact's range)
    body = {
        "model": "dall-e-2",
        "prompt": "A cute baby sea otter",
        "n": 2,
        "size": "64x64",
        "response_format": "b64_json",
    }
    response = httpx.post(f"{server}/v1/images/generations", json=body, timeout=60)
    assert response.status_code == 200, response.text
    data = response.json()
    assert isinstance(data["created"], int) and len(data["data"]) == 2
    images = [decode_png(item["b64_json"]) for item in data["data"]]
    assert [i.size for i in images] == [(64, 64)] * 2
    first, second = (int(i.text["parameters"].split("Seed: ")[1].split(",")[0]) for i in images)
    assert second == first + 1
    assert "Steps: 3," in images[0].text["parameters"]  # the server's --default-steps
    # no size: the artifact's tuned size
    response = httpx.post(f"{server}/v1/images/generations", json={"prompt": "an otter"}, timeout=60)
    assert decode_png(response.json()["data"][0]["b64_json"]).size == (128, 128)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"response_format": "url"}, "response_format"),
        ({"n": 11}, "n"),
        ({"size": "big"}, "size"),
        ({"size": "100x64"}, "size"),
        ({"quality": "hd"}, "quality"),
        ({"style": "vivid"}, "style"),
        ({"mystery": 1}, "mystery"),
    ],
)
def test_openai_errors_in_openai_shape(server, fields, param):
    response = httpx.post(f"{server}/v1/images/generations", json={"prompt": "an otter", "size": "64x64", **fields})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]
