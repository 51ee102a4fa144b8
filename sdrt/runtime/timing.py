"""Per-stage timings of one generation: host clock on the CPU, CUDA events on a GPU."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sdrt.lazy import deferred

if TYPE_CHECKING:
    import torch
else:
    torch = deferred("torch")

# The stages the runtime times (StageClock names; `Timings` adds them up per request):
TEXT_ENCODER = "text_encoder"  # tokenization and text/image encoder calls
VAE_ENCODE = "vae_encode"  # VAE encoder calls (image-to-image, inpainting)
CONTROLNET = "controlnet"  # ControlNet calls, every net, every step it runs
UNET = "unet"  # calls of the whole UNet: every call without DeepCache, DeepCache's full steps with it
UNET_SHALLOW = "unet_shallow"  # DeepCache's shallow steps: only the branch's shallow part of the UNet runs
DENOISE = "denoise"  # the whole denoising loop (UNet, ControlNet, scheduler and guidance)
VAE_DECODE = "vae_decode"  # VAE decoder calls
STAGES = (TEXT_ENCODER, VAE_ENCODE, CONTROLNET, UNET, UNET_SHALLOW, DENOISE, VAE_DECODE)


def _no_sync() -> None:
    pass


@dataclass
class StageClock:
    """Accumulates seconds and calls per stage.

    On the host clock, `sync` runs before each reading so that queued device work is counted in the
    stage that queued it. Given a CUDA `device`, stages are timed instead with CUDA events on the
    current stream: nothing waits inside the run, and `seconds` synchronizes once, when read.
    """

    sync: Callable[[], None] = _no_sync
    device: torch.device | str | None = None  # a CUDA device: time stages with CUDA events
    _seconds: dict[str, float] = field(default_factory=dict, init=False, repr=False)
    _calls: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    # open stage -> its host start time or start event; closed stages' (name, start, end) events not yet read
    _open: dict[str, Any] = field(default_factory=dict, init=False, repr=False)
    _pending: list[tuple[str, Any, Any]] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        self._cuda = self.device is not None and torch.device(self.device).type == "cuda"

    @property
    def uses_cuda_events(self) -> bool:
        return self._cuda

    def start(self, name: str) -> None:
        """Open stage `name`; ValueError if it is already open."""
        if name in self._open:
            raise ValueError(f"stage {name!r} is already open")
        if self._cuda:
            self._open[name] = self._record()
        else:
            self.sync()
            self._open[name] = time.perf_counter()

    def stop(self, name: str) -> None:
        """Close stage `name` and add its time; ValueError if it is not open."""
        if name not in self._open:
            raise ValueError(f"stage {name!r} is not open")
        begin = self._open.pop(name)
        if self._cuda:
            self._pending.append((name, begin, self._record()))
        else:
            self.sync()
            self._seconds[name] = self._seconds.get(name, 0.0) + time.perf_counter() - begin
        self._calls[name] = self._calls.get(name, 0) + 1

    def is_open(self, name: str) -> bool:
        return name in self._open

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.start(name)
        try:
            yield
        finally:
            self.stop(name)

    @property
    def seconds(self) -> dict[str, float]:
        """Seconds per closed stage (on a GPU this waits for the stages' events)."""
        for name, begin, end in self._pending:
            end.synchronize()
            self._seconds[name] = self._seconds.get(name, 0.0) + begin.elapsed_time(end) / 1000.0
        self._pending.clear()
        return self._seconds

    @property
    def calls(self) -> dict[str, int]:
        """Times each stage was closed."""
        return self._calls

    def reset(self) -> None:
        """Forget all stages, open or closed."""
        self._seconds.clear()
        self._calls.clear()
        self._open.clear()
        self._pending.clear()

    def _record(self):
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self.device))
        return event


@dataclass(frozen=True)
class Timings:
    """Seconds spent per stage of one generation."""

    text_encoder: float  # tokenization and text encoder calls
    unet: float  # all UNet calls (DeepCache's shallow ones included)
    scheduler: float  # scheduler steps, guidance and other per-step runtime work
    vae_decode: float  # VAE decoder calls
    total: float  # end to end, including image conversion
    steps: int  # denoising steps run
    vae_encode: float = 0.0  # VAE encoder calls (image-to-image, inpainting)
    unet_calls: int = 0  # UNet evaluations: more than steps for PNDM's warm-up, Heun and DPM2 (two per step)
    controlnet: float = 0.0  # ControlNet calls (every ControlNet of the batch, every step it runs)
    unet_shallow: float = 0.0  # DeepCache's shallow UNet calls (a part of `unet`)
    unet_shallow_calls: int = 0  # of `unet_calls`, those that ran only DeepCache's shallow branch

    @property
    def unet_full_calls(self) -> int:
        """UNet calls that ran the whole UNet (all of them without DeepCache)."""
        return (self.unet_calls or self.steps) - self.unet_shallow_calls

    @property
    def unet_full_per_call(self) -> float:
        """Seconds per call of the whole UNet."""
        calls = self.unet_full_calls
        return (self.unet - self.unet_shallow) / calls if calls else 0.0

    @property
    def unet_shallow_per_call(self) -> float:
        """Seconds per DeepCache shallow call (0 without DeepCache)."""
        return self.unet_shallow / self.unet_shallow_calls if self.unet_shallow_calls else 0.0

    @property
    def unet_per_call(self) -> float:
        """Seconds per UNet evaluation (one batched-CFG call, however many engine chunks it took)."""
        calls = self.unet_calls or self.steps
        return self.unet / calls if calls else 0.0

    @property
    def other(self) -> float:
        """Time outside the stages: scheduler set-up, first-use imports, image conversion."""
        staged = self.text_encoder + self.vae_encode + self.controlnet + self.unet + self.scheduler + self.vae_decode
        return max(0.0, self.total - staged)

    def rows(self) -> list[tuple[str, float]]:
        return [
            ("text encoder", self.text_encoder),
            ("vae encode", self.vae_encode),
            *((("controlnet", self.controlnet),) if self.controlnet else ()),
            ("unet total", self.unet),
            ("unet per call", self.unet_per_call),
            *(
                (("unet per full call", self.unet_full_per_call), ("unet per shallow call", self.unet_shallow_per_call))
                if self.unet_shallow_calls
                else ()
            ),
            ("scheduler + overhead", self.scheduler),
            ("vae decode", self.vae_decode),
            ("other (setup, image conversion)", self.other),
            ("total", self.total),
        ]

    def table(self) -> str:
        width = max(len(name) for name, _ in self.rows())
        lines = [f"{'stage':<{width}}  {'ms':>10}"]
        lines += [f"{name:<{width}}  {seconds * 1000:>10.1f}" for name, seconds in self.rows()]
        return "\n".join(lines)
