"""Cross-request batching: queued requests whose work can share engine calls run as one engine batch.

Requests are grouped by their model (a `Lane`: requests for different models never share a batch) and
`Pipeline.batch_key` (same mode, size, steps, sampler, eta, strength, CLIP skip and prompt chunk count). A
group becomes ready when it holds its model's `max_images` images or its oldest request has waited `max_wait`
seconds; when the engine is free, the ready group whose oldest request is the
oldest of all runs next, with as many of its requests (in arrival order) as fit in `max_images`. So a
request waits at most `max_wait` for company, and a group that cannot share with the busy ones is never
starved: once ready it is served in the order its oldest request arrived.

One batch runs at a time, of whichever model, in a worker thread (engines are not thread-safe, and models on
one device would only slow each other down); the event loop keeps admitting, refusing and answering meanwhile.

A batch runs one pass of its requests. A request whose pass is followed by another (a refiner hand-off, the
hires fix's second passes) gets a `Continuation` back: its later requests join the queue as jobs of their own,
with the age of the request they continue (so they are served before newer work), and batch with any queued
work of their key; when they are done, the continuation makes the request's result.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sdrt.runtime.pipeline import Continuation, GenerationResult, Outcome
from sdrt.runtime.request import GenerationRequest
from sdrt.runtime.vae_guard import NonFiniteOutputError
from sdrt.serve.metrics import Metrics
from sdrt.serve.progress import Progress

log = logging.getLogger(__name__)

RunBatch = Callable[[Sequence[GenerationRequest]], list[Outcome]]


class QueueFull(Exception):
    """The queue holds `max_queue` requests: come back after `retry_after` seconds."""

    def __init__(self, queued: int, retry_after: int) -> None:
        super().__init__(f"the server is at capacity ({queued} requests queued); retry after {retry_after} s")
        self.retry_after = retry_after


class Draining(Exception):
    """The server is shutting down and admits no new work."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("the server is shutting down and accepts no new requests")
        self.retry_after = retry_after


class BatchFailed(Exception):
    """This request failed when it ran (alone: a batch that fails is retried request by request)."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(f"the engine failed on this request: {type(cause).__name__}: {cause}")
        self.cause = cause

    @property
    def status(self) -> int:
        """422 when the request's own outputs were not finite (its input's doing, e.g. a huge guidance scale)."""
        return 422 if isinstance(self.cause, NonFiniteOutputError) else 500


@dataclass(frozen=True, eq=False)
class Lane:
    """One served model as the batcher sees it: its name, how it runs a batch, its most images per batch."""

    name: str  # the model's name (metrics, logs)
    run_batch: RunBatch  # one pass of a batch of its requests (in the engine thread)
    max_images: int  # images per engine batch
    latent_rgb: Sequence[Sequence[float]] | None = None  # its family's latent preview factors (/progress)


@dataclass(frozen=True)
class Completed:
    """A request's result and how it was served."""

    result: GenerationResult  # images, seeds, infotexts and the batch's stage timings
    queue_seconds: float  # from admission until its batch started
    batch_images: int  # images in the engine batch it ran in
    batch_requests: int  # requests in that batch


@dataclass(eq=False)
class Job:
    """One admitted request on its way through the queue."""

    request: GenerationRequest
    key: Hashable  # Pipeline.batch_key(request)
    lane: Lane  # the model it runs on
    future: asyncio.Future
    admitted: float  # monotonic seconds
    state: str = "queued"  # queued, running, continued (its later passes run), done
    abandoned: bool = False  # the client left while it ran: its result is discarded
    caller: str | None = None  # who sent it (the client's address): /interrupt stops the caller's own jobs
    # a later pass of another job: (that job, its continuation, this pass's index in it)
    parent: tuple[Job, Continuation, int] | None = None
    children: list[Job] = field(default_factory=list)  # this job's later passes, while they run
    done_children: dict[int, GenerationResult] = field(default_factory=dict)
    queue_seconds: float = 0.0  # waits in the queue so far, all passes

    @property
    def images(self) -> int:
        return self.request.num_images

    @property
    def group(self) -> tuple[Lane, Hashable]:
        """What it batches by: its model and its batch key."""
        return self.lane, self.key


class Batcher:
    """Admits requests into a bounded queue and runs them in engine batches, one batch at a time."""

    def __init__(
        self,
        run_batch: RunBatch | None,
        max_images: int,
        max_wait: float,
        max_queue: int,
        metrics: Metrics | None = None,
        progress: Progress | None = None,
    ) -> None:
        # the lane of requests submitted without one (a server of one model); None: every submit names its lane
        self.default_lane = None if run_batch is None else Lane("default", run_batch, max_images)
        self.progress = progress  # told which batch runs (its run_batch reports the steps)
        self.max_images = max_images  # images per engine batch, for Retry-After
        self.max_wait = max_wait  # seconds
        self.max_queue = max_queue  # requests
        self.metrics = metrics or Metrics()
        self._groups: dict[tuple[Lane, Hashable], deque[Job]] = {}
        self._queued = 0
        self._queued_images = 0
        self._lane_queued: dict[str, int] = {}  # queued requests per model
        self._running = 0  # requests in the batch the engine runs now
        self._running_lane: str | None = None
        self._accepting = True
        self._batch_seconds: float | None = None  # moving average, for Retry-After
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        """Start the scheduler on the running event loop."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sdrt-engine")
        self._task = asyncio.create_task(self._schedule(), name="sdrt-batcher")

    @property
    def accepting(self) -> bool:
        return self._accepting and self._task is not None and not self._task.done()

    @property
    def queued(self) -> int:
        return self._queued

    @property
    def in_flight(self) -> int:
        """Admitted requests without their result yet: queued or in the running batch."""
        return self._queued + self._running

    def busy(self, model: str) -> bool:
        """Whether work of that model is queued or running."""
        return self._running_lane == model or self._lane_queued.get(model, 0) > 0

    def submit(
        self, request: GenerationRequest, key: Hashable, caller: str | None = None, lane: Lane | None = None
    ) -> Job:
        """Admit a validated request (on the event loop); QueueFull or Draining if it cannot be."""
        lane = lane or self.default_lane
        if lane is None:
            raise ValueError("this batcher serves several models: submit needs the request's lane")
        if not self.accepting:
            self.metrics.rejections.labels("draining").inc()
            raise Draining(self.retry_after())
        if self._queued >= self.max_queue:
            self.metrics.rejections.labels("queue_full").inc()
            raise QueueFull(self._queued, self.retry_after())
        assert self._loop is not None and self._wake is not None  # set by start(), which accepting checks
        job = Job(
            request=request, key=key, lane=lane, future=self._loop.create_future(), admitted=time.monotonic(),
            caller=caller,
        )  # fmt: skip
        self._groups.setdefault(job.group, deque()).append(job)
        self._count(+1, job.images, lane)
        self._wake.set()
        return job

    def cancel(self, job: Job) -> None:
        """The client left: drop a queued job; a running one finishes (its batch needs it) and is discarded."""
        for child in list(job.children):  # its later passes, queued or running
            self.cancel(child)
        if job.state == "continued":
            job.state = "done"
            job.children.clear()
            if not job.future.done():
                job.future.cancel()
            return
        if job.state == "queued":
            group = self._groups[job.group]
            group.remove(job)
            if not group:
                del self._groups[job.group]
            self._count(-1, -job.images, job.lane)
            job.state = "done"
            job.future.cancel()
            self.metrics.dropped.labels("queued").inc()
            if self._wake is not None:
                self._wake.set()
        elif job.state == "running":
            job.abandoned = True

    def close(self) -> None:
        """Stop admitting; queued and running work still completes. Safe to call from a signal handler."""
        self._accepting = False
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def drain(self) -> None:
        """Stop admitting, finish every admitted request, then stop the worker thread."""
        self.close()
        if self._task is not None:
            await self._task
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    def retry_after(self) -> int:
        """Whole seconds until the queue has likely moved on by one batch beyond what waits now."""
        per_batch = self._batch_seconds if self._batch_seconds is not None else 1.0
        return max(1, math.ceil(per_batch * (1 + self._queued_images / self.max_images)))

    async def _schedule(self) -> None:
        assert self._wake is not None
        while True:
            batch, wait = self._take(time.monotonic())
            if batch:
                await self._run(batch)
                continue
            if not self._accepting and not self._groups:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except asyncio.TimeoutError:
                pass

    def _take(self, now: float) -> tuple[list[Job], float | None]:
        """The next batch to run, or none and how long until a group becomes ready."""
        ready, wait = [], None
        for group in self._groups.values():
            head = group[0]
            due = head.admitted + self.max_wait
            full = sum(j.images for j in group) >= head.lane.max_images
            if full or now >= due or not self._accepting:  # draining: nothing more will come to wait for
                ready.append(group)
            else:
                wait = due - now if wait is None else min(wait, due - now)
        if not ready:
            return [], wait
        group = min(ready, key=lambda g: g[0].admitted)
        limit = group[0].lane.max_images
        batch, images = [], 0
        while group and (not batch or images + group[0].images <= limit):
            job = group.popleft()
            batch.append(job)
            images += job.images
        if not group:
            del self._groups[batch[0].group]
        return batch, None

    async def _run(self, batch: list[Job]) -> None:
        assert self._loop is not None
        start = time.monotonic()
        images = sum(j.images for j in batch)
        lane = batch[0].lane
        for job in batch:
            job.state = "running"
            self.metrics.queue_seconds.observe(start - job.admitted)
        self._count(-len(batch), -images, lane)
        self.metrics.running_images.set(images)
        self._running = len(batch)
        self._running_lane = lane.name
        try:
            try:
                results = await self._engine(batch)
            except Exception as exc:  # an engine error fails this batch, never the server
                log.exception("engine batch of %d requests (%d images) failed", len(batch), images)
                self.metrics.batch_errors.inc()
                if len(batch) == 1:
                    self._fail(batch[0], exc)
                    return
                # one request may have poisoned the batch (outputs not finite, say): each runs alone, so only
                # the bad one fails and its batch-mates get the images they would get alone
                for job in batch:
                    if job.abandoned:  # its client left: nobody waits for a retry
                        job.state = "done"
                        self.metrics.dropped.labels("running").inc()
                        continue
                    await self._run_alone(job, start)
                return
            # a pass's timings, either way
            self.metrics.observe_batch(images, len(batch), results[0].timings, lane.name)
            for job, result in zip(batch, results, strict=True):
                self._finish(job, result, start, images, len(batch))
        finally:
            self._running = 0
            self._running_lane = None
            self.metrics.running_images.set(0)

    async def _run_alone(self, job: Job, start: float) -> None:
        try:
            (result,) = await self._engine([job])
        except Exception as exc:
            log.warning("request of %d images failed alone too: %s: %s", job.images, type(exc).__name__, exc)
            self._fail(job, exc)
            return
        self.metrics.observe_batch(job.images, 1, result.timings, job.lane.name)
        self._finish(job, result, start, job.images, 1)

    async def _engine(self, jobs: list[Job]) -> list[GenerationResult]:
        assert self._loop is not None
        start = time.monotonic()
        requests = [j.request for j in jobs]
        lane = jobs[0].lane
        if self.progress is not None:
            self.progress.begin([j.caller for j in jobs], _steps(requests[0]), lane.latent_rgb)
        try:
            results = await self._loop.run_in_executor(self._executor, lane.run_batch, requests)
        finally:
            if self.progress is not None:
                self.progress.end()
        seconds = time.monotonic() - start
        self._batch_seconds = seconds if self._batch_seconds is None else 0.8 * self._batch_seconds + 0.2 * seconds
        return results

    def _finish(self, job: Job, outcome: Outcome, start: float, images: int, requests: int) -> None:
        job.queue_seconds += start - job.admitted
        if isinstance(outcome, Continuation):
            self._continue(job, outcome)
            return
        job.state = "done"
        if job.parent is not None:
            self._child_done(job, outcome, images, requests)
        elif job.abandoned:
            self.metrics.dropped.labels("running").inc()
        elif not job.future.done():
            job.future.set_result(Completed(outcome, job.queue_seconds, images, requests))

    def _continue(self, job: Job, continuation: Continuation) -> None:
        """Queue a job's later pass: each of its requests a job of its own, as old as the job it continues."""
        assert self._loop is not None and self._wake is not None  # set by start()
        job.state = "continued"
        for i, request in enumerate(continuation.requests):
            child = Job(
                request=request, key=request.plan.key, lane=job.lane, future=self._loop.create_future(),
                admitted=job.admitted, caller=job.caller, parent=(job, continuation, i),
            )  # fmt: skip
            job.children.append(child)
            self._groups.setdefault(child.group, deque()).append(child)
            self._count(+1, child.images, child.lane)
        self._wake.set()

    def _child_done(self, child: Job, result: GenerationResult, images: int, requests: int) -> None:
        parent, continuation, index = child.parent  # type: ignore[misc]  # _finish checks
        if parent.state != "continued":  # the request was cancelled (its client left) while this pass ran
            return
        parent.done_children[index] = result
        parent.queue_seconds += child.queue_seconds
        if len(parent.done_children) < len(continuation.requests):
            return
        try:
            final = continuation.finish([parent.done_children[i] for i in range(len(continuation.requests))])
        except Exception as exc:
            log.exception("finishing a request's passes failed")
            self._fail(parent, exc)
            return
        parent.children.clear()
        self._finish(parent, final, parent.admitted, images, requests)

    def _fail(self, job: Job, exc: Exception) -> None:
        job.state = "done"
        if job.parent is not None:  # a later pass failed: its request fails, and its other passes are dropped
            parent = job.parent[0]
            for sibling in parent.children:
                if sibling is not job:
                    self.cancel(sibling)
            parent.children.clear()
            self._fail(parent, exc)
            return
        if not job.future.done():
            job.future.set_exception(BatchFailed(exc))

    def _count(self, jobs: int, images: int, lane: Lane) -> None:
        self._queued += jobs
        self._queued_images += images
        self._lane_queued[lane.name] = self._lane_queued.get(lane.name, 0) + jobs
        self.metrics.model_queue_depth.labels(lane.name).set(self._lane_queued[lane.name])
        if not self._lane_queued[lane.name]:
            del self._lane_queued[lane.name]
        self.metrics.queue_depth.set(self._queued)
        self.metrics.queue_images.set(self._queued_images)


def _steps(request: GenerationRequest) -> int:
    """Steps a batch like `request` runs in its pass."""
    return request.steps_run
