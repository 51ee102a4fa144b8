"""The FastAPI application: health, readiness, metrics, error answers, and the generation APIs on one batcher.

A server serves one model or several (`ModelSet`): each request names its model (or takes the default), holds it
while it is served, and its requests batch only with requests for the same model.
"""

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
from sdrt.excerpt import excerpt
from sdrt.runtime.pipeline import Pipeline
from sdrt.runtime.request import GenerationRequest
from sdrt.serve.batcher import Batcher, BatchFailed, Completed, Draining, Lane, QueueFull
from sdrt.serve.catalog import CatalogEntry, ModelCatalog
from sdrt.serve.config import ServeConfig
from sdrt.serve.errors import AsciiJSONResponse, InputError, error_body, printable_loc
from sdrt.serve.metrics import Metrics
from sdrt.serve.model_pool import ModelPool, ModelTooLarge, ModelUnavailable
from sdrt.serve.models import ModelSet, Served
from sdrt.serve.progress import Progress

log = logging.getLogger(__name__)

PipelineSource = Pipeline | Callable[[], Pipeline] | ModelSet

# the request header naming the model, as Ray Serve's multiplexing routes by it; a body's own field comes first
MODEL_HEADER = "serve_multiplexed_model_id"
PINS = "sdrt.pins"  # the scope key of the models a request holds (released when its answer is sent)


class NotReady(Exception):
    """The engines are still loading (or failed to load)."""


class ClientGone(Exception):
    """The client disconnected before its result was ready."""


@dataclass
class ServeState:
    """What the routes share: settings, metrics, the models (catalog, loaded pool, default) and the batcher."""

    config: ServeConfig
    metrics: Metrics = field(default_factory=Metrics)
    models: ModelSet | None = None  # set once attached (after the loader of a single pipeline has run)
    pool: ModelPool[Served] | None = None
    batcher: Batcher | None = None
    progress: Progress = field(default_factory=Progress)
    default: str | None = None  # the web UI's current checkpoint: POST /sdapi/v1/options changes it
    started: bool = False  # attached, and the default model loaded when the model set preloads it
    load_error: str | None = None
    draining: bool = False  # SIGTERM: every new request gets a 503 while the admitted ones finish
    options: dict[str, Any] = field(default_factory=dict)  # the web UI API's shared settings (POST /sdapi/v1/options)

    @property
    def catalog(self) -> ModelCatalog:
        if self.models is None:
            raise NotReady(self.load_error or "the engines are still loading")
        return self.models.catalog

    @property
    def pipeline(self) -> Pipeline | None:
        """The default model's pipeline, when it is loaded."""
        served = None if self.pool is None or self.default is None else self.pool.get(self.default)
        return None if served is None else served.pipeline

    @property
    def ready(self) -> bool:
        return self.started and self.batcher is not None and self.batcher.accepting

    def require_pipeline(self) -> Pipeline:
        """The default model's pipeline, else the most recently used loaded one (listings that need a model)."""
        if self.started and self.pool is not None:
            loaded = [self.default, *reversed(self.pool.loaded())]
            for name in loaded:
                served = None if name is None else self.pool.get(name)
                if served is not None:
                    return served.pipeline
        self.metrics.rejections.labels("not_ready").inc()
        raise NotReady(self.load_error or "the engines are still loading")

    def require_batcher(self) -> Batcher:
        if not self.started or self.batcher is None:
            self.metrics.rejections.labels("not_ready").inc()
            raise NotReady(self.load_error or "the engines are still loading")
        return self.batcher

    def entry(self, http: Request, value: object = None, field: str = "model") -> CatalogEntry:
        """The model a request names (its field, else the model header, else the default); InputError if unknown."""
        catalog = self.catalog
        header = http.headers.get(MODEL_HEADER) or None
        named = None if value is None else catalog.resolve(value, field)
        by_header = None if header is None else catalog.resolve(header, f"header {MODEL_HEADER}")
        if named is not None and by_header is not None and named.name != by_header.name:
            raise InputError(
                field, f"{field} {excerpt(value)} is not the model the {MODEL_HEADER} header names ({header!r})"
            )
        if named is not None or by_header is not None:
            return named or by_header  # type: ignore[return-value]
        if self.default is None:
            raise NotReady(self.load_error or "the engines are still loading")
        return catalog.entries[self.default]

    async def use(self, http: Request, value: object = None, field: str = "model") -> Served:
        """The loaded model a request names (see `entry`), held until its answer is sent; loads it if needed."""
        if not self.started or self.pool is None:
            self.metrics.rejections.labels("not_ready").inc()
            raise NotReady(self.load_error or "the engines are still loading")
        entry = self.entry(http, value, field)
        served = await self.pool.acquire(entry)
        http.scope.setdefault(PINS, []).append(entry.name)
        return served

    def release(self, scope: Scope) -> None:
        """Let go of the models a request held (its answer is sent, or it failed)."""
        for name in scope.pop(PINS, ()):
            if self.pool is not None:
                self.pool.release(name)

    async def attach(self, models: ModelSet) -> None:
        """Start batching for a model set and load its default model (unless it loads on demand)."""
        self.models = models
        self.default = models.catalog.default
        batcher = Batcher(
            None,
            max_images=self.config.max_batch or 1,
            max_wait=self.config.max_wait_ms / 1000.0,
            max_queue=self.config.max_queue,
            metrics=self.metrics,
            progress=self.progress,
        )
        self.pool = ModelPool(
            self._load, models.max_loaded, models.max_bytes, busy=batcher.busy, cost=models.cost, metrics=self.metrics
        )
        await batcher.start()
        self.batcher = batcher
        if models.preload:
            entry = models.catalog.entries[self.default]
            served = await self.pool.acquire(entry)
            self.pool.release(entry.name)
            batcher.max_images = served.lane.max_images
        self.started = True

    def _load(self, entry: CatalogEntry) -> Served:
        """Load a model and warm its configured shapes (in a worker thread)."""
        assert self.models is not None  # attach sets it before anything loads
        pipeline = self.models.load(entry)
        if self.config.warm_shapes:
            from sdrt.serve.warmup import warm_up

            seconds = warm_up(pipeline, self.config.warm_shapes)
            log.info("warmed %d shapes of %s in %.1f s", len(self.config.warm_shapes), entry.name, seconds)
        progress = self.progress

        def run_batch(requests: Sequence[GenerationRequest]) -> list:
            return pipeline.run_pass(requests, callback=progress.on_step, stop=progress.should_stop)

        max_images = self.config.max_batch or pipeline.manifest.ranges.max_batch
        lane = Lane(entry.name, run_batch, max_images, pipeline.family.latent_rgb or None)
        return Served(entry, pipeline, lane)

    async def refresh(self) -> dict[str, list[str]]:
        """Scan the catalog again: new models become servable, changed or removed ones leave once idle."""
        catalog = self.catalog
        added, removed, changed = await run_in_threadpool(catalog.scan)
        assert self.pool is not None  # catalog checked the state is attached
        self.pool.forget_failures()
        for name in removed + changed:
            self.pool.changed(name)
        if self.default not in catalog.entries:
            self.default = catalog.default
        return {"added": added, "removed": removed, "changed": changed}

    async def generate(
        self, http: Request, api: str, build: Callable[[Pipeline], tuple[GenerationRequest, Hashable]], served: Served
    ) -> Completed:
        """Validate (in a worker thread: images decode there), queue, and wait for the result or the client to leave.

        A client that disconnects while queued is dropped from the queue; one that disconnects while its
        batch runs leaves the batch to finish (the others in it need their images) and its result is discarded.
        """
        (completed,) = await self.generate_all(http, api, lambda pipe: [build(pipe)], served)
        return completed

    async def generate_all(
        self,
        http: Request,
        api: str,
        build: Callable[[Pipeline], list[tuple[GenerationRequest, Hashable]]],
        served: Served,
    ) -> list[Completed]:
        """`generate` for the several requests one call makes (the web UI's several init images), in their order."""
        built = await run_in_threadpool(build, served.pipeline)
        if self.batcher is None:  # use() checked it; a type checker cannot know
            raise NotReady("the engines are still loading")
        start = time.monotonic()
        jobs = []
        try:
            caller = http.client.host if http.client is not None else None
            for request, key in built:
                jobs.append(self.batcher.submit(request, key, caller, served.lane))
        except Exception:  # the queue filled part way: none of this call's requests run
            for job in jobs:
                self.batcher.cancel(job)
            raise
        self.metrics.model_requests.labels(served.name, api).inc()
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
    models: PipelineSource,
    config: ServeConfig | None = None,
    on_load_failure: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """An sdrt server app for a loaded pipeline, a loader of one run in a thread at startup, or a model set (whose
    default model loads at startup); /ready says when it is loaded.

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

    async def load(source: Callable[[], Pipeline] | ModelSet) -> None:
        try:
            if isinstance(source, ModelSet):
                await state.attach(source)
            else:
                await state.attach(ModelSet.single(await run_in_threadpool(source)))
            log.info("engines loaded; ready")
        except Exception as exc:
            state.load_error = f"loading the engines failed: {type(exc).__name__}: {exc}"
            log.exception("loading the engines failed")
            if on_load_failure is not None:
                on_load_failure(exc)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loading = None
        if isinstance(models, Pipeline):
            await state.attach(ModelSet.single(models))
        elif isinstance(models, ModelSet) and not models.preload:
            await load(models)  # nothing to load before serving: serve once started
        else:
            loading = asyncio.create_task(load(models))
        yield
        if loading is not None:
            loading.cancel()
        if state.batcher is not None:
            await state.batcher.drain()
        if state.pool is not None:
            state.pool.unload_all()

    # every JSON answer escapes non-ASCII: a client's lone surrogate echoed in one cannot fail to encode
    app = FastAPI(title="sdrt", version=__version__, lifespan=lifespan, default_response_class=AsciiJSONResponse)
    app.state.sdrt = state
    app.add_middleware(ModelPins, state=state)
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
            loaded = state.pool.loaded() if state.pool is not None else []
            return JSONResponse({"status": "ready", "queued": state.batcher.queued, "models": loaded})
        status = "failed" if state.load_error else "draining" if state.started else "loading"
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
        return AsciiJSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(InputError)
    async def input_error(request: Request, exc: InputError) -> JSONResponse:
        state.metrics.rejections.labels("invalid").inc()
        return answer(request, exc.status, exc.body())

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        state.metrics.rejections.labels("invalid").inc()
        # no "input" echo: it may be megabytes of base64; a key in "loc" is the client's (an excerpt of it)
        errors = [
            {"loc": printable_loc(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
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

    @app.exception_handler(ModelUnavailable)
    @app.exception_handler(ModelTooLarge)
    async def model_unavailable(request: Request, exc: ModelUnavailable | ModelTooLarge) -> JSONResponse:
        return answer(request, exc.status, error_body(str(exc)))

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


class ModelPins:
    """ASGI middleware: the models a request held are let go once its answer is sent (or it failed)."""

    def __init__(self, app: ASGIApp, state: ServeState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        finally:
            if scope["type"] == "http":
                self.state.release(scope)


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
