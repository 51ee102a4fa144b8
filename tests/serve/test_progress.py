"""/sdapi/v1/progress follows the running batch; /interrupt and /skip stop the caller's job at the next step."""

from __future__ import annotations

import concurrent.futures
import time

import httpx
import pytest

from sdrt.serve import ServeConfig, create_app
from tests.serve.conftest import decode_png, running

SLOW = {"prompt": "a slow cat", "height": 64, "width": 64, "steps": 150, "seed": 4, "scheduler": "euler"}


@pytest.fixture(scope="module")
def server(serve_pipeline):
    with running(create_app(serve_pipeline, ServeConfig(max_wait_ms=0))) as url:
        yield url


def _wait_running(server: str, deadline_s: float = 60.0) -> dict:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        progress = httpx.get(f"{server}/sdapi/v1/progress").json()
        if progress["state"]["sampling_step"] >= 2:
            return progress
        time.sleep(0.05)
    raise AssertionError("the slow request never showed progress")


@pytest.mark.parametrize("endpoint", ["interrupt", "skip"])
def test_progress_then_stop_returns_what_the_job_has(server, endpoint):
    idle = httpx.get(f"{server}/sdapi/v1/progress").json()
    assert idle["progress"] == 0.0 and idle["state"]["job_count"] == 0 and idle["current_image"] is None
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(httpx.post, f"{server}/v1/generate", json=SLOW, timeout=300)
        progress = _wait_running(server)
        assert 0.0 < progress["progress"] < 1.0 and progress["eta_relative"] > 0
        assert progress["state"]["sampling_steps"] == 150 and progress["state"]["job_count"] == 1
        assert decode_png(progress["current_image"]).size == (64, 64)  # the cheap latent preview
        assert httpx.get(f"{server}/sdapi/v1/progress?skip_current_image=true").json()["current_image"] is None
        assert httpx.post(f"{server}/sdapi/v1/{endpoint}").json() == {"stopping": True}
        response = slow.result()
    assert response.status_code == 200, response.text
    assert response.json()["timings"]["steps"] < 150
    assert decode_png(response.json()["images"][0]["b64_json"]).size == (64, 64)
    after = httpx.get(f"{server}/sdapi/v1/progress").json()["state"]
    assert after["interrupted"] is (endpoint == "interrupt") and after["skipped"] is (endpoint == "skip")
    # nothing running: nothing to stop, and the next request runs to the end
    assert httpx.post(f"{server}/sdapi/v1/interrupt").json() == {"stopping": False}
    full = httpx.post(f"{server}/v1/generate", json={**SLOW, "steps": 3}, timeout=120)
    assert full.json()["timings"]["steps"] == 3
