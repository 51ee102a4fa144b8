"""Per-stage wall-clock timings of one generation."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class StageClock:
    """Accumulates seconds per stage; `sync` waits for queued device work before each reading."""

    sync: Callable[[], None] = lambda: None
    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


@dataclass(frozen=True)
class Timings:
    """Seconds spent per stage of one generation."""

    text_encoder: float  # tokenization and text encoder calls
    unet: float  # all UNet calls
    scheduler: float  # scheduler steps, guidance and other per-step runtime work
    vae_decode: float  # VAE decoder calls
    total: float  # end to end, including image conversion
    steps: int  # denoising steps run
    vae_encode: float = 0.0  # VAE encoder calls (image-to-image, inpainting)

    @property
    def unet_per_step(self) -> float:
        return self.unet / self.steps if self.steps else 0.0

    @property
    def other(self) -> float:
        """Time outside the stages: scheduler set-up, first-use imports, image conversion."""
        staged = self.text_encoder + self.vae_encode + self.unet + self.scheduler + self.vae_decode
        return max(0.0, self.total - staged)

    def rows(self) -> list[tuple[str, float]]:
        return [
            ("text encoder", self.text_encoder),
            ("vae encode", self.vae_encode),
            ("unet total", self.unet),
            ("unet per step", self.unet_per_step),
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
