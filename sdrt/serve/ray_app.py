"""Scale-out on Ray Serve: the same app, with its own batcher, in every replica; one replica per GPU.

Ray Serve routes each HTTP request to a replica; inside it the request meets the others on that replica
in the same batcher as `sdrt serve`, so batching, limits, errors and metrics are the same. Either

    sdrt serve ARTIFACT --ray --replicas 4 --device cuda              # or --min/--max-replicas to autoscale

or, as a Ray Serve application (`serve run` / `serve deploy`, arguments as key=value):

    serve run sdrt.serve.ray_app:app_builder artifact=/models/sd15 device=cuda replicas=4
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType

from pydantic import BaseModel
from ray import serve
from ray.serve import Application

from sdrt.manifest import read_manifest
from sdrt.runtime.pipeline import Pipeline
from sdrt.serve.app import create_app
from sdrt.serve.config import ServeConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RayOptions:
    """How the deployment is replicated and placed."""

    replicas: int = 1  # fixed number of replicas (without autoscaling)
    min_replicas: int | None = None  # with max_replicas: autoscale between these
    max_replicas: int | None = None  # set to turn autoscaling on
    target_ongoing_requests: float | None = None  # autoscaling target per replica; default twice the batch size
    num_gpus: float | None = None  # per replica; default 1 for a CUDA device, 0 on the CPU
    num_cpus: float = 1.0  # per replica

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError(f"replicas {self.replicas} must be at least 1")
        if self.max_replicas is None and self.min_replicas is not None:
            raise ValueError("min_replicas needs max_replicas (autoscaling runs between the two)")
        if self.max_replicas is not None and not 0 <= (self.min_replicas or 0) <= self.max_replicas:
            raise ValueError(f"need 0 <= min_replicas <= max_replicas, got {self.min_replicas}, {self.max_replicas}")


@serve.ingress()
class SdrtReplica:
    """One replica: loads the engines once, then serves the sdrt app (built after the constructor, by Ray)."""

    def __init__(
        self,
        path: str,
        backend: str,
        device: str,
        config: ServeConfig,
        refiner: str | None = None,
        load_options: dict | None = None,
    ) -> None:
        options = dict(load_options or {})
        upscaler_dir = options.pop("upscaler_dir", None)
        if upscaler_dir is not None:  # the replica's own upscaler engines, on its backend and device
            from sdrt.export.upscalers import open_library

            options["upscalers"] = open_library(upscaler_dir, backend, device, cache_dir=options.get("cache_dir"))
        self._pipeline = Pipeline.load(path, backend=backend, device=device, refiner=refiner, **options)
        self._config = config
        self._state = None

    def __serve_build_asgi_app__(self):
        app = create_app(self._pipeline, self._config)
        self._state = app.state.sdrt
        return app

    def check_health(self) -> None:
        """Ray restarts a replica whose batcher has stopped."""
        if self._state is not None and self._state.batcher is not None and not self._state.batcher.accepting:
            raise RuntimeError("the replica's batcher is not running")


def deployment(
    path: str | os.PathLike,
    backend: str = "onnxruntime",
    device: str = "cpu",
    config: ServeConfig | None = None,
    options: RayOptions | None = None,
    refiner: str | os.PathLike | None = None,
    engine_options: dict | None = None,
    **load_options: str | os.PathLike,
) -> Application:
    """The sdrt app as a Ray Serve application (pass it to serve.run); `refiner` is an SDXL refiner artifact.

    `engine_options` go to the backend (e.g. cuda_graphs=True); `load_options` are directories Pipeline.load
    takes (embeddings_dir, lora_dir, model_dir) and upscaler_dir (each replica opens its upscalers), resolved for
    the replicas.
    """
    config = config or ServeConfig()
    options = options or RayOptions()
    path = str(Path(path).resolve())  # replicas may start in another working directory
    refiner = None if refiner is None else str(Path(refiner).resolve())
    directories = {k: str(Path(v).resolve()) for k, v in load_options.items() if v is not None}
    num_gpus = options.num_gpus if options.num_gpus is not None else (1.0 if device.startswith("cuda") else 0.0)
    batch = config.max_batch or read_manifest(path).ranges.max_batch
    scaling: dict = {"num_replicas": options.replicas}
    if options.max_replicas is not None:
        scaling = {
            "autoscaling_config": {
                "min_replicas": options.min_replicas or 0,
                "max_replicas": options.max_replicas,
                "target_ongoing_requests": options.target_ongoing_requests or 2 * batch,
            }
        }
    return serve.deployment(
        SdrtReplica,
        name="sdrt",
        ray_actor_options={"num_gpus": num_gpus, "num_cpus": options.num_cpus},
        # every request a replica may hold reaches its batcher (which answers 429 beyond max_queue);
        # Ray's router holds at most max_queue more per deployment before answering 503 itself
        max_ongoing_requests=config.max_queue + batch,
        max_queued_requests=config.max_queue,
        health_check_period_s=10,
        **scaling,
    ).bind(path, backend, device, config, refiner, {**dict(engine_options or {}), **directories})


class AppArgs(BaseModel):
    """Arguments of `serve run sdrt.serve.ray_app:app_builder key=value ...`."""

    artifact: str
    refiner: str | None = None
    embeddings_dir: str | None = None
    lora_dir: str | None = None
    backend: str = "onnxruntime"
    device: str = "cpu"
    max_batch: int | None = None
    max_wait_ms: float = 50.0
    max_queue: int = 64
    replicas: int = 1
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_ongoing_requests: float | None = None
    num_gpus: float | None = None


def app_builder(args: AppArgs) -> Application:
    """Ray Serve application builder (`serve run` / `serve deploy` import path)."""
    config = ServeConfig(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue)
    options = RayOptions(
        replicas=args.replicas,
        min_replicas=args.min_replicas,
        max_replicas=args.max_replicas,
        target_ongoing_requests=args.target_ongoing_requests,
        num_gpus=args.num_gpus,
    )
    log.info("sdrt on Ray Serve: %s", asdict(options))
    return deployment(
        args.artifact, args.backend, args.device, config, options, refiner=args.refiner,
        embeddings_dir=args.embeddings_dir, lora_dir=args.lora_dir,
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
        serve.run(app, name="sdrt", route_prefix="/", blocking=True)
    except KeyboardInterrupt:
        log.info("stopping: deleting the sdrt app from Ray Serve")
    finally:
        signal.signal(signal.SIGTERM, previous)
        try:
            serve.delete("sdrt")
        finally:
            ray.shutdown()
    return 0
