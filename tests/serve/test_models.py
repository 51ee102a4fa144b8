"""Several models in one server: SD 1.x, SDXL and unCLIP side by side, chosen per request, kept in a bounded LRU."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from sdrt import Control, Pipeline
from sdrt.serve import ServeConfig, create_app
from sdrt.serve.catalog import ModelCatalog
from sdrt.serve.errors import InputError
from sdrt.serve.models import ModelSet
from tests.runtime.test_img2img import input_image
from tests.serve.conftest import MAX_PIXEL_DIFF, decode_png, max_diff, metric, png_b64, running, wait_ready

SMALL = {"height": 64, "width": 64, "steps": 2}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, artifact, sdxl_artifact, unclip_artifact) -> Path:
    """A directory of artifacts as `sdrt serve --model-dir` takes it (links to the session's)."""
    root = tmp_path_factory.mktemp("served-models")
    for name, target in (("sd15", artifact), ("xl", sdxl_artifact), ("unclip", unclip_artifact)):
        (root / name).symlink_to(target, target_is_directory=True)
    return root


@pytest.fixture(scope="module")
def server(model_dir, controlnet_artifacts):
    models = ModelSet.from_paths(model_dir=model_dir, max_loaded=2, controlnet_dir=controlnet_artifacts)
    with running(create_app(models, ServeConfig(max_wait_ms=200, max_batch=4))) as url:
        wait_ready(url)
        yield url


def _loads(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return sum(metric(text, "sdrt_model_loads_total", model=m) for m in ("sd15", "xl", "unclip"))


def test_the_catalog_names_models_as_the_web_ui_does(model_dir, artifact):
    catalog = ModelCatalog([artifact], model_dir)
    assert list(catalog.entries) == ["demo", "sd15", "unclip", "xl"] and catalog.default == "demo"
    xl = catalog.entries["xl"]
    assert xl.family == "sdxl" and xl.weight_bytes > 0 and xl.title == f"xl [{xl.sha256[:10]}]"
    for alias in (xl.title, "xl", "xl.safetensors", xl.sha256[:10], xl.sha256):
        assert catalog.resolve(alias, "model") is xl
    with pytest.raises(InputError, match=r"model 'sd-v1-5' is not a model this server has; it has 'demo \["):
        catalog.resolve("sd-v1-5", "model")
    assert ModelCatalog(model_dir=model_dir).default == "sd15"  # without artifacts: the first by name


def test_each_request_runs_the_model_it_names(server, sdxl_pipelines):
    listed = httpx.get(f"{server}/sdapi/v1/sd-models").json()
    assert [m["model_name"] for m in listed] == ["sd15", "unclip", "xl"]
    xl = next(m for m in listed if m["model_name"] == "xl")
    assert xl["title"] == f"xl [{xl['hash']}]" and xl["sha256"].startswith(xl["hash"])

    default = httpx.post(f"{server}/v1/generate", json={"prompt": "a tower", **SMALL}, timeout=120).json()
    assert default["model"] == "sd15" and "Model: sd15," in default["images"][0]["parameters"]
    for name in (xl["title"], xl["hash"], "xl.safetensors"):  # the web UI's ways of naming a checkpoint
        body = {"prompt": "a tower", "seed": 5, "model": name, **SMALL}
        answer = httpx.post(f"{server}/v1/generate", json=body, timeout=120).json()
        assert answer["model"] == "xl"
    alone = sdxl_pipelines["onnxruntime"].generate("a tower", seed=5, height=64, width=64, num_inference_steps=2)
    assert max_diff(decode_png(answer["images"][0]["b64_json"]), alone.images[0]) <= MAX_PIXEL_DIFF

    overrides = {"sd_model_checkpoint": xl["title"]}
    web_ui = {"prompt": "a tower", "width": 64, "height": 64, "steps": 2, "override_settings": overrides}
    info = json.loads(httpx.post(f"{server}/sdapi/v1/txt2img", json=web_ui, timeout=120).json()["info"])
    assert info["sd_model_name"] == "xl" and info["sd_model_hash"] == xl["hash"]

    openai = httpx.post(f"{server}/v1/images/generations", json={"prompt": "a tower", "size": "64x64", "model": "xl"})
    assert "Model: xl," in decode_png(openai.json()["data"][0]["b64_json"]).text["parameters"]
    habit = httpx.post(f"{server}/v1/images/generations", json={"prompt": "a", "size": "64x64", "model": "dall-e-3"})
    assert "Model: sd15," in decode_png(habit.json()["data"][0]["b64_json"]).text["parameters"]  # OpenAI's: default

    header = httpx.post(
        f"{server}/v1/generate", json={"prompt": "x", **SMALL}, headers={"serve_multiplexed_model_id": "xl"}
    )
    assert header.json()["model"] == "xl"  # Ray Serve's multiplexing header, when the body names none


def test_an_unknown_model_is_refused_before_any_load(server):
    before = _loads(server)
    for path, body, field in [
        ("/v1/generate", {"prompt": "x", "model": "sd-v1-5", **SMALL}, ["body", "model"]),
        (
            "/sdapi/v1/txt2img",
            {"prompt": "x", "override_settings": {"sd_model_checkpoint": "sd-v1-5"}},
            ["body", "override_settings", "sd_model_checkpoint"],
        ),
        ("/sdapi/v1/options", {"sd_model_checkpoint": "sd-v1-5"}, ["body", "sd_model_checkpoint"]),
        ("/v1/images/generations", {"prompt": "x", "model": "sd-v1-5"}, ["body", "model"]),
    ]:
        response = httpx.post(f"{server}{path}", json=body)
        assert response.status_code == 422, response.text
        detail = response.json()["detail"][0]
        assert detail["loc"] == field
        assert "'sd-v1-5' is not a model this server has; it has 'sd15 [" in detail["msg"] and "'xl [" in detail["msg"]
    conflict = httpx.post(
        f"{server}/v1/generate", json={"prompt": "x", "model": "sd15"}, headers={"serve_multiplexed_model_id": "xl"}
    )
    assert conflict.status_code == 422 and "is not the model the serve_multiplexed_model_id header" in conflict.text
    assert _loads(server) == before


def test_options_change_the_default_model_as_the_web_ui_does(server):
    url = f"{server}/sdapi/v1/options"
    assert httpx.get(url).json()["sd_model_checkpoint"].startswith("sd15 [")
    assert httpx.post(url, json={"sd_model_checkpoint": "xl"}, timeout=120).status_code == 200
    try:
        options = httpx.get(url).json()
        assert options["sd_model_checkpoint"].startswith("xl [") and len(options["sd_checkpoint_hash"]) == 64
        body = {"prompt": "x", "width": 64, "height": 64, "steps": 2}
        assert (
            json.loads(httpx.post(f"{server}/sdapi/v1/txt2img", json=body, timeout=120).json()["info"])["sd_model_name"]
            == "xl"
        )
        assert httpx.post(f"{server}/v1/generate", json={"prompt": "x", **SMALL}, timeout=120).json()["model"] == "xl"
    finally:
        assert httpx.post(url, json={"sd_model_checkpoint": "sd15"}, timeout=120).status_code == 200


def test_concurrent_requests_for_three_models_never_mix(server, serve_pipeline, sdxl_pipelines, unclip_pipelines):
    """SD 1.x, SDXL and unCLIP at once with two models loaded at most: every answer is its model's image alone."""
    image = input_image(64, 64, seed=3)
    references = {
        "sd15": serve_pipeline,
        "xl": sdxl_pipelines["onnxruntime"],
        "unclip": unclip_pipelines["onnxruntime"],
    }
    jobs = []
    for i in range(4):
        for name in references:
            body = {"prompt": f"a harbour {i}", "seed": 40 + i, "model": name, **SMALL}
            if name == "unclip":
                body = {"image": png_b64(image), "seed": 40 + i, "model": name, **SMALL}
            jobs.append((name, body))
    metrics_before = httpx.get(f"{server}/metrics").text
    with httpx.Client(timeout=300) as client, ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(lambda job: client.post(f"{server}/v1/generate", json=job[1]), jobs))
    assert [a.status_code for a in answers] == [200] * len(jobs), [
        a.text[:300] for a in answers if a.status_code != 200
    ]
    for (name, body), answer in zip(jobs, answers, strict=True):
        assert answer.json()["model"] == name
        params = {k: v for k, v in body.items() if k not in ("model", "steps", "image")}
        extra = {"image": image} if name == "unclip" else {}
        alone = references[name].generate(num_inference_steps=2, **params, **extra)
        assert max_diff(decode_png(answer.json()["images"][0]["b64_json"]), alone.images[0]) <= MAX_PIXEL_DIFF
    text = httpx.get(f"{server}/metrics").text
    evictions = sum(
        metric(text, "sdrt_model_evictions_total", model=m, reason="evicted")
        - metric(metrics_before, "sdrt_model_evictions_total", model=m, reason="evicted")
        for m in references
    )
    assert evictions >= 1  # three models through two places
    assert all(len(httpx.get(f"{server}/ready").json()["models"]) <= 2 for _ in range(3))
    for name in references:
        served = metric(text, "sdrt_model_requests_total", model=name, api="native")
        assert served - metric(metrics_before, "sdrt_model_requests_total", model=name, api="native") == 4
        assert metric(text, "sdrt_model_batch_images_count", model=name) >= 1
        assert metric(text, "sdrt_model_loads_total", model=name) >= 1


def test_controlnets_run_with_the_model_a_request_names_and_refuse_one_they_do_not_fit(
    server, artifact, controlnet_artifacts
):
    from tests.runtime.test_controlnet import hint

    listed = httpx.get(f"{server}/controlnet/model_list", timeout=60).json()["model_list"]
    assert [label.split(" [")[0] for label in listed] == ["tiny_canny", "tiny_depth"]  # one directory for all models
    unit = {"module": "none", "model": "tiny_canny", "weight": 0.8, "image": png_b64(hint(0))}
    body = {"prompt": "a lighthouse", "seed": 3, "sampler_name": "Euler", **SMALL}
    body["alwayson_scripts"] = {"controlnet": {"args": [unit]}}

    def txt2img(model: str) -> httpx.Response:
        overrides = {"sd_model_checkpoint": model}
        return httpx.post(f"{server}/sdapi/v1/txt2img", json={**body, "override_settings": overrides}, timeout=120)

    sd15 = txt2img("sd15")
    assert sd15.status_code == 200, sd15.text
    alone = Pipeline.load(artifact, controlnet_dir=controlnet_artifacts).generate(
        "a lighthouse", seed=3, scheduler="euler", guidance_scale=7.0, height=64, width=64, num_inference_steps=2,
        control=[Control("tiny_canny", image=hint(0), scale=0.8)],
    )  # fmt: skip
    assert max_diff(decode_png(sd15.json()["images"][0]), alone.images[0]) <= MAX_PIXEL_DIFF
    # the SD 1.x ControlNet on the SDXL model: a 4xx naming the unit, before any engine runs; sd15 keeps serving
    xl = txt2img("xl")
    assert xl.status_code == 422, xl.text
    (error,) = xl.json()["detail"]
    assert error["loc"] == ["body", "alwayson_scripts", "controlnet", "args", "0"]
    assert "the ControlNet (made for sd1 models" in error["msg"] and "does not fit" in error["msg"]
    assert txt2img("sd15").status_code == 200


def test_refresh_picks_up_new_models_and_a_broken_one_fails_alone(tmp_path, artifact):
    root = tmp_path / "models"
    root.mkdir()
    (root / "sd15").symlink_to(artifact, target_is_directory=True)
    with running(create_app(ModelSet.from_paths(model_dir=root), ServeConfig(max_wait_ms=0))) as url:
        wait_ready(url)
        body = {"prompt": "a mill", "model": "copy", **SMALL}
        assert httpx.post(f"{url}/v1/generate", json=body).status_code == 422
        (root / "copy").symlink_to(artifact, target_is_directory=True)
        (root / "unreadable").mkdir()
        (root / "unreadable" / "manifest.json").write_text("{not json")
        truncated = root / "truncated"
        shutil.copytree(artifact, truncated, ignore=shutil.ignore_patterns("engines"))
        unet = truncated / "unet" / "model.onnx"
        unet.write_bytes(unet.read_bytes()[:1000])
        refreshed = httpx.post(f"{url}/sdapi/v1/refresh-checkpoints").json()
        assert refreshed == {"added": ["copy", "truncated", "unreadable"], "removed": [], "changed": []}
        names = [m["model_name"] for m in httpx.get(f"{url}/sdapi/v1/sd-models").json()]
        assert names == ["copy", "sd15", "truncated"]  # listed: what can be served, as far as the files say
        assert httpx.post(f"{url}/v1/generate", json=body, timeout=120).json()["model"] == "copy"
        for name, says in (("unreadable", "manifest"), ("truncated", "loading failed")):
            failed = httpx.post(f"{url}/v1/generate", json={**body, "model": name}, timeout=120)
            assert failed.status_code == 500, failed.text
            message = failed.json()["detail"][0]["msg"]
            assert f"model '{name}' cannot be served" in message and says in message
            assert "refresh-checkpoints" in message
        for name in ("sd15", "copy"):  # the others keep serving
            assert httpx.post(f"{url}/v1/generate", json={**body, "model": name}, timeout=120).status_code == 200
        assert httpx.get(f"{url}/ready").status_code == 200
