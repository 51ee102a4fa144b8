"""Scale-out on Ray Serve: a router in front, model replicas behind it, each request sent to a replica holding its
model (Ray Serve's model multiplexing).

The router (`sdrt-router`, the HTTP ingress) reads the model a request names (the API's own field, or the
`serve_multiplexed_model_id` header, else the default), and forwards the request, whole, to the model replicas
(`sdrt-models`) with that model id: Ray Serve routes it to a replica that has the model loaded, or has it load
there when none has (or all those are busy). Each replica runs the sdrt app itself, so batching, limits, errors
and metrics are those of `sdrt serve`, with at most `max_loaded` models loaded per replica. A replica that dies
with requests in flight answers them with a 503 and `Retry-After` through the router, and Ray replaces it. The
web UI's shared settings (`POST /sdapi/v1/options`) live in the router and go with each request.

    sdrt serve ARTIFACT [ARTIFACT...] --ray --replicas 4 --device cuda    # or --model-dir DIR, --max-replicas N

or, as a Ray Serve application (`serve run` / `serve deploy`, arguments as key=value or a config file):

    serve run sdrt.serve.ray_app:app_builder model_dir=/models device=cuda max_replicas=4
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sdrt.serve.app import MODEL_HEADER, BodyLimit, create_app
from sdrt.serve.catalog import ModelCatalog
from sdrt.serve.config import ServeConfig
from sdrt.serve.errors import AsciiJSONResponse, InputError, error_body
from sdrt.serve.forwarding import Answer, Forwarded, call_asgi, requested_model
from sdrt.serve.metrics import Metrics
from sdrt.serve.models import DEFAULT_MAX_LOADED, ModelSet

log = logging.getLogger(__name__)

APP_NAME = "sdrt"
ROUTER = "sdrt-router"
MODELS = "sdrt-models"
VERSION_HEADER = "x-sdrt-model-sha256"  # the router's catalog's hash of the model: a replica's older copy rescans
RETRY_AFTER_S = 5  # what a client is told to wait when a replica went away under its request
GENERATION = ("/sdapi/v1/txt2img", "/sdapi/v1/img2img")
STOPPABLE = ("/sdapi/v1/progress", "/sdapi/v1/interrupt", "/sdapi/v1/skip")  # the caller's own job
CALLERS_KEPT = 4096  # clients whose last model the router remembers (for /progress and /interrupt)


@dataclass(frozen=True)
class RayOptions:
    """How the model replicas are replicated and placed."""

    replicas: int = 1  # fixed number of replicas (without autoscaling)
    min_replicas: int | None = None  # with max_replicas: autoscale between these
    max_replicas: int | None = None  # set to turn autoscaling on
    target_ongoing_requests: float | None = None  # autoscaling target per replica; default twice the batch size
    upscale_delay_s: float | None = None  # autoscaling: load must last this long before adding replicas (Ray's 30)
    downscale_delay_s: float | None = None  # autoscaling: idle this long before removing replicas (Ray's 600)
    look_back_period_s: float | None = None  # autoscaling: seconds of load averaged (Ray's 30)
    num_gpus: float | None = None  # per replica; default 1 for a CUDA device, 0 on the CPU
    num_cpus: float = 1.0  # per replica
    resources: Mapping[str, float] = field(default_factory=dict)  # custom Ray resources per replica (node pools)
    router_replicas: int = 1  # routers (each holds its own copy of the web UI's options)

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError(f"replicas {self.replicas} must be at least 1")
        if self.router_replicas < 1:
            raise ValueError(f"router_replicas {self.router_replicas} must be at least 1")
        if self.max_replicas is None and self.min_replicas is not None:
            raise ValueError("min_replicas needs max_replicas (autoscaling runs between the two)")
        if self.max_replicas is not None and not 0 <= (self.min_replicas or 0) <= self.max_replicas:
            raise ValueError(f"need 0 <= min_replicas <= max_replicas, got {self.min_replicas}, {self.max_replicas}")
        for name in ("upscale_delay_s", "downscale_delay_s", "look_back_period_s"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} {value} must not be negative")


@dataclass(frozen=True)
class ModelSources:
    """What every replica serves and how it loads it: absolute paths, since replicas start anywhere."""

    paths: tuple[str, ...] = ()  # artifacts; the first is the default
    models_dir: str | None = None  # a directory of artifacts
    refiner: str | None = None
    backend: str = "onnxruntime"
    device: str = "cpu"
    load_options: Mapping[str, Any] = field(default_factory=dict)  # Pipeline.load's: directories, backend options
    max_loaded: int = DEFAULT_MAX_LOADED  # per replica
    max_bytes: int | None = None  # bytes of weights per replica; None: 80% of the device's memory

    @classmethod
    def of(cls, paths: str | os.PathLike | Sequence[str | os.PathLike], **fields: Any) -> ModelSources:
        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        absolute = {k: _absolute(v) for k, v in fields.items() if k in ("models_dir", "refiner")}
        return cls(tuple(_absolute(p) for p in paths), **{**fields, **absolute})

    def catalog(self) -> ModelCatalog:
        return ModelCatalog(self.paths, self.models_dir)

    def model_set(self) -> ModelSet:
        """The replica's models, each loaded when first asked for."""
        from sdrt.serve.model_pool import memory_budget

        budget = memory_budget(self.device) if self.max_bytes is None else self.max_bytes
        options = dict(self.load_options)
        upscaler_dir = options.pop("upscaler_dir", None)
        if upscaler_dir is not None:  # the replica's own upscaler engines, on its backend and device
            from sdrt.export.upscalers import open_library

            options["upscalers"] = open_library(
                upscaler_dir, self.backend, self.device, cache_dir=options.get("cache_dir")
            )
        models = ModelSet.from_paths(
            self.paths, self.models_dir, self.backend, self.device, self.refiner, self.max_loaded, budget,
            preload=False, **options,
        )  # fmt: skip
        return models


def _absolute(path: str | os.PathLike | None) -> str | None:
    return None if path is None else str(Path(path).resolve())


class _Held:
    """What Ray Serve's multiplexing keeps per model id: letting it go unloads the model once nothing uses it."""

    def __init__(self, state, name: str) -> None:
        import asyncio

        self._state, self._name, self._loop = state, name, asyncio.get_running_loop()
        self._released = False

    def __del__(self) -> None:  # Ray's LRU calls it (in a worker thread); so may the collector, later: once only
        if self._released:
            return
        self._released = True
        try:
            self._loop.call_soon_threadsafe(self._state.pool.retire, self._name)
        except RuntimeError:  # the loop is closed: the replica is going away
            pass


class SdrtModels:
    """A model replica: the sdrt app with a pool of loaded models, answering requests the router forwards."""

    async def __init__(self, sources: ModelSources, config: ServeConfig) -> None:
        import ray

        self._app = create_app(sources.model_set(), config)
        self._state = self._app.state.sdrt
        # the app's startup, as a server runs it: the batcher starts; no model loads until one is asked for.
        # (Its shutdown is not needed: Ray Serve lets a replica's requests finish before it stops it.)
        self._lifespan = self._app.router.lifespan_context(self._app)
        await self._lifespan.__aenter__()
        context = serve.get_replica_context()
        self._where: tuple[tuple[bytes, bytes], ...] = (
            (b"x-sdrt-replica", context.replica_id.unique_id.encode()),
            (b"x-sdrt-node", ray.get_runtime_context().get_node_id().encode()),
        )
        state = self._state

        async def hold(model_id: str) -> _Held:
            entry = state.catalog.get(model_id)
            if entry is not None:
                await state.pool.acquire(entry)
                state.pool.release(model_id)
            return _Held(state, model_id)

        # Ray Serve's own LRU of model ids per replica: what it routes by; the pool bounds memory besides
        self._hold = serve.multiplexed(max_num_models_per_replica=sources.max_loaded)(hold)

    async def forward(self, request: Forwarded) -> Answer:
        """Answer a request the router forwards; first load its model here, where Ray Serve sent it."""
        model = serve.get_multiplexed_model_id()
        if model:
            version = request.header(VERSION_HEADER)
            entry = self._state.catalog.get(model)
            if entry is None or (version is not None and entry.sha256 != version):
                await self._state.refresh()  # the router knows of a newer version: read the artifacts again
            try:
                await self._hold(model)
            except Exception:  # the app answers with the reason (a load failure is remembered)
                log.debug("loading %s for Ray Serve failed", model, exc_info=True)
        loaded = ",".join(self._state.pool.loaded()) if self._state.pool is not None else ""
        return await call_asgi(self._app, request, (*self._where, (b"x-sdrt-loaded", loaded.encode())))

    def check_health(self) -> None:
        """Ray restarts a replica whose batcher has stopped."""
        batcher = self._state.batcher
        if batcher is not None and not batcher.accepting and not self._state.draining:
            raise RuntimeError("the replica's batcher is not running")


class RouterMetrics:
    """The router's own metrics: requests per model and status, their seconds, replicas lost under requests."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "sdrt_router_requests", "Requests forwarded, by model and status", ["model", "status"], registry=r
        )
        self.seconds = Histogram(
            "sdrt_router_request_seconds", "Seconds from arrival to answer, by model", ["model"], registry=r
        )
        self.failures = Counter(
            "sdrt_router_failures", "Requests answered by the router itself with a 5xx, by why", ["reason"], registry=r
        )  # replica_lost (503), overloaded (503), error (500)


@serve.ingress()
class SdrtRouter:
    """The HTTP ingress: picks each request's model and forwards it to a replica that holds it."""

    def __init__(self, models: DeploymentHandle, sources: ModelSources, config: ServeConfig) -> None:
        self._models = models
        self._catalog = sources.catalog()
        self._default = self._catalog.default
        self._options: dict[str, Any] = {}  # the web UI's settings written through this router (but the model)
        self._callers: OrderedDict[str, str] = OrderedDict()  # client -> the model of its last request
        self._metrics = RouterMetrics()
        self._config = config

    def __serve_build_asgi_app__(self):
        routes = [
            Route("/health", self._health, methods=["GET"]),
            Route("/metrics", self._metrics_text, methods=["GET"]),
            Route("/sdapi/v1/refresh-checkpoints", self._refresh, methods=["POST"]),
            Route("/{path:path}", self._route, methods=["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]),
        ]
        app = Starlette(routes=routes)
        app.add_middleware(BodyLimit, limit=self._config.max_body_bytes, metrics=Metrics())
        return app

    async def _health(self, request: Request) -> Response:
        return AsciiJSONResponse({"status": "ok"})

    async def _metrics_text(self, request: Request) -> Response:
        return Response(generate_latest(self._metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def _refresh(self, request: Request) -> Response:
        """Rescan here; replicas rescan when a request brings a model or version they do not know."""
        added, removed, changed = self._catalog.scan()
        if self._default not in self._catalog.entries:
            self._default = self._catalog.default
        return AsciiJSONResponse({"added": added, "removed": removed, "changed": changed})

    async def _route(self, request: Request) -> Response:
        start = time.monotonic()
        forwarded = Forwarded(
            request.method,
            request.url.path,
            request.scope.get("query_string", b""),
            tuple(request.scope["headers"]),
            await request.body(),
            None if request.client is None else (request.client.host, request.client.port),
        )
        caller = request.client.host if request.client is not None else ""
        model = self._model_of(forwarded, await requested_model(forwarded), caller)
        if forwarded.path in GENERATION:
            forwarded = self._with_options(forwarded)
        answer = await self._forward(forwarded, model)
        if forwarded.path == "/sdapi/v1/options" and answer.status == 200:
            answer = self._options_seen(forwarded, answer)
        name = model or "-"
        self._metrics.requests.labels(name, str(answer.status)).inc()
        self._metrics.seconds.labels(name).observe(time.monotonic() - start)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in answer.headers if k != b"content-length"}
        return Response(answer.body, status_code=answer.status, headers=headers)

    def _model_of(self, request: Forwarded, named: str | None, caller: str) -> str | None:
        """The catalog name of the model a request goes to: named (field or header), its caller's, or the default;
        None for a name not in the catalog (the replica answers with the names there are)."""
        header = request.header(MODEL_HEADER)
        try:
            by_field = None if named is None else self._catalog.resolve(named, "model").name
            by_header = None if header is None else self._catalog.resolve(header, "model").name
        except InputError:
            return None
        if by_field is not None and by_header is not None and by_field != by_header:
            return None  # the replica says the two disagree
        if by_field is not None or by_header is not None:
            name = by_field or by_header
        elif request.path in STOPPABLE:
            name = self._callers.get(caller, self._default)
        else:
            name = self._default
        if request.path not in STOPPABLE:
            self._callers[caller] = name
            self._callers.move_to_end(caller)
            while len(self._callers) > CALLERS_KEPT:
                self._callers.popitem(last=False)
        return name

    async def _forward(self, request: Forwarded, model: str | None) -> Answer:
        from ray.exceptions import RayActorError
        from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

        handle = self._models
        if model is not None:
            entry = self._catalog.get(model)
            request = request.with_header(MODEL_HEADER, model)
            if entry is not None and entry.sha256:
                request = request.with_header(VERSION_HEADER, entry.sha256)
            handle = handle.options(multiplexed_model_id=model)
        response = handle.forward.remote(request)
        try:
            return await response
        except (RayActorError, DeploymentUnavailableError) as exc:
            self._metrics.failures.labels("replica_lost").inc()
            log.warning("a model replica went away under a request (%s): answering 503", type(exc).__name__)
            return _error(503, "the replica serving this request stopped; Ray Serve replaces it: retry", RETRY_AFTER_S)
        except BackPressureError:
            self._metrics.failures.labels("overloaded").inc()
            return _error(503, "every model replica is at capacity; retry later", RETRY_AFTER_S)
        except Exception as exc:
            self._metrics.failures.labels("error").inc()
            log.exception("forwarding a request failed")
            return _error(500, f"the model replica failed on this request: {type(exc).__name__}: {exc}")

    def _with_options(self, request: Forwarded) -> Forwarded:
        """A web UI generation with the router's stored settings as overrides, where it gives none of its own."""
        import json

        if "CLIP_stop_at_last_layers" not in self._options:
            return request
        try:
            body = json.loads(request.body)
        except ValueError:
            return request
        if not isinstance(body, dict) or not isinstance(body.get("override_settings", {}), dict):
            return request
        stored = {"CLIP_stop_at_last_layers": self._options["CLIP_stop_at_last_layers"]}
        overrides = {**stored, **body.get("override_settings", {})}
        return request.with_body(json.dumps({**body, "override_settings": overrides}).encode())

    def _options_seen(self, request: Forwarded, answer: Answer) -> Answer:
        """The web UI's options are the router's, whichever replica answered: a write a replica accepted is kept
        here (the model becomes the default), a read shows what is kept here."""
        import json

        if request.method == "POST":
            options = dict(json.loads(request.body))
            model = options.pop("sd_model_checkpoint", None)
            if model is not None:
                self._default = self._catalog.resolve(model, "sd_model_checkpoint").name
            self._options.update(options)
            return answer
        if request.method == "GET" and self._options:
            shown = {**json.loads(answer.body), **self._options}
            return replace(answer, body=json.dumps(shown, ensure_ascii=True).encode())
        return answer


def _error(status: int, message: str, retry_after: int | None = None) -> Answer:
    import json

    headers: tuple[tuple[bytes, bytes], ...] = ((b"content-type", b"application/json"),)
    if retry_after is not None:
        headers += ((b"retry-after", str(retry_after).encode()),)
    return Answer(status, headers, json.dumps(error_body(message), ensure_ascii=True).encode())


def deployment(
    paths: str | os.PathLike | Sequence[str | os.PathLike] = (),
    backend: str = "onnxruntime",
    device: str = "cpu",
    config: ServeConfig | None = None,
    options: RayOptions | None = None,
    refiner: str | os.PathLike | None = None,
    engine_options: dict | None = None,
    models_dir: str | os.PathLike | None = None,
    max_loaded: int = DEFAULT_MAX_LOADED,
    max_bytes: int | None = None,
    **load_options: str | os.PathLike,
) -> Application:
    """The sdrt app as a Ray Serve application (pass it to serve.run): a router and the model replicas.

    `paths` are artifacts (the first is the default) and `models_dir` a directory of them; `refiner` an SDXL
    refiner artifact; `engine_options` go to the backend (e.g. cuda_graphs=True); `load_options` are directories
    Pipeline.load takes (embeddings_dir, lora_dir, model_dir, ...) and upscaler_dir (each replica opens its
    upscalers), resolved for the replicas. Each replica keeps at most `max_loaded` models and `max_bytes` bytes
    of weights loaded.
    """
    config = config or ServeConfig()
    options = options or RayOptions()
    directories = {k: _absolute(v) for k, v in load_options.items() if v is not None}
    sources = ModelSources.of(
        paths, models_dir=models_dir, refiner=refiner, backend=backend, device=device,
        load_options={**dict(engine_options or {}), **directories}, max_loaded=max_loaded, max_bytes=max_bytes,
    )  # fmt: skip
    catalog = sources.catalog()  # a bad catalog fails here, before anything is deployed
    default = catalog.entries[catalog.default]
    if default.error is not None:
        raise ValueError(f"{default.path}: {default.error}")
    num_gpus = options.num_gpus if options.num_gpus is not None else (1.0 if device.startswith("cuda") else 0.0)
    batch = config.max_batch or _max_batch(default.path)
    scaling: dict = {"num_replicas": options.replicas}
    if options.max_replicas is not None:
        autoscaling = {
            "min_replicas": options.min_replicas or 0,
            "max_replicas": options.max_replicas,
            "target_ongoing_requests": options.target_ongoing_requests or 2 * batch,
        }
        for name in ("upscale_delay_s", "downscale_delay_s", "look_back_period_s"):
            if getattr(options, name) is not None:
                autoscaling[name] = getattr(options, name)
        scaling = {"autoscaling_config": autoscaling}
    actor = {"num_gpus": num_gpus, "num_cpus": options.num_cpus, "resources": dict(options.resources)}
    models = serve.deployment(
        SdrtModels,
        name=MODELS,
        ray_actor_options=actor,
        # every request a replica may hold reaches its batcher (which answers 429 beyond max_queue);
        # Ray's router holds at most max_queue more per deployment before the sdrt router answers 503
        max_ongoing_requests=config.max_queue + batch,
        max_queued_requests=config.max_queue,
        health_check_period_s=10,
        **scaling,
    ).bind(sources, config)
    router = serve.deployment(
        SdrtRouter,
        name=ROUTER,
        num_replicas=options.router_replicas,
        ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=4 * (config.max_queue + batch) * max(options.replicas, options.max_replicas or 1),
    )
    return router.bind(models, sources, config)


def _max_batch(path: Path) -> int:
    from sdrt.manifest import MANIFEST_NAME, read_manifest

    return read_manifest(path).ranges.max_batch if (path / MANIFEST_NAME).is_file() else 4


class AppArgs(BaseModel):
    """Arguments of `serve run sdrt.serve.ray_app:app_builder key=value ...` (or a Serve config file's `args`)."""

    model_config = ConfigDict(extra="forbid")  # a misspelt argument is an error, not a default

    artifact: str | None = None  # one artifact (the default model)
    artifacts: list[str] = []  # several; the first is the default (after `artifact`)
    model_dir: str | None = None  # a directory of artifacts
    refiner: str | None = None
    embeddings_dir: str | None = None
    lora_dir: str | None = None
    controlnet_dir: str | None = None  # ControlNet artifacts (each model's requests load the ones they name)
    annotator_dir: str | None = None  # annotator models' weights for ControlNet modules (depth, openpose, ...)
    backend: str = "onnxruntime"
    device: str = "cpu"
    max_loaded_models: int = DEFAULT_MAX_LOADED  # per replica
    max_model_memory_gb: float | None = None  # per replica; default 80% of the device's memory
    max_batch: int | None = None
    max_wait_ms: float = 50.0
    max_queue: int = 64
    replicas: int = 1
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_ongoing_requests: float | None = None
    upscale_delay_s: float | None = None
    downscale_delay_s: float | None = None
    look_back_period_s: float | None = None
    num_gpus: float | None = None
    num_cpus: float = 1.0
    resources: dict[str, float] = {}
    router_replicas: int = 1


def app_builder(args: AppArgs) -> Application:
    """Ray Serve application builder (`serve run` / `serve deploy` import path)."""
    if isinstance(args, dict):  # serve's builder contract passes the validated model; a dict is also accepted
        args = AppArgs(**args)
    config = ServeConfig(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue)
    options = RayOptions(
        replicas=args.replicas,
        min_replicas=args.min_replicas,
        max_replicas=args.max_replicas,
        target_ongoing_requests=args.target_ongoing_requests,
        upscale_delay_s=args.upscale_delay_s,
        downscale_delay_s=args.downscale_delay_s,
        look_back_period_s=args.look_back_period_s,
        num_gpus=args.num_gpus,
        num_cpus=args.num_cpus,
        resources=args.resources,
        router_replicas=args.router_replicas,
    )
    paths = ([args.artifact] if args.artifact else []) + list(args.artifacts)
    if not paths and args.model_dir is None:
        raise ValueError("give artifact=, artifacts=[...] or model_dir=")
    memory = None if args.max_model_memory_gb is None else int(args.max_model_memory_gb * 1024**3)
    log.info("sdrt on Ray Serve: %s", asdict(replace(options, resources=dict(options.resources))))
    return deployment(
        paths, args.backend, args.device, config, options, refiner=args.refiner, models_dir=args.model_dir,
        max_loaded=args.max_loaded_models, max_bytes=memory, embeddings_dir=args.embeddings_dir,
        lora_dir=args.lora_dir, controlnet_dir=args.controlnet_dir, annotator_dir=args.annotator_dir,
    )  # fmt: skip


def run(app: Application, host: str = "127.0.0.1", port: int = 7860, address: str | None = None) -> int:
    """Start a local Ray instance (or join the cluster at `address`), deploy `app` at host:port, serve until
    SIGTERM or Ctrl-C, then delete the app (Ray Serve drains each replica's requests first)."""
    import ray

    def interrupt(sig: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    ray.init(address=address, include_dashboard=False)
    # after ray.init, which installs a SIGTERM handler of its own that aborts the process
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(app, name=APP_NAME, route_prefix="/", blocking=True)
    except KeyboardInterrupt:
        log.info("stopping: deleting the sdrt app from Ray Serve")
    finally:
        signal.signal(signal.SIGTERM, previous)
        try:
            serve.delete(APP_NAME)
        finally:
            ray.shutdown()
    return 0
