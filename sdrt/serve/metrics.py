"""Prometheus metrics of one server, in a registry of its own (several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from sdrt.runtime.timing import Timings

# Stages of a batch, as in Timings; "total" is the whole run_batch call.
STAGES = ("text_encoder", "vae_encode", "unet", "scheduler", "vae_decode", "total")

_SECONDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0, 300.0)
_COUNTS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


class Metrics:
    """Queue depth, batch sizes, per-stage and request latency, images generated, rejections and drops; per model
    requests, queue depth, batch sizes, loads and evictions."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.queue_depth = Gauge("sdrt_queue_depth", "Requests waiting for the engine", registry=r)
        self.queue_images = Gauge("sdrt_queue_images", "Images of the requests waiting for the engine", registry=r)
        self.running_images = Gauge("sdrt_running_images", "Images in the batch the engine is running", registry=r)
        self.batch_images = Histogram("sdrt_batch_images", "Images per engine batch", buckets=_COUNTS, registry=r)
        self.batch_requests = Histogram("sdrt_batch_requests", "Requests per engine batch", buckets=_COUNTS, registry=r)
        self.stage_seconds = Histogram(
            "sdrt_stage_seconds", "Seconds per stage of an engine batch", ["stage"], buckets=_SECONDS, registry=r
        )
        self.queue_seconds = Histogram(
            "sdrt_queue_seconds", "Seconds a request waited before its batch started", buckets=_SECONDS, registry=r
        )
        self.request_seconds = Histogram(
            "sdrt_request_seconds",
            "Seconds from admission to result, per API",
            ["api"],
            buckets=_SECONDS,
            registry=r,
        )
        self.images = Counter("sdrt_images_generated", "Images generated and returned to clients", registry=r)
        self.rejections = Counter(
            "sdrt_rejections", "Requests refused, by reason", ["reason"], registry=r
        )  # queue_full, draining, invalid, too_large, not_ready
        self.dropped = Counter(
            "sdrt_dropped", "Requests whose client disconnected, by where they were", ["where"], registry=r
        )  # queued (dropped from the queue) or running (the batch finished, the result was discarded)
        self.batch_errors = Counter("sdrt_batch_errors", "Engine batches that failed", registry=r)
        # per model (the catalog name): what each served, and the loaded-model pool's loads and evictions
        self.model_requests = Counter(
            "sdrt_model_requests", "Requests admitted for a model, per API", ["model", "api"], registry=r
        )
        self.model_queue_depth = Gauge(
            "sdrt_model_queue_depth", "Requests waiting for the engine, per model", ["model"], registry=r
        )
        self.model_batch_images = Histogram(
            "sdrt_model_batch_images", "Images per engine batch, per model", ["model"], buckets=_COUNTS, registry=r
        )
        self.model_loads = Counter("sdrt_model_loads", "Models loaded", ["model"], registry=r)
        self.model_load_failures = Counter("sdrt_model_load_failures", "Model loads that failed", ["model"], registry=r)
        self.model_load_seconds = Histogram(
            "sdrt_model_load_seconds", "Seconds a model load took", ["model"], buckets=_SECONDS, registry=r
        )
        self.model_evictions = Counter(
            "sdrt_model_evictions", "Models unloaded, by why", ["model", "reason"], registry=r
        )  # evicted (made room), stale (its files changed), retired (Ray Serve's multiplexing let it go)
        self.model_loaded = Gauge("sdrt_model_loaded", "1 while a model is loaded", ["model"], registry=r)
        self.model_bytes = Gauge(
            "sdrt_model_bytes", "Bytes of weights a loaded model is counted for", ["model"], registry=r
        )
        for reason in ("queue_full", "draining", "invalid", "too_large", "not_ready"):
            self.rejections.labels(reason)
        for where in ("queued", "running"):
            self.dropped.labels(where)

    def observe_batch(self, images: int, requests: int, timings: Timings, model: str | None = None) -> None:
        if model is not None:
            self.model_batch_images.labels(model).observe(images)
        self.batch_images.observe(images)
        self.batch_requests.observe(requests)
        for stage in STAGES:
            self.stage_seconds.labels(stage).observe(getattr(timings, stage))

    def render(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)
