"""The loaded-model pool on its own: LRU by count and by memory, loads shared, models in use kept, failures kept."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from sdrt.serve.catalog import CatalogEntry
from sdrt.serve.metrics import Metrics
from sdrt.serve.model_pool import ModelPool, ModelTooLarge, ModelUnavailable, is_out_of_memory
from tests.serve.conftest import metric


def _entry(name: str, size: int = 10, error: str | None = None) -> CatalogEntry:
    return CatalogEntry(name, Path(name), sha256=f"{name:0<64}", family="sd1", weight_bytes=size, error=error)


class Loader:
    """Loads a model as its name, counting loads; `gate` holds loads until set, `fail` makes them raise."""

    def __init__(self) -> None:
        self.loads: list[str] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail: dict[str, Exception] = {}

    def __call__(self, entry: CatalogEntry) -> str:
        self.gate.wait(10)
        self.loads.append(entry.name)
        failure = self.fail.pop(entry.name, None)
        if failure is not None:
            raise failure
        return f"pipeline of {entry.name}"


def _pool(loader: Loader, max_models: int = 2, max_bytes: int | None = None, busy=lambda name: False) -> ModelPool:
    return ModelPool(loader, max_models=max_models, max_bytes=max_bytes, busy=busy, metrics=Metrics())


def test_least_recently_used_leaves_first_and_loads_are_counted():
    async def scenario() -> None:
        loader = Loader()
        pool = _pool(loader, max_models=2)
        a, b, c = _entry("a"), _entry("b"), _entry("c")
        for entry in (a, b, a, c):  # a was used after b: b is the least recently used when c comes
            assert await pool.acquire(entry) == f"pipeline of {entry.name}"
            pool.release(entry.name)
        assert pool.loaded() == ["a", "c"] and loader.loads == ["a", "b", "c"]
        text = pool.metrics.render().decode()
        assert metric(text, "sdrt_model_evictions_total", model="b", reason="evicted") == 1
        assert metric(text, "sdrt_model_loads_total", model="a") == 1
        assert metric(text, "sdrt_model_loaded", model="b") == 0 and metric(text, "sdrt_model_loaded", model="c") == 1

    asyncio.run(scenario())


def test_memory_bound_evicts_as_many_as_needed_and_refuses_what_can_never_fit():
    async def scenario() -> None:
        loader = Loader()
        pool = _pool(loader, max_models=5, max_bytes=100)
        for entry in (_entry("a", 40), _entry("b", 40), _entry("small", 10)):
            await pool.acquire(entry)
            pool.release(entry.name)
        assert pool.used_bytes() == 90
        await pool.acquire(_entry("big", 80))  # a and b must both go: 10 + 80 fits, 50 + 80 does not
        assert pool.loaded() == ["small", "big"] and pool.used_bytes() == 90
        with pytest.raises(ModelTooLarge, match="over this server's model memory budget of"):
            await pool.acquire(_entry("huge", 101))

    asyncio.run(scenario())


def test_a_model_in_use_is_never_unloaded_under_its_request():
    async def scenario() -> None:
        loader = Loader()
        queued = {"a"}  # the batcher still holds work of these
        pool = _pool(loader, max_models=1, busy=lambda name: name in queued)
        held = await pool.acquire(_entry("a"))
        assert held == "pipeline of a"
        waiting = asyncio.create_task(pool.acquire(_entry("b")))
        await asyncio.sleep(0.3)
        assert not waiting.done() and pool.loaded() == ["a"]  # a is held: b waits for room
        # a request for a arriving now waits too (a is leaving): a model in constant use cannot starve b
        late = asyncio.create_task(pool.acquire(_entry("a")))
        pool.release("a")
        await asyncio.sleep(0.3)
        assert not waiting.done()  # released, but its work is still in the batcher
        queued.clear()
        assert await asyncio.wait_for(waiting, 5) == "pipeline of b"
        assert not late.done()
        pool.release("b")
        assert await asyncio.wait_for(late, 5) == "pipeline of a"
        assert loader.loads == ["a", "b", "a"]

    asyncio.run(scenario())


def test_concurrent_requests_share_one_load():
    async def scenario() -> None:
        loader = Loader()
        loader.gate.clear()
        pool = _pool(loader)
        waiters = [asyncio.create_task(pool.acquire(_entry("a"))) for _ in range(5)]
        await asyncio.sleep(0.2)
        loader.gate.set()
        assert await asyncio.gather(*waiters) == ["pipeline of a"] * 5
        assert loader.loads == ["a"]

    asyncio.run(scenario())


def test_a_failed_load_fails_its_requests_until_forgotten_and_the_others_serve():
    async def scenario() -> None:
        loader = Loader()
        loader.fail["bad"] = RuntimeError("unet/model.onnx is truncated")
        pool = _pool(loader)
        bad = _entry("bad")
        for _ in range(2):  # the failure is remembered: no second load
            with pytest.raises(ModelUnavailable, match="unet/model.onnx is truncated"):
                await pool.acquire(bad)
        assert loader.loads == ["bad"]
        assert await pool.acquire(_entry("good")) == "pipeline of good"
        pool.forget_failures()  # refresh-checkpoints: its files may have been fixed
        assert await pool.acquire(bad) == "pipeline of bad"
        unreadable = _entry("unreadable", error="ValueError: manifest is malformed")
        with pytest.raises(ModelUnavailable, match="manifest is malformed"):
            await pool.acquire(unreadable)
        text = pool.metrics.render().decode()
        assert metric(text, "sdrt_model_load_failures_total", model="bad") == 1

    asyncio.run(scenario())


def test_a_load_out_of_memory_unloads_an_idle_model_and_tries_again():
    async def scenario() -> None:
        loader = Loader()
        pool = _pool(loader, max_models=3)
        await pool.acquire(_entry("a"))
        pool.release("a")
        loader.fail["b"] = RuntimeError("CUDA error: out of memory")
        assert await pool.acquire(_entry("b")) == "pipeline of b"
        assert pool.loaded() == ["b"] and loader.loads == ["a", "b", "b"]
        loader.fail["c"] = MemoryError()
        with pytest.raises(ModelUnavailable, match="MemoryError"):  # b is held: nothing idle to unload
            await pool.acquire(_entry("c"))

    asyncio.run(scenario())


def test_a_model_let_go_by_ray_stays_if_asked_for_again_and_a_changed_one_reloads():
    async def scenario() -> None:
        loader = Loader()
        pool = _pool(loader)
        await pool.acquire(_entry("a"))
        pool.retire("a")  # held: it stays until released
        assert pool.loaded() == ["a"]
        await pool.acquire(_entry("a"))  # asked for again before it went: kept, not reloaded
        pool.release("a")
        pool.release("a")
        assert pool.loaded() == ["a"] and loader.loads == ["a"]
        pool.retire("a")
        assert pool.loaded() == []
        await pool.acquire(_entry("b"))
        pool.release("b")
        newer = CatalogEntry("b", Path("b"), sha256="f" * 64, family="sd1", weight_bytes=10)
        await pool.acquire(newer)  # the artifact changed on disk: the old version leaves, the new one loads
        assert loader.loads == ["a", "b", "b"]

    asyncio.run(scenario())


def test_out_of_memory_is_recognised_from_every_library():
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory"))
    assert not is_out_of_memory(ValueError("artifact format version 1 is not supported"))
