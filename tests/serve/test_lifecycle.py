"""Loading, readiness and draining: /health answers throughout, /ready and generation say 503 until served."""

from __future__ import annotations

import threading
import time

import httpx

from sdrt.serve import ServeConfig, create_app
from tests.serve.conftest import running

BODY = {"prompt": "a cat", "height": 64, "width": 64, "steps": 2, "seed": 1}


def test_ready_only_once_the_engines_are_loaded(serve_pipeline):
    loaded = threading.Event()

    def load():
        loaded.wait(30)
        return serve_pipeline

    with running(create_app(load, ServeConfig(max_wait_ms=0))) as url:
        assert httpx.get(f"{url}/health").status_code == 200
        ready = httpx.get(f"{url}/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "loading"
        early = httpx.post(f"{url}/v1/generate", json=BODY)
        assert early.status_code == 503 and early.headers["retry-after"] == "5"
        assert "loading" in early.json()["detail"][0]["msg"]
        loaded.set()
        for _ in range(300):
            if httpx.get(f"{url}/ready").status_code == 200:
                break
            time.sleep(0.05)
        assert httpx.post(f"{url}/v1/generate", json=BODY, timeout=60).status_code == 200


def test_a_failed_load_is_reported(serve_pipeline):
    failures = []

    def load():
        raise ValueError("artifact format version 1 is not supported")

    with running(create_app(load, on_load_failure=failures.append)) as url:
        for _ in range(300):
            if failures:
                break
            time.sleep(0.05)
        ready = httpx.get(f"{url}/ready").json()
        assert ready["status"] == "failed" and "format version 1" in ready["detail"]
        assert httpx.post(f"{url}/v1/generate", json=BODY).status_code == 503
    assert isinstance(failures[0], ValueError)


def test_draining_refuses_new_work_with_503(serve_pipeline):
    app = create_app(serve_pipeline, ServeConfig(max_wait_ms=0))
    with running(app) as url:
        app.state.sdrt.batcher.close()  # what SIGTERM does first
        response = httpx.post(f"{url}/v1/generate", json=BODY)
        assert response.status_code == 503 and int(response.headers["retry-after"]) >= 1
        assert httpx.get(f"{url}/ready").json()["status"] == "draining"
        assert httpx.get(f"{url}/health").status_code == 200
