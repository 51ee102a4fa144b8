"""A poisoned request batched with good ones: refused at check time if it can be, else answered alone."""

from __future__ import annotations

import concurrent.futures

import httpx
import pytest

from sdrt.serve import ServeConfig, create_app
from tests.serve.conftest import MAX_PIXEL_DIFF, decode_png, max_diff, metric, running

GOOD = {"width": 64, "height": 64, "steps": 2, "sampler_name": "Euler"}


@pytest.fixture(scope="module")
def server(serve_pipeline):
    # a long wait, so that the four requests below share one batch key and one batch
    with running(create_app(serve_pipeline, ServeConfig(max_wait_ms=1500, max_batch=4))) as url:
        yield url


def _post_all(server: str, bodies: list[dict]) -> list[httpx.Response]:
    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        futures = [pool.submit(httpx.post, f"{server}/sdapi/v1/txt2img", json=b, timeout=120) for b in bodies]
        return [f.result() for f in futures]


def test_emphasis_overflow_is_refused_when_checked_and_the_others_are_served(server):
    bodies = [{**GOOD, "prompt": f"good {i}", "seed": i} for i in range(3)]
    bodies.insert(1, {**GOOD, "prompt": "(" * 1999 + "a" + ")" * 1999, "seed": 9})
    responses = _post_all(server, bodies)
    assert [r.status_code for r in responses] == [200, 422, 200, 200]
    assert "emphasis weight" in responses[1].json()["detail"][0]["msg"]
    assert responses[1].json()["detail"][0]["loc"] == ["body", "prompt"]


def test_non_finite_outputs_fail_their_request_alone(server):
    # a guidance scale this large makes the latents overflow: only the VAE guard can tell, at run time
    bodies = [{**GOOD, "prompt": f"good {i}", "seed": i} for i in range(3)]
    bodies.insert(2, {**GOOD, "prompt": "poison", "seed": 9, "cfg_scale": 1e38})
    before = httpx.get(f"{server}/metrics").text
    responses = _post_all(server, bodies)
    assert [r.status_code for r in responses] == [200, 200, 422, 200], [r.text[:200] for r in responses]
    assert "NonFiniteOutputError" in responses[2].json()["detail"][0]["msg"]
    # the good ones got the images they get alone
    for body, response in zip(bodies, responses, strict=True):
        if body["prompt"] != "poison":
            alone = httpx.post(f"{server}/sdapi/v1/txt2img", json=body, timeout=120)
            ours, theirs = decode_png(response.json()["images"][0]), decode_png(alone.json()["images"][0])
            assert max_diff(ours, theirs) <= MAX_PIXEL_DIFF
    after = httpx.get(f"{server}/metrics").text
    assert metric(after, "sdrt_batch_errors_total") == metric(before, "sdrt_batch_errors_total") + 1
