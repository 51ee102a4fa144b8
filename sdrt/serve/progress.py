"""What the web UI API's /progress, /interrupt and /skip see: the engine batch running now, step by step.

The engine thread reports each step (the pipeline's step callback) and asks, after each step, whether to
stop; the event loop reads a snapshot and asks for stops. A caller (a client address) can stop only a batch
whose every request is its own: a batch it shares with other clients runs on (their images need every step).
"""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Sequence

import torch

from sdrt.runtime.previews import preview_images


class Progress:
    """The running batch's progress, shared between the engine thread and the event loop."""

    def __init__(self, latent_rgb: Sequence[Sequence[float]] | None = None) -> None:
        self._lock = threading.Lock()
        self._latent_rgb = latent_rgb
        self._callers: list[str | None] = []  # the caller of each request of the running batch
        self._steps = 0  # steps the running batch takes (both passes with hires)
        self._step = 0  # steps it has run
        self._started = 0.0  # monotonic seconds
        self._latents: torch.Tensor | None = None  # after the last step, as the sampler holds them
        self._stop_for: set[str | None] = set()  # callers that asked to stop their running job
        self.interrupted = False  # the last batch stopped before its end
        self.skipped = False
        self.job_timestamp = "0"

    def begin(
        self, callers: Sequence[str | None], steps: int, latent_rgb: Sequence[Sequence[float]] | None = None
    ) -> None:
        """The engine starts a batch of these callers' requests, `steps` steps in all (`latent_rgb`: the preview
        factors of the batch's model, when the server runs several)."""
        with self._lock:
            if latent_rgb is not None:
                self._latent_rgb = latent_rgb
            self._callers, self._steps, self._step = list(callers), max(1, steps), 0
            self._started, self._latents = time.monotonic(), None
            self._stop_for = set()
            self.interrupted = self.skipped = False
            self.job_timestamp = time.strftime("%Y%m%d%H%M%S")

    def end(self) -> None:
        with self._lock:
            self._callers, self._latents = [], None

    def on_step(self, step: int, timestep: torch.Tensor, latents: torch.Tensor) -> None:
        """The pipeline's step callback (in the engine thread)."""
        with self._lock:
            self._step = min(self._step + 1, self._steps)
            self._latents = latents

    def should_stop(self) -> bool:
        """Asked by the pipeline after each step: True when every request running belongs to a caller that stops."""
        with self._lock:
            return bool(self._callers) and all(c in self._stop_for for c in self._callers)

    def stop(self, caller: str | None, skip: bool = False) -> bool:
        """`caller` asks to stop its running job at the next step; True when a job of its is running."""
        with self._lock:
            if caller not in self._callers:
                return False
            self._stop_for.add(caller)
            if all(c in self._stop_for for c in self._callers):
                self.skipped, self.interrupted = skip, not skip
            return True

    def snapshot(self, queued: int, with_image: bool) -> dict:
        """The web UI's /progress answer."""
        with self._lock:
            running = bool(self._callers)
            share = self._step / self._steps if running else 0.0
            elapsed = time.monotonic() - self._started if running else 0.0
            latents = self._latents if with_image else None
            state = {
                "skipped": self.skipped,
                "interrupted": self.interrupted,
                "job": "txt2img/img2img" if running else "",
                "job_count": queued + (1 if running else 0),
                "job_timestamp": self.job_timestamp,
                "job_no": 0,
                "sampling_step": self._step if running else 0,
                "sampling_steps": self._steps if running else 0,
            }
        image = None
        if latents is not None:
            out = io.BytesIO()
            preview_images(latents[:1], factors=self._latent_rgb)[0].save(out, format="PNG")
            image = base64.b64encode(out.getvalue()).decode("ascii")
        eta = elapsed / share - elapsed if share > 0 else None
        return {
            "progress": share,
            "eta_relative": eta if eta is not None else 0.0,
            "state": state,
            "current_image": image,
            "textinfo": None,
            "current_task": None,
        }
