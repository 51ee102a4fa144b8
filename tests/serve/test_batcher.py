"""The batcher's policy on a recording engine: grouping, waiting for company, fairness, drops, bounds, errors, drain."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from sdrt.runtime.pipeline import GenerationResult
from sdrt.runtime.request import GenerationRequest
from sdrt.runtime.timing import Timings
from sdrt.serve.batcher import Batcher, BatchFailed, Draining, QueueFull


def _request(seed: int, images: int = 1) -> GenerationRequest:
    return GenerationRequest(
        prompts=(f"p{seed}",),
        negative_prompts=("",),
        height=64,
        width=64,
        steps=2,
        guidance_scales=(7.5,),
        seed=seed,
        num_images_per_prompt=images,
    )


class Engine:
    """Records each batch as the seeds of its requests; can be held, slowed down, or made to fail."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.seconds = seconds
        self.gate = threading.Event()
        self.gate.set()
        self.fail = False

    def __call__(self, requests):
        self.gate.wait(10)
        time.sleep(self.seconds)
        if self.fail:
            raise RuntimeError("the engine broke")
        self.batches.append([r.seed for r in requests])
        timings = Timings(text_encoder=0, unet=0, scheduler=0, vae_decode=0, total=self.seconds, steps=2)
        return [GenerationResult([], r.seeds, [], timings, r) for r in requests]


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_requests_group_by_key_up_to_max_images_and_wait_for_company():
    engine = Engine()

    async def main():
        batcher = Batcher(engine, max_images=4, max_wait=0.1, max_queue=16)
        await batcher.start()
        jobs = [batcher.submit(_request(seed), key) for seed, key in ((1, "a"), (2, "b"), (3, "a"), (4, "a"))]
        jobs.append(batcher.submit(_request(5, images=2), "a"))  # does not fit beside 1, 3 and 4
        jobs.append(batcher.submit(_request(6), "b"))
        results = await asyncio.gather(*(j.future for j in jobs))
        await batcher.drain()
        return results

    results = _run(main())
    # "a" (oldest head) first with what fits in 4 images, then "b", then the rest of "a"
    assert engine.batches == [[1, 3, 4], [2, 6], [5]]
    assert [r.batch_requests for r in results] == [3, 2, 3, 3, 1, 2]
    assert [r.result.seeds for r in results][4] == [5, 6]


def test_a_full_group_runs_at_once_and_a_lone_request_waits_at_most_max_wait():
    engine = Engine()

    async def main():
        batcher = Batcher(engine, max_images=2, max_wait=5.0, max_queue=16)
        await batcher.start()
        start = time.monotonic()
        await asyncio.gather(batcher.submit(_request(1), "a").future, batcher.submit(_request(2), "a").future)
        full = time.monotonic() - start
        batcher.max_wait = 0.2
        start = time.monotonic()
        await batcher.submit(_request(3), "a").future
        lone = time.monotonic() - start
        await batcher.drain()
        return full, lone

    full, lone = _run(main())
    assert full < 1.0  # did not wait 5 s for company it did not need
    assert 0.19 <= lone < 2.0
    assert engine.batches == [[1, 2], [3]]


def test_a_group_that_cannot_share_is_not_starved_by_a_busy_one():
    engine = Engine(seconds=0.02)

    async def main():
        batcher = Batcher(engine, max_images=2, max_wait=0.05, max_queue=64)
        await batcher.start()
        jobs = [batcher.submit(_request(100 + i), "busy") for i in range(4)]
        lonely = batcher.submit(_request(1), "other")
        for i in range(20):  # the busy group is refilled faster than it drains
            jobs.append(batcher.submit(_request(200 + i), "busy"))
            await asyncio.sleep(0.005)
        await asyncio.gather(lonely.future, *(j.future for j in jobs))
        await batcher.drain()

    _run(main())
    order = [seed for batch in engine.batches for seed in batch]
    assert order.index(1) < order.index(210)  # served long before requests admitted after it


def test_a_client_that_leaves_is_dropped_from_the_queue_or_its_result_discarded():
    engine = Engine()
    engine.gate.clear()

    async def main():
        batcher = Batcher(engine, max_images=1, max_wait=0.0, max_queue=16)
        await batcher.start()
        running = batcher.submit(_request(1), "a")
        queued = batcher.submit(_request(2), "a")
        await asyncio.sleep(0.1)  # 1 is in the engine, 2 waits
        batcher.cancel(queued)
        batcher.cancel(running)
        engine.gate.set()
        await batcher.drain()
        return batcher, running, queued

    batcher, running, queued = _run(main())
    assert engine.batches == [[1]]  # 2 never ran
    assert queued.future.cancelled()
    assert not running.future.done()  # finished in the engine, result discarded
    registry = batcher.metrics.registry
    assert registry.get_sample_value("sdrt_dropped_total", {"where": "queued"}) == 1
    assert registry.get_sample_value("sdrt_dropped_total", {"where": "running"}) == 1


def test_a_full_queue_refuses_with_retry_after_and_an_engine_error_fails_only_its_batch():
    engine = Engine()
    engine.gate.clear()

    async def main():
        batcher = Batcher(engine, max_images=1, max_wait=0.0, max_queue=2)
        await batcher.start()
        first = batcher.submit(_request(1), "a")
        await asyncio.sleep(0.1)  # running: the queue is empty again
        waiting = [batcher.submit(_request(2), "a"), batcher.submit(_request(3), "a")]
        with pytest.raises(QueueFull) as refused:
            batcher.submit(_request(4), "a")
        assert refused.value.retry_after >= 1
        engine.fail = True
        engine.gate.set()
        with pytest.raises(BatchFailed, match="the engine failed on this request: RuntimeError: the engine broke"):
            await first.future
        engine.fail = False
        await asyncio.gather(*(j.future for j in waiting))
        registry = batcher.metrics.registry
        assert registry.get_sample_value("sdrt_batch_errors_total") == 1
        assert registry.get_sample_value("sdrt_rejections_total", {"reason": "queue_full"}) == 1
        await batcher.drain()

    _run(main())
    assert engine.batches == [[2], [3]]


def test_drain_finishes_admitted_work_without_waiting_for_company_then_refuses():
    engine = Engine()

    async def main():
        batcher = Batcher(engine, max_images=8, max_wait=30.0, max_queue=16)
        await batcher.start()
        jobs = [batcher.submit(_request(i), "a") for i in range(3)]
        start = time.monotonic()
        await batcher.drain()
        assert time.monotonic() - start < 5.0
        assert all(j.future.done() and not j.future.cancelled() for j in jobs)
        with pytest.raises(Draining):
            batcher.submit(_request(9), "a")

    _run(main())
    assert engine.batches == [[0, 1, 2]]


def test_a_poisoned_request_fails_alone_and_its_batch_mates_are_served():
    class Poisoned(Engine):
        def __call__(self, requests):
            if any(r.seed == 666 for r in requests):
                from sdrt.runtime.vae_guard import NonFiniteOutputError

                raise NonFiniteOutputError("NaN from request 666")
            return super().__call__(requests)

    engine = Poisoned()

    async def main():
        batcher = Batcher(engine, max_images=4, max_wait=0.2, max_queue=8)
        await batcher.start()
        jobs = [batcher.submit(_request(seed), "a") for seed in (1, 666, 2, 3)]
        await asyncio.wait([j.future for j in jobs])
        assert [j.future.exception() is None for j in jobs] == [True, False, True, True]
        failed = jobs[1].future.exception()
        assert isinstance(failed, BatchFailed) and failed.status == 422 and "NaN from request 666" in str(failed)
        assert [j.future.result().batch_requests for j in (jobs[0], jobs[2], jobs[3])] == [1, 1, 1]
        assert batcher.metrics.registry.get_sample_value("sdrt_batch_errors_total") == 1
        await batcher.drain()

    _run(main())
    assert engine.batches == [[1], [2], [3]]  # the batch of four failed; each ran alone, the poisoned one failed


def test_a_later_pass_is_queued_and_batches_with_other_queued_work():
    """A pass that returns a Continuation (a refiner hand-off, a hires fix) has its later requests queued as jobs of
    their own, as old as the request they continue: they batch with queued work of their key, and the request's
    result is what the continuation makes of theirs."""
    from dataclasses import replace
    from types import SimpleNamespace

    from sdrt.runtime.pipeline import Continuation

    batches: list[list[str]] = []
    timings = Timings(text_encoder=0, unet=0, scheduler=0, vae_decode=0, total=0, steps=2)

    def run_pass(requests):
        batches.append([r.prompts[0] for r in requests])
        out = []
        for r in requests:
            if r.prompts[0].startswith("first"):
                later = replace(r, prompts=(f"second of {r.prompts[0]}",), plan=SimpleNamespace(key="second"))

                def finish(done, r=r):
                    return GenerationResult([], r.seeds, [f"made from {done[0].request.prompts[0]}"], timings, r)

                out.append(Continuation([later], finish, timings))
            else:
                out.append(GenerationResult([], r.seeds, [r.prompts[0]], timings, r))
        return out

    async def main():
        batcher = Batcher(run_pass, max_images=4, max_wait=0.2, max_queue=16)
        await batcher.start()
        first = batcher.submit(replace(_request(1), prompts=("first",)), "first")
        other = batcher.submit(replace(_request(2), prompts=("other second pass",)), "second")
        results = await asyncio.gather(first.future, other.future)
        await batcher.drain()
        return results

    first, other = _run(main())
    assert batches == [["first"], ["other second pass", "second of first"]]  # the later pass joined the queued one
    assert first.result.parameters == ["made from second of first"] and other.result.parameters == ["other second pass"]
