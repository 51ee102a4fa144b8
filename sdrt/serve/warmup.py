"""Warming a server's engines at load for the shapes it serves (`sdrt serve --warm-shapes 512x512:1,2,4`).

Engines that capture CUDA graphs (and OpenVINO's static models) do so lazily, at the first call of
each input shape; in a server that first call is inside a client's batch. Warming runs one
one-step generation per configured (size, batch) before the server reports ready, so the denoiser and
the VAE decoder meet every configured shape then. Each warm-up generation is guided (a prompt and an
empty negative prompt), so the UNet sees 2 x batch rows, as it does for every guided request. Text
encoder row counts depend on how many distinct prompts a batch holds and are met as they come (the
text encoder runs once per batch, not per step).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sdrt.serve.config import WarmShape

if TYPE_CHECKING:
    from sdrt.runtime.pipeline import Pipeline

log = logging.getLogger(__name__)


def warm_up(pipe: Pipeline, shapes: Sequence[WarmShape]) -> float:
    """Run one guided one-step generation per shape (checked against the artifact first); seconds taken."""
    ranges = pipe.manifest.ranges
    for shape in shapes:
        ranges.check_size(shape.height, shape.width)
        if shape.batch > ranges.max_batch:
            raise ValueError(
                f"warm shape {shape}: batch {shape.batch} is outside the artifact's 1..{ranges.max_batch}; "
                f"re-export with --max-batch {shape.batch}"
            )
    start = time.perf_counter()
    for shape in shapes:
        t0 = time.perf_counter()
        pipe.generate(
            "warm-up",
            negative_prompt="",
            height=shape.height,
            width=shape.width,
            num_inference_steps=1,
            num_images_per_prompt=shape.batch,
            seed=0,
            scheduler="euler",  # any sampler meets the same shapes; this one runs one step with one UNet call
        )
        log.info("warmed %s in %.1f s", shape, time.perf_counter() - t0)
    return time.perf_counter() - start
