"""`sdrt serve`: the app on uvicorn, the default model loaded at start (others when asked for), drained on SIGTERM."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Sequence
from types import FrameType
from typing import Any

import uvicorn

from sdrt.serve.app import create_app
from sdrt.serve.config import ServeConfig
from sdrt.serve.model_pool import memory_budget
from sdrt.serve.models import DEFAULT_MAX_LOADED, ModelSet

log = logging.getLogger(__name__)


class _DrainingServer(uvicorn.Server):
    """uvicorn's server that on SIGTERM/SIGINT drains with the socket open, then lets uvicorn shut down.

    The first signal stops the batcher admitting and makes every new request (and /health) a 503 with
    Retry-After, so clients and load balancers see a server going away rather than a refused connection.
    Once every admitted request has its result, uvicorn closes the socket, lets the answers go out, runs the
    app's shutdown and returns. A second signal exits at once, as uvicorn's does.
    """

    def __init__(self, config: uvicorn.Config, state) -> None:
        super().__init__(config)
        self._state = state
        self._signal: tuple[int, FrameType | None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        batcher = self._state.batcher
        if self._signal is not None or batcher is None:  # a second signal, or nothing loaded to drain
            super().handle_exit(sig, frame)
            return
        log.info("draining: new requests get 503 until the %d admitted ones are answered", batcher.in_flight)
        self._signal = (sig, frame)
        self._state.draining = True
        batcher.close()

    async def on_tick(self, counter: int) -> bool:
        batcher = self._state.batcher
        if self._signal is not None and not self.should_exit and (batcher is None or batcher.in_flight == 0):
            super().handle_exit(*self._signal)  # drained: now uvicorn closes the socket and shuts down
        return await super().on_tick(counter)


def serve(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    backend: str = "onnxruntime",
    device: str = "cpu",
    host: str = "127.0.0.1",
    port: int = 7860,
    config: ServeConfig | None = None,
    refiner: str | os.PathLike | None = None,
    models_dir: str | os.PathLike | None = None,
    max_loaded: int = DEFAULT_MAX_LOADED,
    max_bytes: int | None = None,
    **load_options: Any,
) -> int:
    """Serve artifacts (the first is the default; or those of `models_dir`) and an SDXL refiner over HTTP until
    SIGTERM or Ctrl-C; 0 after a clean drain, 1 if the default model fails to load. At most `max_loaded` models,
    and `max_bytes` bytes of weights (default: 80% of the device's memory), are loaded at once. `load_options` go
    to Pipeline.load: directories (embeddings_dir, lora_dir, ...) and backend options (cuda_graphs=True, ...)."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    models = ModelSet.from_paths(
        paths, models_dir, backend, device, refiner, max_loaded,
        memory_budget(device) if max_bytes is None else max_bytes, **load_options,
    )  # fmt: skip
    default = models.catalog.entries[models.catalog.default]
    if default.error is not None:  # a bad default fails here, before a port is opened
        raise ValueError(f"{default.path}: {default.error}")
    log.info(
        "serving %d models (default %s), at most %d loaded and %s of weights",
        len(models.catalog.entries), default.name, models.max_loaded,
        "no bound" if models.max_bytes is None else f"{models.max_bytes / 1024**3:.1f} GiB",
    )  # fmt: skip
    failures: list[BaseException] = []

    def failed(exc: BaseException) -> None:
        failures.append(exc)
        server.should_exit = True

    app = create_app(models, config, on_load_failure=failed)
    server = _DrainingServer(
        uvicorn.Config(app, host=host, port=port, lifespan="on", log_level="info", timeout_keep_alive=5),
        app.state.sdrt,
    )
    # uvicorn re-raises the signal it drained on once it is done; after a clean SIGTERM drain, exit 0
    previous = signal.signal(signal.SIGTERM, lambda sig, frame: None)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if failures:
        return 1
    return 0
