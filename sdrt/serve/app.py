"""The FastAPI application: health, readiness, metrics, error answers, and the generation APIs on one batcher."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sdrt import __version__
from sdrt.runtime.pipeline import Pipeline
from sdrt.runtime.request import GenerationRequest
from sdrt.serve.batcher import Batcher, BatchFailed, Completed, Draining, QueueFull
from sdrt.serve.config import ServeConfig
from sdrt.serve.errors import InputError, error_body
from sdrt.serve.metrics import Metrics
from sdrt.serve.progress import Progress

log = logging.getLogger(__name__)

PipelineSource = Pipeline | Callable[[], Pipeline]


class NotReady(Exception):
    """The engines are still loading (or failed to load)."""


class ClientGone(Exception):
    """The client disconnected before its result was ready."""


@dataclass
class ServeState:
    """What the routes share: settings, metrics, and once loaded the pipeline and its batcher."""

    config: ServeConfig
    metrics: Metrics = field(default_factory=Metrics)
    pipeline: Pipeline | None = None
    batcher: Batcher | None = None
    load_error: str | None = None
    draining: bool = False  # SIGTERM: every new request gets a 503 while the admitted ones finish
    options: dict[str, Any] = field(default_factory=dict)  # the web UI API's shared settings (POST /sdapi/v1/options)

    @property
    def ready(self) -> bool:
        return self.pipeline is not None and self.batcher is not None and self.batcher.accepting

    def require_pipeline(self) -> Pipeline:
        if self.pipeline is None or self.batcher is None:
            self.metrics.rejections.labels("not_ready").inc()
            raise NotReady(self.load_error or "the engines are still loading")
        return self.pipeline

    async def attach(self, pipeline: Pipeline) -> None:
        """Warm the configured shapes, then start batching for a loaded pipeline."""
        if self.config.warm_shapes:
            from sdrt.serve.warmup import warm_up

            seconds = await run_in_threadpool(warm_up, pipeline, self.config.warm_shapes)
            log.info("warmed %d shapes in %.1f s", len(self.config.warm_shapes), seconds)
        max_batch = self.config.max_batch or pipeline.manifest.ranges.max_batch
        progress = Progress(pipeline.family.latent_rgb or None)

        def run_batch(requests: Sequence[GenerationRequest]) -> list:
            return pipeline.run_pass(requests, callback=progress.on_step, stop=progress.should_stop)

        batcher = Batcher(
            run_batch,
            max_images=max_batch,
            max_wait=self.config.max_wait_ms / 1000.0,
            max_queue=self.config.max_queue,
            metrics=self.metrics,
            progress=progress,
        )
        await batcher.start()
        self.pipeline, self.batcher = pipeline, batcher

    async def generate(
        self, http: Request, api: str, build: Callable[[Pipeline], tuple[GenerationRequest, Hashable]]
    ) -> Completed:
        """Validate (in a worker thread: images decode there), queue, and wait for the result or the client to leave.

        A client that disconnects while queued is dropped from the queue; one that disconnects while its
        batch runs leaves the batch to finish (the others in it need their images) and its result is discarded.
        """
        (completed,) = await self.generate_all(http, api, lambda pipe: [build(pipe)])
        return completed

    async def generate_all(
        self, http: Request, api: str, build: Callable[[Pipeline], list[tuple[GenerationRequest, Hashable]]]
    ) -> list[Completed]:
        """`generate` for the several requests one call makes (the web UI's several init images), in their order."""
        pipe = self.require_pipeline()
        built = await run_in_threadpool(build, pipe)
        if self.batcher is None:  # require_pipeline checked it; a type checker cannot know
            raise NotReady("the engines are still loading")
        start = time.monotonic()
        jobs = []
        try:
            caller = http.client.host if http.client is not None else None
            for request, key in built:
                jobs.append(self.batcher.submit(request, key, caller))
        except Exception:  # the queue filled part way: none of this call's requests run
            for job in jobs:
                self.batcher.cancel(job)
            raise
        gone = asyncio.create_task(_disconnected(http.receive))
        futures = [job.future for job in jobs]
        try:
            pending = set(futures)
            while pending and not gone.done():
                done, pending = await asyncio.wait({*pending, gone}, return_when=asyncio.FIRST_COMPLETED)
                pending -= {gone}
                if any(f.exception() is not None for f in done if f is not gone and not f.cancelled()):
                    break  # one failed: the call fails, whatever the others give
            failed = [f for f in futures if f.done() and not f.cancelled() and f.exception() is not None]
            if failed:
                for job in jobs:
                    self.batcher.cancel(job)
                raise failed[0].exception()
            if not all(f.done() for f in futures):
                for job in jobs:
                    self.batcher.cancel(job)
                raise ClientGone()
            completed = [f.result() for f in futures]
        except asyncio.CancelledError:  # the server cancelled the handler (e.g. Ray Serve on a disconnect)
            for job in jobs:
                self.batcher.cancel(job)
            raise
        finally:
            gone.cancel()
        self.metrics.request_seconds.labels(api).observe(time.monotonic() - start)
        self.metrics.images.inc(sum(len(c.result.images) for c in completed))
        return completed


async def _disconnected(receive: Receive) -> None:
    """Return when the client disconnects (the body has been read: the next message is the disconnect)."""
    try:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
    except Exception:  # a server whose receive fails here cannot report disconnects: wait for the result
        log.debug("cannot watch for the client disconnecting", exc_info=True)
        await asyncio.get_running_loop().create_future()


def create_app(
    pipeline: PipelineSource,
    config: ServeConfig | None = None,
    on_load_failure: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """An sdrt server app for a loaded pipeline, or for a loader run in a thread at startup (/ready says when done).

    Shutting the app down (lifespan end) stops admitting and finishes every admitted request first.
    """
    from sdrt.serve import (
        a1111,
        a1111_extras,
        a1111_info,
        controlnet_api,
        extra_networks,
        native,
        openai_images,
        openapi,
    )

    state = ServeState(config or ServeConfig())

    async def load(loader: Callable[[], Pipeline]) -> None:
        try:
            await state.attach(await run_in_threadpool(loader))
            log.info("engines loaded; ready")
        except Exception as exc:
            state.load_error = f"loading the engines failed: {type(exc).__name__}: {exc}"
            log.exception("loading the engines failed")
            if on_load_failure is not None:
                on_load_failure(exc)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loading = None
        if isinstance(pipeline, Pipeline):
            await state.attach(pipeline)
        else:
            loading = asyncio.create_task(load(pipeline))
        yield
        if loading is not None:
            loading.cancel()
        if state.batcher is not None:
            await state.batcher.drain()

    app = FastAPI(title="sdrt", version=__version__, lifespan=lifespan)
    app.state.sdrt = state
    app.add_middleware(BodyLimit, limit=state.config.max_body_bytes, metrics=state.metrics)
    app.add_middleware(Drain, state=state)
    _add_error_handlers(app, state)

    @app.get("/health")
    async def health() -> dict:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        """Readiness: engines loaded and admitting requests (503 while loading or shutting down)."""
        if state.ready:
            return JSONResponse({"status": "ready", "queued": state.batcher.queued})
        status = "failed" if state.load_error else "draining" if state.pipeline is not None else "loading"
        return JSONResponse({"status": status, "detail": state.load_error}, status_code=503)

    @app.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=state.metrics.content_type)

    app.include_router(native.router)
    app.include_router(a1111.router)
    app.include_router(extra_networks.router)
    app.include_router(a1111_info.router)
    app.include_router(a1111_extras.router)
    app.include_router(openai_images.router)
    app.include_router(controlnet_api.router)
    openapi.install(app, state)
    return app


def _add_error_handlers(app: FastAPI, state: ServeState) -> None:
    def answer(request: Request, status: int, body: dict, headers: dict | None = None) -> JSONResponse:
        if request.url.path.startswith("/v1/images/"):  # OpenAI clients read {"error": {"message": ...}}
            first = body["detail"][0]
            param = ".".join(str(p) for p in first["loc"][1:]) or None
            kind = "invalid_request_error" if status < 500 else "server_error"
            body = {**body, "error": {"message": first["msg"], "type": kind, "param": param, "code": None}}
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(InputError)
    async def input_error(request: Request, exc: InputError) -> JSONResponse:
        state.metrics.rejections.labels("invalid").inc()
        return answer(request, exc.status, exc.body())

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        state.metrics.rejections.labels("invalid").inc()
        # no "input" echo: it may be megabytes of base64
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()
        ]
        return answer(request, 422, {"detail": errors})

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, exc: QueueFull) -> JSONResponse:
        return answer(request, 429, error_body(str(exc)), {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(Draining)
    async def draining(request: Request, exc: Draining) -> JSONResponse:
        return answer(request, 503, error_body(str(exc)), {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(NotReady)
    async def not_ready(request: Request, exc: NotReady) -> JSONResponse:
        return answer(request, 503, error_body(str(exc)), {"Retry-After": "5"})

    @app.exception_handler(BatchFailed)
    async def batch_failed(request: Request, exc: BatchFailed) -> JSONResponse:
        return answer(request, exc.status, error_body(str(exc)))

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, exc: ClientGone) -> Response:
        return Response(status_code=499)  # nginx's "client closed request": nobody reads it

    @app.exception_handler(BodyTooLarge)
    async def too_large(request: Request, exc: BodyTooLarge) -> JSONResponse:
        return answer(request, 413, error_body(str(exc.detail)))


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over this server's limit of {limit} bytes")


class BodyLimit:
    """ASGI middleware: 413 for a body over `limit` bytes, by Content-Length or while it streams in."""

    def __init__(self, app: ASGIApp, limit: int, metrics: Metrics) -> None:
        self.app = app
        self.limit = limit
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            self.metrics.rejections.labels("too_large").inc()
            response = JSONResponse(error_body(str(BodyTooLarge(self.limit).detail)), status_code=413)
            await response(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    self.metrics.rejections.labels("too_large").inc()
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, limited, send)


class Drain:
    """ASGI middleware: while the server drains (SIGTERM), every new request gets a 503 with Retry-After."""

    def __init__(self, app: ASGIApp, state: ServeState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.state.draining:
            self.state.metrics.rejections.labels("draining").inc()
            body = error_body("the server is shutting down: it finishes the requests it has and accepts no new ones")
            await JSONResponse(body, status_code=503, headers={"Retry-After": "5"})(scope, receive, send)
            return
        await self.app(scope, receive, send)
