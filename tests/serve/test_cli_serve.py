"""`sdrt serve` as a process: loads, serves, and on SIGTERM answers 503, finishes what is in flight, exits 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.serve.conftest import free_port, metric

REPO = Path(__file__).resolve().parents[2]


def test_sdrt_serve_finishes_in_flight_requests_on_sigterm_and_exits_0(artifact):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    args = ["serve", str(artifact), "--port", str(port), "--max-batch", "1", "--max-wait-ms", "0", "--max-queue", "8"]
    process = subprocess.Popen(
        [sys.executable, "-m", "sdrt.cli", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stdout.read()
            assert time.monotonic() < deadline, "the server did not become ready"
            try:
                if httpx.get(f"{url}/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        assert httpx.get(f"{url}/health").json() == {"status": "ok"}

        bodies = [{"prompt": f"a boat {i}", "seed": i, "height": 64, "width": 64, "steps": 20} for i in range(3)]
        with httpx.Client(timeout=120) as client, ThreadPoolExecutor(len(bodies)) as pool:
            pending = [pool.submit(client.post, f"{url}/v1/generate", json=b) for b in bodies]

            def admitted() -> float:
                text = httpx.get(f"{url}/metrics").text
                return metric(text, "sdrt_queue_depth") + metric(text, "sdrt_running_images")

            while admitted() < len(bodies):  # one runs, two wait in the queue
                assert not all(p.done() for p in pending), "requests finished before SIGTERM could be sent"
                time.sleep(0.01)
            process.send_signal(signal.SIGTERM)
            # while it drains the socket stays open: new requests and /health get 503, not a refused connection
            deadline = time.monotonic() + 30
            while httpx.get(f"{url}/health").status_code != 503:
                assert time.monotonic() < deadline, "the server never said it was draining"
                time.sleep(0.02)
            refused = httpx.post(f"{url}/v1/generate", json=bodies[0])
            assert refused.status_code == 503 and refused.headers["Retry-After"] == "5"
            assert "shutting down" in refused.json()["detail"][0]["msg"]
            assert not all(p.done() for p in pending), "the drain ended before it could be seen"
            responses = [p.result() for p in pending]
        assert [r.status_code for r in responses] == [200] * len(bodies)
        assert process.wait(60) == 0
        output = process.stdout.read()
        assert "Shutting down" in output and "Application shutdown complete" in output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
