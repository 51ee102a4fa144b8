"""Scale-out: the same app deploys on a local Ray Serve instance on the CPU and answers."""

from __future__ import annotations

import json

import httpx
import pytest

from sdrt.serve import ServeConfig
from tests.serve.conftest import decode_png, free_port

ray = pytest.importorskip("ray", reason="Ray Serve is not installed (pip install 'sdrt[serve-ray]')")


@pytest.mark.slow
def test_the_app_deploys_on_a_local_ray_instance_and_answers(artifact):
    from ray import serve

    from sdrt.serve.ray_app import RayOptions, deployment

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = deployment(artifact, config=ServeConfig(max_wait_ms=20), options=RayOptions(replicas=1, num_cpus=0))
        serve.run(app, name="sdrt", route_prefix="/")
        assert httpx.get(f"{url}/ready", timeout=30).json()["status"] == "ready"
        body = {"prompt": "a (lighthouse:1.2) at night", "seed": 11, "height": 64, "width": 64, "steps": 2}
        response = httpx.post(f"{url}/v1/generate", json=body, timeout=120)
        assert response.status_code == 200, response.text
        image = decode_png(response.json()["images"][0]["b64_json"])
        assert image.size == (64, 64) and "Seed: 11," in image.text["parameters"]
        web_ui = httpx.post(f"{url}/sdapi/v1/txt2img", json={**body, "cfg_scale": 5}, timeout=120).json()
        assert json.loads(web_ui["info"])["all_seeds"] == [11]
        assert httpx.post(f"{url}/v1/generate", json={**body, "height": 65}, timeout=30).status_code == 422
    finally:
        serve.shutdown()
        ray.shutdown()
