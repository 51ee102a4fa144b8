"""CUDA graph state every backend shares: one memory pool and one side stream per device, bounded graph caches.

- **One pool per device** (as stable-fast shares one): every graph sdrt captures on a device allocates
  its internal memory from the same `torch.cuda.graph_pool_handle()`. Graphs may then reuse each
  other's temporaries, which is safe here because sdrt replays one graph at a time on one stream and
  copies each graph's outputs out before the next replay (engines on one device must not be called
  from two threads at once).
- **A bounded cache per engine** (`GraphCache`): at most `capacity` graphs, keyed by input shapes; the
  least recently used one is dropped (with its context and static buffers) when a new shape needs room.
- **Capture errors come out whole** (`capture`): an exception raised inside `torch.cuda.graph` would be
  replaced by CUDA's error when the capture ends; it is held until the capture has ended, then raised
  as a `GraphCaptureError` from the original, and callers fall back to running that shape eagerly.
- **A non-default stream** (`side_stream`): TensorRT warns that enqueueing on the legacy default
  stream costs extra synchronization; engines enqueue on the device's side stream, ordered against
  torch's current stream with `wait_stream` both ways.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

import torch

log = logging.getLogger(__name__)

DEFAULT_MAX_GRAPHS = 8  # per engine: a server's few batch sizes and image sizes
T = TypeVar("T")

_pools: dict[torch.device, Any] = {}
_streams: dict[torch.device, torch.cuda.Stream] = {}


def graph_pool(device: torch.device) -> Any:
    """The memory pool every sdrt graph on `device` is captured into."""
    if device not in _pools:
        with torch.cuda.device(device):
            _pools[device] = torch.cuda.graph_pool_handle()
    return _pools[device]


def side_stream(device: torch.device) -> torch.cuda.Stream:
    """The non-default stream engines on `device` enqueue on."""
    if device not in _streams:
        _streams[device] = torch.cuda.Stream(device)
    return _streams[device]


class GraphCaptureError(RuntimeError):
    """Capturing an engine call into a CUDA graph failed; the cause is the error raised during the capture."""


def capture(fn: Callable[[], T], device: torch.device, stream: torch.cuda.Stream | None = None) -> tuple[Any, T]:
    """Capture `fn`'s GPU work into a graph from the device's pool; (graph, fn's result).

    `fn` returning False counts as a failure (TensorRT's enqueue reports errors so). Raises
    GraphCaptureError after the capture has ended, from the first error raised during it.
    """
    graph = torch.cuda.CUDAGraph()
    inner: BaseException | None = None
    result: Any = None
    try:
        with torch.cuda.graph(graph, pool=graph_pool(device), stream=stream, capture_error_mode="thread_local"):
            try:
                result = fn()
            except Exception as exc:  # held: raising here lets CUDA's end-of-capture error replace it
                inner = exc
    except RuntimeError as exc:  # the capture itself failed as it ended
        raise GraphCaptureError(f"CUDA graph capture failed: {inner or exc}") from (inner or exc)
    if inner is not None:
        raise GraphCaptureError(f"CUDA graph capture failed: {inner}") from inner
    if result is False:
        raise GraphCaptureError("CUDA graph capture failed: the engine reported an error while being captured")
    return graph, result


class GraphCache(Generic[T]):
    """Captured graphs of one engine by input-shape key: at most `capacity`, least recently used dropped first.

    Shapes whose capture failed are remembered, so they run eagerly without another attempt.
    """

    def __init__(self, capacity: int, owner: str) -> None:
        if capacity < 1:
            raise ValueError(f"max_cuda_graphs {capacity} must be at least 1")
        self.capacity = capacity
        self.owner = owner
        self._entries: OrderedDict[Hashable, T] = OrderedDict()
        self.failed: set[Hashable] = set()
        self.evictions = 0

    def get(self, key: Hashable) -> T | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: Hashable, entry: T) -> None:
        # called right after a capture, and torch.cuda.graph synchronizes the device before capturing: a graph
        # dropped here has finished its last replay, so its memory and context may go
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            old, _ = self._entries.popitem(last=False)
            self.evictions += 1
            log.info("%s: dropping the CUDA graph for %s (at most %d kept)", self.owner, old, self.capacity)

    def fail(self, key: Hashable, error: BaseException) -> None:
        self.failed.add(key)
        log.warning("%s: no CUDA graph for %s (%s); running that shape without one", self.owner, key, error)

    def clear(self) -> None:
        self._entries.clear()

    def keys(self) -> list[Hashable]:
        """Keys from least to most recently used."""
        return list(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries


def shape_key(feeds: dict[str, torch.Tensor]) -> tuple:
    """A graph cache key: every input's name, shape and dtype."""
    return tuple(sorted((name, tuple(t.shape), str(t.dtype)) for name, t in feeds.items()))
