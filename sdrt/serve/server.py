"""`sdrt serve`: the app on uvicorn, engines loaded once at start, drained on SIGTERM."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from sdrt.manifest import MANIFEST_NAME, read_manifest
from sdrt.runtime.pipeline import Pipeline
from sdrt.serve.app import create_app
from sdrt.serve.config import ServeConfig

log = logging.getLogger(__name__)


class _DrainingServer(uvicorn.Server):
    """uvicorn's server, which on SIGTERM/SIGINT also stops the batcher admitting before uvicorn drains connections.

    uvicorn then closes the listening socket, lets every in-flight request finish (queued ones included: the
    batcher runs them without waiting for company), runs the app's shutdown, and returns.
    """

    def __init__(self, config: uvicorn.Config, state) -> None:
        super().__init__(config)
        self._state = state

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._state.batcher is not None:
            self._state.batcher.close()
        super().handle_exit(sig, frame)


def serve(
    path: str | os.PathLike,
    backend: str = "onnxruntime",
    device: str = "cpu",
    host: str = "127.0.0.1",
    port: int = 7860,
    config: ServeConfig | None = None,
    refiner: str | os.PathLike | None = None,
    **load_options: Any,
) -> int:
    """Serve an artifact (and an SDXL refiner) over HTTP until SIGTERM or Ctrl-C; 0 after a clean drain, 1 if the
    engines fail to load. `load_options` go to Pipeline.load: directories (embeddings_dir, lora_dir, ...) and
    backend options (cuda_graphs=True, cache_dir=...)."""
    root = Path(path)
    for where in (root, None if refiner is None else Path(refiner)):
        if where is None:
            continue
        if (where / MANIFEST_NAME).is_file():
            read_manifest(where)  # a bad artifact fails here, before a port is opened
        elif not (where / "model_index.json").is_file():
            raise ValueError(
                f"{where} is neither an sdrt artifact (no {MANIFEST_NAME}) nor a diffusers model directory"
            )
    failures: list[BaseException] = []

    def failed(exc: BaseException) -> None:
        failures.append(exc)
        server.should_exit = True

    app = create_app(
        lambda: Pipeline.load(root, backend=backend, device=device, refiner=refiner, **load_options),
        config,
        on_load_failure=failed,
    )
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
