"""The web UI ControlNet extension's API on sdrt serve: units in alwayson_scripts give the Python API's images, its
/controlnet/* routes answer as the extension's, and bad units are 4xx naming the unit and field."""

from __future__ import annotations

import httpx
import pytest

from sdrt import Control, Pipeline
from sdrt.runtime.control_images import fitted
from sdrt.serve.app import create_app
from sdrt.serve.config import ServeConfig
from tests.runtime.test_controlnet import hint
from tests.runtime.test_img2img import input_image
from tests.serve.conftest import decode_png, max_diff, png_b64, running

SIZE = dict(width=72, height=64, steps=4, seed=11, sampler_name="Euler")
UNIT = {"enabled": True, "module": "none", "model": "tiny_canny", "weight": 0.8, "resize_mode": "Just Resize"}


@pytest.fixture(scope="module")
def cn_pipe(artifact, controlnet_artifacts):
    return Pipeline.load(artifact, backend="onnxruntime", controlnet_dir=controlnet_artifacts)


@pytest.fixture(scope="module")
def cn_server(cn_pipe):
    with running(create_app(cn_pipe, ServeConfig(max_control_units=2))) as url:
        yield url


def _txt2img(url: str, units: list, **more) -> httpx.Response:
    body = {"prompt": "a lighthouse", **SIZE, **more, "alwayson_scripts": {"ControlNet": {"args": units}}}
    return httpx.post(f"{url}/sdapi/v1/txt2img", json=body, timeout=120)


def test_units_give_the_python_apis_images_and_their_maps(cn_server, cn_pipe):
    units = [
        {**UNIT, "image": png_b64(hint(0))},
        {**UNIT, "model": "tiny_depth [hash]", "input_image": png_b64(hint(1)), "module": "invert",
         "control_mode": "My prompt is more important", "guidance_start": 0.25, "guidance_end": 0.75},
        {**UNIT, "enabled": False, "image": png_b64(hint(2))},  # skipped
    ]  # fmt: skip
    response = _txt2img(cn_server, units, batch_size=2)
    assert response.status_code == 200, response.text
    images = [decode_png(b64) for b64 in response.json()["images"]]
    assert len(images) == 2 + 2  # the images, then each enabled unit's map, as the extension returns them
    expected = cn_pipe.generate(
        "a lighthouse", width=72, height=64, num_inference_steps=4, seed=11, scheduler="euler", guidance_scale=7.0,
        num_images_per_prompt=2,
        control=[
            Control("tiny_canny", image=hint(0), scale=0.8),
            Control("tiny_depth", image=hint(1), scale=0.8, module="invert", mode="prompt", start=0.25, end=0.75),
        ],
    )  # fmt: skip
    for ours, theirs in zip(images[:2], expected.images, strict=True):
        assert max_diff(ours, theirs) <= 1
    # the invert module's map, at the output's size as the extension returns it
    assert max_diff(images[3], fitted(hint(1), 64, 72, "resize").point(lambda v: 255 - v)) <= 1
    info = response.json()["info"]
    assert 'ControlNet 0: \\"Module: none, Model: tiny_canny [' in info and "Control Mode: My prompt is more" in info


def test_img2img_units_take_the_input_image_when_they_have_none(cn_server, cn_pipe):
    body = {"prompt": "a barn", **SIZE, "init_images": [png_b64(input_image(72, 64))], "denoising_strength": 0.6,
            "alwayson_scripts": {"controlnet": {"args": [UNIT]}}}  # fmt: skip
    response = httpx.post(f"{cn_server}/sdapi/v1/img2img", json=body, timeout=120)
    assert response.status_code == 200, response.text
    expected = cn_pipe.generate(
        "a barn", image=input_image(72, 64), strength=0.6, num_inference_steps=4, seed=11, scheduler="euler",
        guidance_scale=7.0, control=[Control("tiny_canny", image=input_image(72, 64), scale=0.8)],
    )  # fmt: skip
    assert max_diff(decode_png(response.json()["images"][0]), expected.images[0]) <= 1


def test_the_extensions_routes(cn_server):
    assert httpx.get(f"{cn_server}/controlnet/version").json() == {"version": 3}
    models = httpx.get(f"{cn_server}/controlnet/model_list").json()["model_list"]
    assert [m.split(" [")[0] for m in models] == ["tiny_canny", "tiny_depth"] and all(m.endswith("]") for m in models)
    modules = httpx.get(f"{cn_server}/controlnet/module_list").json()
    assert "canny" in modules["module_list"] and modules["module_detail"]["canny"]["sliders"][1]["value"] == 100
    types = httpx.get(f"{cn_server}/controlnet/control_types").json()["control_types"]
    assert types["Canny"]["model_list"] == [models[0]] and "canny" in types["Canny"]["module_list"]
    assert httpx.get(f"{cn_server}/controlnet/settings").json() == {"control_net_unit_count": 2}
    detect = httpx.post(
        f"{cn_server}/controlnet/detect",
        json={"controlnet_module": "invert", "controlnet_input_images": [png_b64(hint(3))]},
        timeout=60,
    )
    assert (
        detect.status_code == 200
        and max_diff(decode_png(detect.json()["images"][0]), hint(3).point(lambda v: 255 - v)) == 0
    )


@pytest.mark.parametrize(
    ("unit", "field", "says"),
    [
        ({**UNIT, "model": "tiny_sketch"}, "alwayson_scripts.controlnet.args.0", "tiny_sketch"),
        ({**UNIT, "module": "sharpen"}, "alwayson_scripts.ControlNet.args.0.module", "unknown ControlNet module"),
        (
            {**UNIT, "guidance_start": 0.9, "guidance_end": 0.1},
            "alwayson_scripts.ControlNet.args.0.guidance_start",
            "after end",
        ),
        ({**UNIT, "image": "bm90IGFuIGltYWdl"}, "alwayson_scripts.ControlNet.args.0.image", "cannot be read"),
        ({**UNIT, "weight": 5}, "alwayson_scripts.ControlNet.args.0.weight", "outside 0..2"),
        ({**UNIT, "resize_mode": "Stretch"}, "alwayson_scripts.ControlNet.args.0.resize_mode", "not one of"),
        ({**UNIT, "model": "None"}, "alwayson_scripts.ControlNet.args.0.model", "required"),
        ({**UNIT, "hr_option": "Sometimes"}, "alwayson_scripts.ControlNet.args.0.hr_option", "not one of Both"),
        ({**UNIT, "advanced_weighting": [1, 1]}, "alwayson_scripts.controlnet.args.0", "has 2 numbers"),
        ({**UNIT, "effective_region_mask": "x"}, "alwayson_scripts.ControlNet.args.0.effective_region_mask", "not"),
    ],
)
def test_bad_units_are_4xx_naming_the_unit_and_field(cn_server, unit, field, says):
    unit = {"image": png_b64(hint(0)), **unit}
    response = _txt2img(cn_server, [unit])
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert ".".join(detail["loc"][1:]) == field and says in detail["msg"]


def test_more_units_than_the_server_allows_and_other_scripts_are_refused(cn_server):
    units = [{**UNIT, "image": png_b64(hint(i))} for i in range(3)]
    response = _txt2img(cn_server, units)
    assert response.status_code == 422 and "over this server's limit of 2" in response.text
    body = {"prompt": "x", **SIZE, "alwayson_scripts": {"Dynamic Prompts": {"args": []}}}
    response = httpx.post(f"{cn_server}/sdapi/v1/txt2img", json=body, timeout=60)
    assert response.status_code == 422 and "not available" in response.text


def test_advanced_weighting_hr_option_and_unknown_fields(cn_server, cn_pipe):
    """advanced_weighting gives the Python API's per-residual weights; a field the extension does not know is left
    out, as the extension does; with the hires fix each unit's map comes back at both passes' sizes (the second
    pass's first) and hr_option picks the passes a unit steers."""
    from sdrt import Hires

    count = len(cn_pipe.controlnets.get("tiny_canny").run.residuals)
    weights = [0.5 + 0.05 * i for i in range(count)]
    unit = {**UNIT, "image": png_b64(hint(0)), "advanced_weighting": weights, "foo": True, "is_ui": False}
    response = _txt2img(cn_server, [unit])
    assert response.status_code == 200, response.text
    expected = cn_pipe.generate(
        "a lighthouse", width=72, height=64, num_inference_steps=4, seed=11, scheduler="euler", guidance_scale=7.0,
        control=[Control("tiny_canny", image=hint(0), weights=weights)],
    )  # fmt: skip
    assert max_diff(decode_png(response.json()["images"][0]), expected.images[0]) <= 1
    hires = dict(enable_hr=True, hr_scale=1.5, denoising_strength=0.5, hr_upscaler="Latent")
    response = _txt2img(cn_server, [{**UNIT, "image": png_b64(hint(0)), "hr_option": "Low res only"}], **hires)
    assert response.status_code == 200, response.text
    images = [decode_png(b64) for b64 in response.json()["images"]]
    assert [i.size for i in images] == [(104, 96), (104, 96), (72, 64)]  # the image, the maps: second pass, first
    expected = cn_pipe.generate(
        "a lighthouse", width=72, height=64, num_inference_steps=4, seed=11, scheduler="euler", guidance_scale=7.0,
        hires=Hires(scale=1.5, strength=0.5), control=[Control("tiny_canny", image=hint(0), scale=0.8, passes="first")],
    )  # fmt: skip
    assert max_diff(images[0], expected.images[0]) <= 1
