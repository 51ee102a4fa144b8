"""Settings of an sdrt server: batching, queue bound, input limits and the shapes warmed at load."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from sdrt.runtime.params import MAX_STEPS
from sdrt.serve.styles import PromptStyle

_WARM_GROUP = re.compile(r"^(\d+)x(\d+):(\d+(?:,\d+)*)$")


@dataclass(frozen=True)
class WarmShape:
    """One served shape: image size and images per batch."""

    width: int  # pixels
    height: int  # pixels
    batch: int  # images per engine batch

    def __post_init__(self) -> None:
        for name in ("width", "height", "batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"warm shape {name} {getattr(self, name)} must be at least 1")

    def __str__(self) -> str:
        return f"{self.width}x{self.height} batch {self.batch}"


def parse_warm_shapes(groups: Sequence[str]) -> tuple[WarmShape, ...]:
    """`["512x512:1,2,4", "768x512:1"]` -> the shapes; ValueError naming a group that is not WIDTHxHEIGHT:B[,B...]."""
    shapes: list[WarmShape] = []
    for group in groups:
        match = _WARM_GROUP.match(group.strip())
        if match is None:
            raise ValueError(f"warm shape {group!r} is not WIDTHxHEIGHT:BATCH[,BATCH...], e.g. 512x512:1,2,4")
        width, height = int(match.group(1)), int(match.group(2))
        for batch in match.group(3).split(","):
            shape = WarmShape(width, height, int(batch))
            if shape not in shapes:
                shapes.append(shape)
    return tuple(shapes)


@dataclass(frozen=True)
class ServeConfig:
    """How a server batches requests and what it accepts from clients."""

    max_batch: int | None = None  # most images in one engine batch (run_batch); None = the artifact's max_batch
    max_wait_ms: float = 50.0  # longest a request waits for others to share its batch, once the engine is free
    max_queue: int = 64  # most requests waiting for the engine; beyond it, 429 with Retry-After
    max_body_bytes: int = 16 * 1024 * 1024  # largest request body (base64 input images included); beyond it, 413
    max_prompt_chars: int = 4000  # longest prompt or negative prompt in characters
    # denoising steps of requests that do not say (sdrt's API without steps; OpenAI's); None: the model family's
    # (30; unCLIP 20)
    default_steps: int | None = None
    max_steps: int = 150  # most denoising steps per request (the web UI's slider goes to 150)
    max_images: int = 16  # most images per request (prompts x images per prompt, batch_size x n_iter, n)
    warm_shapes: tuple[WarmShape, ...] = ()  # (size, batch) shapes each engine meets at load, before ready
    styles: tuple[PromptStyle, ...] = ()  # the web UI API's prompt styles (`sdrt serve --styles styles.csv`)
    max_control_units: int = 3  # most ControlNet units per request (the web UI extension's default unit count)

    def __post_init__(self) -> None:
        if self.max_batch is not None and (isinstance(self.max_batch, bool) or self.max_batch < 1):
            raise ValueError(f"max_batch {self.max_batch} must be at least 1")
        if not 0.0 <= self.max_wait_ms <= 60_000.0:
            raise ValueError(f"max_wait_ms {self.max_wait_ms} is outside 0..60000")
        for name in ("max_queue", "max_body_bytes", "max_prompt_chars", "max_images", "max_control_units"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} {getattr(self, name)} must be at least 1")
        if not 1 <= self.max_steps <= MAX_STEPS:
            raise ValueError(f"max_steps {self.max_steps} is outside 1..{MAX_STEPS}")
        names = [style.name for style in self.styles]
        if len(set(names)) != len(names):
            repeated = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"styles {repeated} are given more than once; each style needs its own name")
        if self.default_steps is not None and not 1 <= self.default_steps <= self.max_steps:
            raise ValueError(f"default_steps {self.default_steps} is outside 1..max_steps ({self.max_steps})")
