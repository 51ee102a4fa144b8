"""A real HTTP server on 127.0.0.1 (uvicorn in a thread) around the session's tiny artifact."""

from __future__ import annotations

import base64
import io
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import uvicorn
from PIL import Image

# batching may change float rounding (other batch sizes), never content
MAX_PIXEL_DIFF = 1


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "slow: takes tens of seconds (still part of `make test`)")


@pytest.fixture(scope="session")
def serve_pipeline(artifact):
    """The test artifact on ONNX Runtime, shared by the servers of these tests (one runs at a time)."""
    from sdrt import Pipeline

    return Pipeline.load(artifact, backend="onnxruntime")


@contextmanager
def running(app) -> Iterator[str]:
    """Serve `app` with uvicorn on a free port of 127.0.0.1 in a background thread; yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="warning", timeout_keep_alive=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def decode_png(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def png_b64(image: Image.Image) -> str:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode("ascii")


def max_diff(a: Image.Image, b: Image.Image) -> int:
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


def metric(text: str, name: str, **labels: str) -> float:
    """A sample's value from Prometheus text (0 when absent)."""
    selector = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = rf"^{re.escape(name)}{re.escape('{' + selector + '}') if labels else ''} (\S+)$"
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def wait_ready(url: str, seconds: float = 120) -> None:
    """Wait for /ready to say 200 (a model set loads its default model after the server starts)."""
    import httpx

    deadline = time.monotonic() + seconds
    while httpx.get(f"{url}/ready").status_code != 200:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the test server was not ready in {seconds} s: {httpx.get(f'{url}/ready').text}")
        time.sleep(0.05)
