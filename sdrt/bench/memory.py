"""Peak memory during a stretch of work: host RSS sampled by a thread, GPU memory from torch and the driver.

`ru_maxrss` never goes down, so it cannot tell one scenario's peak from an earlier one's inside one
process; a thread sampling RSS can. A fresh process's `ru_maxrss` (see `process_peak_rss`) is the clean
whole-process figure, which is what cold starts report.
"""

from __future__ import annotations

import resource
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

SAMPLE_SECONDS = 0.01


@dataclass
class Window:
    """Peaks seen between the start and the end of one window (bytes; GPU fields None without a GPU)."""

    rss_start: int = 0  # RSS when the window opened
    rss_peak: int = 0  # highest RSS sampled in the window
    gpu_allocated_start: int | None = None  # torch's allocated bytes when the window opened
    gpu_allocated_peak: int | None = None  # torch.cuda.max_memory_allocated over the window
    gpu_used_start: int | None = None  # device memory in use (driver's view) when the window opened
    gpu_used_peak: int | None = None  # highest device memory in use sampled in the window


class MemorySampler:
    """Samples this process's RSS (and, on a GPU, device memory in use) every few milliseconds in a thread.

    Device memory "in use" is total minus free as the driver reports it: it includes ONNX Runtime's
    arenas and the CUDA context, which torch's allocator counters do not see, and any other process's
    use of the same GPU.
    """

    def __init__(self, device: torch.device | str | None = None, interval: float = SAMPLE_SECONDS) -> None:
        import psutil

        self._process = psutil.Process()
        self._device = torch.device(device) if device is not None and torch.device(device).type == "cuda" else None
        self._interval = interval
        self._lock = threading.Lock()
        self._rss_peak = 0
        self._gpu_used_peak: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> MemorySampler:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="sdrt-bench-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    @contextmanager
    def window(self) -> Iterator[Window]:
        """Peaks over the body of the `with`; the Window is filled in when it closes."""
        w = Window()
        with self._lock:
            w.rss_start = self._rss_peak = self._rss()
            if self._device is not None:
                w.gpu_used_start = self._gpu_used_peak = self._gpu_used()
        if self._device is not None:
            torch.cuda.reset_peak_memory_stats(self._device)
            w.gpu_allocated_start = torch.cuda.memory_allocated(self._device)
        try:
            yield w
        finally:
            self._sample()
            with self._lock:
                w.rss_peak = self._rss_peak
                w.gpu_used_peak = self._gpu_used_peak
            if self._device is not None:
                w.gpu_allocated_peak = torch.cuda.max_memory_allocated(self._device)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def _sample(self) -> None:
        rss = self._rss()
        used = self._gpu_used() if self._device is not None else None
        with self._lock:
            self._rss_peak = max(self._rss_peak, rss)
            if used is not None:
                self._gpu_used_peak = max(self._gpu_used_peak or 0, used)

    def _rss(self) -> int:
        return int(self._process.memory_info().rss)

    def _gpu_used(self) -> int:
        free, total = torch.cuda.mem_get_info(self._device)
        return int(total - free)


def process_peak_rss() -> int:
    """Peak RSS of this process's own memory so far, in bytes.

    On Linux, VmHWM of /proc/self/status: ru_maxrss is not it there, since a child inherits its parent's at
    fork and keeps it through exec (a fresh process started from a 20 GB benchmark reports 20 GB).
    Elsewhere ru_maxrss (KiB on Linux, bytes on macOS).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)
