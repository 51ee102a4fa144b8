"""The request set of the web UI's own API tests (its test/ folder), restated as our own test code.

Every body below is what the web UI's `test_txt2img.py`, `test_img2img.py` and `test_utils.py` send (their
defaults: Euler a with eta 0, 64x64, 3 steps, the web UI's other fields at its defaults). They pass here
as there, except what sdrt does not do (face restoration, web UI scripts other than "SD upscale"): those get a
422 naming the field.
"""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image

from sdrt.serve import ServeConfig, create_app
from sdrt.serve.styles import PromptStyle
from tests.runtime.test_img2img import input_image
from tests.serve.conftest import decode_png, running

STYLES = (PromptStyle("cinematic", "cinematic still of {prompt}, film grain", "cartoon"), PromptStyle("plain"))


@pytest.fixture(scope="module")
def server(serve_pipeline):
    config = ServeConfig(max_wait_ms=10, styles=STYLES, max_images=8)
    with running(create_app(serve_pipeline, config)) as url:
        yield url


def _data_url(image: Image.Image, kind: str = "PNG") -> str:
    out = io.BytesIO()
    image.save(out, format=kind)
    prefix = "data:image/png;base64," if kind == "PNG" else ""
    return prefix + base64.b64encode(out.getvalue()).decode()


def _txt2img_body() -> dict:
    """The web UI tests' txt2img defaults."""
    return {
        "batch_size": 1, "cfg_scale": 7, "denoising_strength": 0, "enable_hr": False, "eta": 0,
        "firstphase_height": 0, "firstphase_width": 0, "height": 64, "n_iter": 1, "negative_prompt": "",
        "prompt": "example prompt", "restore_faces": False, "s_churn": 0, "s_noise": 1, "s_tmax": 0, "s_tmin": 0,
        "sampler_index": "Euler a", "seed": -1, "seed_resize_from_h": -1, "seed_resize_from_w": -1, "steps": 3,
        "styles": [], "subseed": -1, "subseed_strength": 0, "tiling": False, "width": 64,
    }  # fmt: skip


def _img2img_body() -> dict:
    """The web UI tests' img2img defaults: an init image of another size than asked for, given as a data URL."""
    init = input_image(96, 80, seed=5)
    return {
        "batch_size": 1, "cfg_scale": 7, "denoising_strength": 0.75, "eta": 0, "height": 64,
        "include_init_images": False, "init_images": [_data_url(init)], "inpaint_full_res": False,
        "inpaint_full_res_padding": 0, "inpainting_fill": 0, "inpainting_mask_invert": False, "mask": None,
        "mask_blur": 4, "n_iter": 1, "negative_prompt": "", "override_settings": {}, "prompt": "example prompt",
        "resize_mode": 0, "restore_faces": False, "s_churn": 0, "s_noise": 1, "s_tmax": 0, "s_tmin": 0,
        "sampler_index": "Euler a", "seed": -1, "seed_resize_from_h": -1, "seed_resize_from_w": -1, "steps": 3,
        "styles": [], "subseed": -1, "subseed_strength": 0, "tiling": False, "width": 64,
    }  # fmt: skip


def _mask() -> str:
    """A mask of another size than the init image (the web UI resizes it): white square on black."""
    mask = np.zeros((40, 48), dtype=np.uint8)
    mask[10:30, 12:36] = 255
    return _data_url(Image.fromarray(mask, mode="L"))


TXT2IMG = {
    "simple": {},
    "with_negative_prompt": {"negative_prompt": "example negative prompt"},
    "with_complex_prompt": {"prompt": "((emphasis)), (emphasis1:1.1), [to:1], [from::2], [from:to:0.3], [alt|alt1]"},
    "not_square_image": {"height": 128},
    "vanilla_sampler_PLMS": {"sampler_index": "PLMS"},
    "vanilla_sampler_DDIM": {"sampler_index": "DDIM"},
    "vanilla_sampler_UniPC": {"sampler_index": "UniPC"},
    "multiple_batches": {"n_iter": 2},
    "batch": {"batch_size": 2},
}


@pytest.mark.parametrize("change", TXT2IMG.values(), ids=TXT2IMG.keys())
def test_txt2img_performed(server, change):
    body = {**_txt2img_body(), **change}
    response = httpx.post(f"{server}/sdapi/v1/txt2img", json=body, timeout=120)
    assert response.status_code == 200, response.text
    data = response.json()
    assert len(data["images"]) == body["batch_size"] * body["n_iter"]
    info = json.loads(data["info"])
    assert decode_png(data["images"][0]).size == (body["width"], body["height"])
    # Euler a at eta 0 adds no noise: it is Euler, and the infotext says so
    expected = "Euler" if body["sampler_index"] == "Euler a" else body["sampler_index"]
    assert info["sampler_name"] == expected and f"Sampler: {expected}," in info["infotexts"][0]
    assert len(set(info["all_seeds"])) == len(info["all_seeds"])


def test_txt2img_with_hrfix_performed(server):
    # the web UI tests' body: enable_hr with denoising_strength 0 (an upscale only) and hr_scale's default 2
    response = httpx.post(f"{server}/sdapi/v1/txt2img", json={**_txt2img_body(), "enable_hr": True}, timeout=120)
    assert response.status_code == 200, response.text
    assert decode_png(response.json()["images"][0]).size == (128, 128)
    infotext = json.loads(response.json()["info"])["infotexts"][0]
    assert "Size: 64x64" in infotext and "Hires upscale: 2" in infotext and "Hires upscaler: Latent" in infotext


@pytest.mark.parametrize(
    ("change", "size", "says"),
    [
        (
            {"denoising_strength": 0.5, "hr_scale": 1.5, "hr_upscaler": "Latent (nearest)"},
            (96, 96),
            "Hires upscale: 1.5",
        ),
        (
            {"denoising_strength": 0.5, "hr_resize_x": 128, "hr_upscaler": "Lanczos", "hr_second_pass_steps": 2},
            (128, 128),
            "Hires steps: 2",
        ),
        (
            {"denoising_strength": 0.4, "hr_resize_x": 96, "hr_resize_y": 64, "hr_sampler_name": "DDIM"},
            (96, 64),
            "Hires sampler: DDIM",
        ),
        (
            {"denoising_strength": 0.4, "hr_prompt": "a [sharp:blurry:1] photo", "hr_upscaler": "None"},
            (128, 128),
            "Hires upscaler: Lanczos",
        ),
    ],
)
def test_hires_fields(server, change, size, says):
    body = {**_txt2img_body(), "enable_hr": True, **change}
    response = httpx.post(f"{server}/sdapi/v1/txt2img", json=body, timeout=120)
    assert response.status_code == 200, response.text
    assert decode_png(response.json()["images"][0]).size == size
    assert says in json.loads(response.json()["info"])["infotexts"][0]


@pytest.mark.parametrize(
    ("change", "field", "says"),
    [
        ({"hr_upscaler": "R-ESRGAN 4x+"}, "hr_upscaler", "served: Latent"),
        ({"hr_scale": 8.0}, "hr_scale", "second pass's height 512 is outside the artifact's range 64..256"),
        ({"hr_scale": 0.5}, "hr_scale", "outside 1..8"),
        ({"hr_second_pass_steps": True}, "hr_second_pass_steps", "boolean"),
        ({"hr_sampler_name": "Warp"}, "hr_sampler_name", "unknown scheduler"),
        ({"firstphase_width": 32}, "firstphase_width", "old hires API"),
    ],
)
def test_hires_refusals_name_the_field(server, change, field, says):
    body = {**_txt2img_body(), "enable_hr": True, "denoising_strength": 0.5, **change}
    response = httpx.post(f"{server}/sdapi/v1/txt2img", json=body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", field] and says in detail["msg"], detail


def test_txt2img_with_tiling_performed(server):
    response = httpx.post(f"{server}/sdapi/v1/txt2img", json={**_txt2img_body(), "tiling": True}, timeout=120)
    assert response.status_code == 200, response.text
    assert decode_png(response.json()["images"][0]).size == (64, 64)
    assert "Tiling: True" in json.loads(response.json()["info"])["infotexts"][0]


def test_txt2img_with_restore_faces_refused_clearly(server):
    response = httpx.post(f"{server}/sdapi/v1/txt2img", json={**_txt2img_body(), "restore_faces": True})
    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", "restore_faces"] and "not" in detail["msg"]


def test_img2img_simple_performed(server):
    response = httpx.post(f"{server}/sdapi/v1/img2img", json=_img2img_body(), timeout=120)
    assert response.status_code == 200, response.text
    assert decode_png(response.json()["images"][0]).size == (64, 64)


@pytest.mark.parametrize("invert", [False, True], ids=["masked", "with_inverted_masked"])
def test_inpainting_performed(server, invert):
    body = {**_img2img_body(), "mask": _mask(), "inpainting_mask_invert": invert}
    response = httpx.post(f"{server}/sdapi/v1/img2img", json=body, timeout=120)
    assert response.status_code == 200, response.text
    assert json.loads(response.json()["info"])["denoising_strength"] == 0.75


def test_img2img_sd_upscale_performed(server):
    body = {**_img2img_body(), "script_name": "sd upscale", "script_args": ["", 8, "Lanczos", 2.0]}
    response = httpx.post(f"{server}/sdapi/v1/img2img", json=body, timeout=300)
    assert response.status_code == 200, response.text
    # the 96x80 init image upscaled by 2 with Lanczos, redrawn in 64x64 tiles (4 x 3 of them, sharing 8 or more)
    assert decode_png(response.json()["images"][0]).size == (192, 160)
    infotext = json.loads(response.json()["info"])["infotexts"][0]
    assert "Size: 64x64" in infotext and "SD upscale overlap: 8, SD upscale upscaler: Lanczos" in infotext
    other = httpx.post(f"{server}/sdapi/v1/img2img", json={**body, "script_name": "x/y/z plot"})
    assert other.status_code == 422 and other.json()["detail"][0]["loc"] == ["body", "script_name"]


def test_options_write(server):
    url = f"{server}/sdapi/v1/options"
    before = httpx.get(url).json()["send_seed"]
    assert httpx.post(url, json={"send_seed": not before}).status_code == 200
    assert httpx.get(url).json()["send_seed"] is (not before)
    assert httpx.post(url, json={"send_seed": before}).status_code == 200
    assert httpx.get(url).json()["send_seed"] is before


LISTINGS = [
    "cmd-flags", "samplers", "upscalers", "sd-models", "hypernetworks", "face-restorers", "realesrgan-models",
    "prompt-styles", "scripts", "latent-upscale-modes", "embeddings", "loras", "sd-vae",
]  # fmt: skip


@pytest.mark.parametrize("path", LISTINGS)
def test_get_api_url(server, path):
    response = httpx.get(f"{server}/sdapi/v1/{path}")
    assert response.status_code == 200, response.text
    assert isinstance(response.json(), (list, dict))


def test_listings_say_what_is_served(server):
    upscalers = [u["name"] for u in httpx.get(f"{server}/sdapi/v1/upscalers").json()]
    assert upscalers == ["None", "Lanczos", "Nearest"]
    assert "Latent (bicubic antialiased)" in [
        m["name"] for m in httpx.get(f"{server}/sdapi/v1/latent-upscale-modes").json()
    ]
    styles = httpx.get(f"{server}/sdapi/v1/prompt-styles").json()
    assert styles[0] == {
        "name": "cinematic",
        "prompt": "cinematic still of {prompt}, film grain",
        "negative_prompt": "cartoon",
    }
    assert httpx.get(f"{server}/sdapi/v1/face-restorers").json() == []
    assert httpx.get(f"{server}/sdapi/v1/scripts").json() == {"txt2img": [], "img2img": ["sd upscale"]}
    (info,) = httpx.get(f"{server}/sdapi/v1/script-info").json()
    assert info["name"] == "sd upscale" and info["args"][2]["choices"] == ["None", "Lanczos", "Nearest"]


def test_styles_apply_and_png_info_reads_the_infotext(server):
    body = {**_txt2img_body(), "prompt": "a castle", "negative_prompt": "blurry", "styles": ["cinematic", "plain"]}
    response = httpx.post(f"{server}/sdapi/v1/txt2img", json=body, timeout=120)
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert info["prompt"] == "cinematic still of a castle, film grain"
    assert info["negative_prompt"] == "blurry, cartoon"
    read = httpx.post(f"{server}/sdapi/v1/png-info", json={"image": response.json()["images"][0]}).json()
    assert read["info"] == info["infotexts"][0]
    assert read["parameters"]["Prompt"] == "cinematic still of a castle, film grain"
    assert read["parameters"]["Negative prompt"] == "blurry, cartoon"
    assert read["parameters"]["Seed"] == str(info["seed"]) and read["parameters"]["Size-1"] == "64"
    unknown = httpx.post(f"{server}/sdapi/v1/txt2img", json={**body, "styles": ["noir"]})
    assert unknown.status_code == 422 and "known: 'cinematic', 'plain'" in unknown.json()["detail"][0]["msg"]


def test_options_are_shared_settings(server):
    url = f"{server}/sdapi/v1/options"
    assert httpx.post(url, json={"CLIP_stop_at_last_layers": 2.0}).status_code == 200
    try:
        assert httpx.get(url).json()["CLIP_stop_at_last_layers"] == 2
        response = httpx.post(f"{server}/sdapi/v1/txt2img", json=_txt2img_body(), timeout=120)
        assert json.loads(response.json()["info"])["clip_skip"] == 2
        bad = httpx.post(url, json={"CLIP_stop_at_last_layers": 2.5})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "CLIP_stop_at_last_layers"]
        not_served = httpx.post(url, json={"sd_model_checkpoint": "v1-5-pruned.safetensors"})
        assert not_served.status_code == 422
    finally:
        httpx.post(url, json={"CLIP_stop_at_last_layers": 1})
    assert httpx.get(url).json()["CLIP_stop_at_last_layers"] == 1


def test_png_info_of_no_image_says_so_without_object_reprs(server):
    garbage = base64.b64encode(b"not an image at all").decode()
    response = httpx.post(f"{server}/sdapi/v1/png-info", json={"image": garbage})
    assert response.status_code == 422
    message = json.dumps(response.json())
    assert "image 19 bytes cannot be read as an image" in message and "object at 0x" not in message
