"""Overload and failure: 429 beyond the queue, health stays up, engine errors fail one batch, leavers are dropped."""

from __future__ import annotations

import copy
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from sdrt.serve import ServeConfig, create_app
from tests.serve.conftest import metric, running

SMALL = {"height": 64, "width": 64, "steps": 6}


def _wait_for(predicate, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def test_a_burst_over_the_queue_gets_429s_while_every_admitted_request_completes(serve_pipeline):
    app = create_app(serve_pipeline, ServeConfig(max_queue=2, max_wait_ms=0))
    with running(app) as url, httpx.Client(timeout=120) as client:
        health, stop = [], threading.Event()

        def poll_health():
            while not stop.is_set():
                start = time.monotonic()
                status = client.get(f"{url}/health", timeout=10).status_code
                health.append((status, time.monotonic() - start))
                time.sleep(0.02)

        poller = threading.Thread(target=poll_health)
        poller.start()
        bodies = [{"prompt": f"a tower {i}", "seed": i, **SMALL} for i in range(16)]
        with ThreadPoolExecutor(len(bodies)) as pool:
            responses = list(pool.map(lambda b: client.post(f"{url}/v1/generate", json=b), bodies))
        stop.set()
        poller.join()

        statuses = [r.status_code for r in responses]
        assert set(statuses) <= {200, 429} and statuses.count(429) >= 1 and statuses.count(200) >= 3
        refused = next(r for r in responses if r.status_code == 429)
        assert int(refused.headers["retry-after"]) >= 1
        assert "capacity" in refused.json()["detail"][0]["msg"]
        assert len(health) >= 3 and all(status == 200 for status, _ in health)
        assert max(seconds for _, seconds in health) < 5.0  # answered while the engine was busy
        metrics = client.get(f"{url}/metrics").text
        assert metric(metrics, "sdrt_rejections_total", reason="queue_full") == statuses.count(429)
        assert metric(metrics, "sdrt_images_generated_total") == statuses.count(200)
        assert metric(metrics, "sdrt_queue_depth") == 0


def test_an_engine_error_fails_only_its_request_with_500_and_the_server_keeps_serving(serve_pipeline):
    broken = copy.copy(serve_pipeline)

    def run_pass(requests, **kwargs):
        if any("explode" in p for r in requests for p in r.prompts):
            raise RuntimeError("the UNet engine ran out of memory")
        return serve_pipeline.run_pass(requests, **kwargs)

    broken.run_pass = run_pass
    app = create_app(broken, ServeConfig(max_wait_ms=1000))  # the two requests below share a batch
    with running(app) as url, httpx.Client(timeout=60) as client, ThreadPoolExecutor(2) as pool:
        bodies = [{"prompt": "explode", "seed": 1, **SMALL}, {"prompt": "a quiet lake", "seed": 2, **SMALL}]
        responses = list(pool.map(lambda b: client.post(f"{url}/v1/generate", json=b), bodies))
        # the batch of both failed; each ran again alone, and only the one that fails alone failed
        assert [r.status_code for r in responses] == [500, 200]
        assert "ran out of memory" in responses[0].json()["detail"][0]["msg"]
        assert client.post(f"{url}/v1/generate", json=bodies[1]).status_code == 200
        assert metric(client.get(f"{url}/metrics").text, "sdrt_batch_errors_total") == 1


def test_a_client_that_disconnects_is_dropped_from_the_queue_or_from_its_result(serve_pipeline):
    engine_free = threading.Event()
    held = copy.copy(serve_pipeline)

    def run_pass(requests, **kwargs):  # a request saying "hold" keeps the engine busy until the test says
        if any("hold" in p for r in requests for p in r.prompts):
            engine_free.wait(30)
        return serve_pipeline.run_pass(requests, **kwargs)

    held.run_pass = run_pass
    app = create_app(held, ServeConfig(max_batch=1, max_wait_ms=0))
    hold = {"prompt": "hold the engine", "seed": 1, **SMALL}
    with running(app) as url, httpx.Client(timeout=120) as client:

        def metrics() -> str:
            return client.get(f"{url}/metrics").text

        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(client.post, f"{url}/v1/generate", json=hold)
            _wait_for(lambda: metric(metrics(), "sdrt_running_images") == 1)
            try:  # queued behind the held one; the client gives up and closes the connection
                httpx.post(f"{url}/v1/generate", json={**hold, "prompt": "a queued one", "seed": 2}, timeout=0.3)
            except httpx.TimeoutException:
                pass
            _wait_for(lambda: metric(metrics(), "sdrt_dropped_total", where="queued") == 1)
            engine_free.set()
            assert first.result().status_code == 200
        assert metric(metrics(), "sdrt_batch_images_count") == 1  # the dropped request never ran

        engine_free.clear()
        try:  # starts at once and holds the engine; the client leaves while its batch runs
            httpx.post(f"{url}/v1/generate", json={**hold, "seed": 3}, timeout=0.3)
        except httpx.TimeoutException:
            pass
        time.sleep(0.5)  # the server sees the disconnect; the batch still runs
        assert metric(metrics(), "sdrt_running_images") == 1
        engine_free.set()  # the batch finishes; its result is discarded
        _wait_for(lambda: metric(metrics(), "sdrt_dropped_total", where="running") == 1)
        text = metrics()
        assert metric(text, "sdrt_batch_images_count") == 2
        assert metric(text, "sdrt_images_generated_total") == 1
