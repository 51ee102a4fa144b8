"""Loaded models, least recently used first out: bounded in count and in memory, loads shared, models in use kept.

A request acquires its model (loading it if needed) and holds it until its answer is made; a model held by a
request, or with work in the batcher, is never unloaded under it. When a model does not fit (too many loaded,
or their weights plus its own over the memory budget), the least recently used models are chosen to leave:
idle ones are unloaded at once, busy ones once their work is done, and the new model loads then. Requests for
a model that is leaving wait for it to go and load it again, so a model in constant use cannot starve the
others. Concurrent requests for a model that is loading share the one load. A model that fails to load fails
its requests with the reason until the catalog is scanned again; a load that runs out of memory unloads
another idle model and tries again while there is one.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from starlette.concurrency import run_in_threadpool

from sdrt.serve.catalog import CatalogEntry
from sdrt.serve.metrics import Metrics

log = logging.getLogger(__name__)

T = TypeVar("T")

WAIT_POLL_S = 0.25  # how often a request waiting for room looks again (work may end without telling the pool)
GIB = 1024**3


class ModelUnavailable(Exception):
    """The model cannot be loaded (its files are unreadable, or loading failed); the others still serve."""

    status = 500

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(
            f"model {name!r} cannot be served: {reason}; fix its files and POST /sdapi/v1/refresh-checkpoints"
        )
        self.name = name


class ModelTooLarge(Exception):
    """The model alone needs more memory than the whole budget: no eviction can make room for it."""

    status = 507

    def __init__(self, name: str, needed: int, budget: int) -> None:
        super().__init__(
            f"model {name!r} needs about {needed / GIB:.2f} GiB for its weights, over this server's model memory "
            f"budget of {budget / GIB:.2f} GiB (--max-model-memory)"
        )


@dataclass(eq=False)
class _Slot(Generic[T]):
    entry: CatalogEntry
    cost: int  # bytes it is counted for
    value: T | None = None  # None while loading
    task: asyncio.Task | None = None  # the load, while it runs
    users: int = 0  # requests holding it
    last_used: float = 0.0  # monotonic seconds
    # None while it serves; "evicted" (chosen to make room: its new requests wait for it to go), "stale" (its
    # files changed: the same), "retired" (let go by Ray Serve's own LRU: a request for it keeps it after all)
    leaving: str | None = None


class ModelPool(Generic[T]):
    """The loaded models of one server (or Ray Serve replica), by catalog name."""

    def __init__(
        self,
        load: Callable[[CatalogEntry], T],
        max_models: int,
        max_bytes: int | None = None,
        busy: Callable[[str], bool] = lambda name: False,
        cost: Callable[[CatalogEntry], int] = lambda entry: entry.weight_bytes,
        metrics: Metrics | None = None,
    ) -> None:
        if max_models < 1:
            raise ValueError(f"max_models {max_models} must be at least 1")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError(f"max_bytes {max_bytes} must be at least 1")
        self._load_blocking = load  # runs in a worker thread
        self.max_models = max_models
        self.max_bytes = max_bytes
        self._busy = busy  # True while the batcher holds work of that model
        self._cost = cost
        self.metrics = metrics or Metrics()
        self._slots: dict[str, _Slot[T]] = {}  # least recently used first
        self._failed: dict[str, tuple[CatalogEntry, str]] = {}
        self._line: list[object] = []  # calls waiting for room to load a model, first come first served
        self._changed: asyncio.Future | None = None

    # --- what the server asks

    def loaded(self) -> list[str]:
        """Names of the loaded models, least recently used first."""
        return [name for name, slot in self._slots.items() if slot.value is not None]

    def get(self, name: str) -> T | None:
        """The loaded model of that name (without holding it), or None."""
        slot = self._slots.get(name)
        return None if slot is None else slot.value

    def used_bytes(self) -> int:
        return sum(slot.cost for slot in self._slots.values())

    async def acquire(self, entry: CatalogEntry) -> T:
        """The loaded model for `entry`, held until `release`; loads it (making room first) if needed.

        Requests that need room are served in the order they asked: one that arrives later cannot take the room
        an earlier one waits for."""
        turn = None  # this call's place in the line for room, while it waits for one
        try:
            while True:
                slot = self._slots.get(entry.name)
                if slot is not None and slot.entry == entry and slot.leaving == "retired" and slot.value is not None:
                    slot.leaving = None  # let go by Ray's LRU, asked for again here before it went: keep it
                if slot is not None and slot.entry == entry and slot.leaving is None:
                    if slot.value is None:
                        assert slot.task is not None  # a slot without a value is loading
                        await asyncio.shield(slot.task)  # its failure is every waiter's
                        continue
                    slot.users += 1
                    slot.last_used = time.monotonic()
                    self._slots[entry.name] = self._slots.pop(entry.name)  # most recently used last
                    return slot.value
                if slot is not None:  # leaving, or an older version of it: wait for it to go, then load again
                    if slot.entry != entry and slot.leaving is None:
                        slot.leaving = "stale"
                    self._unload_idle()
                    if entry.name in self._slots:
                        await self._wait()
                    continue
                failure = self._failed.get(entry.name)
                if failure is not None and failure[0] == entry:
                    raise ModelUnavailable(entry.name, failure[1])
                if entry.error is not None:
                    raise ModelUnavailable(entry.name, entry.error)
                cost = self._cost(entry)
                if self.max_bytes is not None and cost > self.max_bytes:
                    raise ModelTooLarge(entry.name, cost, self.max_bytes)
                if turn is None:
                    turn = object()
                    self._line.append(turn)
                if self._line[0] is not turn or not self._make_room(entry.name, cost):
                    await self._wait()
                    continue
                self._line.remove(turn)
                turn = None
                slot = _Slot(entry, cost)
                slot.task = asyncio.create_task(self._load(slot), name=f"sdrt-load-{entry.name}")
                self._slots[entry.name] = slot
                self._notify()
        finally:
            if turn is not None:  # it gave up (its client left) or failed: the next in line goes
                self._line.remove(turn)
                self._notify()

    def release(self, name: str) -> None:
        """A request is done with its model."""
        slot = self._slots.get(name)
        if slot is not None and slot.users > 0:
            slot.users -= 1
            slot.last_used = time.monotonic()
        self._unload_idle()
        self._notify()

    def retire(self, name: str) -> None:
        """Unload `name` once nothing uses it (Ray Serve's multiplexing let it go), unless asked for again first."""
        slot = self._slots.get(name)
        if slot is not None and slot.leaving is None:
            slot.leaving = "retired"
        self._unload_idle()
        self._notify()

    def forget_failures(self) -> None:
        """Models that failed to load may be tried again (their files may have been fixed)."""
        self._failed.clear()

    def changed(self, name: str) -> None:
        """The catalog's entry for `name` changed or went away: the loaded version leaves once idle."""
        slot = self._slots.get(name)
        if slot is not None and slot.leaving is None:
            slot.leaving = "stale"
        self._unload_idle()
        self._notify()

    def unload_all(self) -> None:
        """Drop every loaded model (shutdown)."""
        for slot in self._slots.values():
            if slot.task is not None:
                slot.task.cancel()
        self._slots.clear()
        gc.collect()

    # --- room, loading and unloading

    def _make_room(self, name: str, cost: int) -> bool:
        """Choose models to leave until `name` would fit once they are gone; True when it fits now."""
        staying = [s for s in self._slots.values() if s.leaving is None]
        while not self._fits(name, cost, staying):
            # the least recently used loaded one; never one still loading (it has waiters of its own)
            victim = next((s for s in staying if s.value is not None), None)
            if victim is None:
                break
            victim.leaving = "evicted"
            staying.remove(victim)
            log.info("model %s leaves to make room for %s", victim.entry.name, name)
        self._unload_idle()
        return self._fits(name, cost, list(self._slots.values()))

    def _fits(self, name: str, cost: int, slots: list[_Slot[T]]) -> bool:
        count = len(slots) + 1
        used = sum(s.cost for s in slots) + cost
        return count <= self.max_models and (self.max_bytes is None or used <= self.max_bytes)

    def _unload_idle(self) -> None:
        unloaded = False
        for name, slot in list(self._slots.items()):
            if slot.leaving is None or slot.value is None or slot.users > 0 or self._busy(name):
                continue
            del self._slots[name]
            slot.value = None
            self.metrics.model_evictions.labels(name, slot.leaving).inc()
            self.metrics.model_loaded.labels(name).set(0)
            self.metrics.model_bytes.labels(name).set(0)
            log.info("unloaded model %s (%s)", name, slot.leaving)
            unloaded = True
        if unloaded:  # engines hold native memory that reference cycles may keep
            gc.collect()

    async def _load(self, slot: _Slot[T]) -> None:
        name = slot.entry.name
        start = time.monotonic()
        try:
            while True:
                try:
                    value = await run_in_threadpool(self._load_blocking, slot.entry)
                    break
                except Exception as exc:
                    if not is_out_of_memory(exc) or not self._evict_one_idle(name):
                        raise
                    log.warning("loading model %s ran out of memory; unloaded an idle model, trying again", name)
        except Exception as exc:
            reason = f"loading failed: {type(exc).__name__}: {exc}"
            log.exception("loading model %s failed", name)
            self._failed[name] = (slot.entry, reason)
            if self._slots.get(name) is slot:
                del self._slots[name]
            self.metrics.model_load_failures.labels(name).inc()
            self._notify()
            raise ModelUnavailable(name, reason) from exc
        finally:
            slot.task = None
        slot.value = value
        slot.last_used = time.monotonic()
        seconds = time.monotonic() - start
        self.metrics.model_loads.labels(name).inc()
        self.metrics.model_load_seconds.labels(name).observe(seconds)
        self.metrics.model_loaded.labels(name).set(1)
        self.metrics.model_bytes.labels(name).set(slot.cost)
        log.info("loaded model %s in %.1f s (%d loaded)", name, seconds, len(self.loaded()))
        self._notify()

    def _evict_one_idle(self, loading: str) -> bool:
        for name, slot in self._slots.items():
            if name != loading and slot.value is not None and slot.users == 0 and not self._busy(name):
                slot.leaving = "evicted"
                self._unload_idle()
                return True
        return False

    # --- waiting for something to change

    async def _wait(self) -> None:
        if self._changed is None or self._changed.done():
            self._changed = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._changed), WAIT_POLL_S)
        except asyncio.TimeoutError:
            pass

    def _notify(self) -> None:
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether a load failed for want of memory (host or device), whichever library said so."""
    if isinstance(exc, MemoryError):
        return True
    text = f"{type(exc).__name__}: {exc}".lower()
    return any(s in text for s in ("outofmemory", "out of memory", "failed to allocate", "cudaerrormemoryallocation"))


def memory_budget(device: str, share: float = 0.8) -> int | None:
    """The default model memory budget: `share` of the device's memory (a GPU's total, the host's available)."""
    if device.startswith("cuda"):
        try:
            import torch

            index = int(device.split(":", 1)[1]) if ":" in device else 0
            return int(share * torch.cuda.get_device_properties(index).total_memory)
        except Exception:  # no CUDA here (the backend will say so when it loads)
            return None
    try:
        import psutil

        return int(share * psutil.virtual_memory().available)
    except Exception:
        return None
