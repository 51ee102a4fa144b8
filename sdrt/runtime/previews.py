"""Cheap step previews: latents -> RGB by a fixed linear map, no VAE call (the web UI's "Approx cheap" preview)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from sdrt.families.sd import SD_LATENT_RGB
from sdrt.files import atomic_file

log = logging.getLogger(__name__)


# Rows are the 4 latent channels, columns R, G, B: SD 1.x/2.x latents' linear fit (a family's `latent_rgb`, see
# sdrt.families). The map applies to latents as the sampler holds them (already multiplied by the VAE's scaling
# factor) and gives RGB in about [-1, 1], the VAE's output range.
def latents_to_rgb(latents: torch.Tensor, factors: Sequence[Sequence[float]] | None = None) -> torch.Tensor:
    """(N, C, h, w) latents (as the sampler holds them, scaled) -> (N, h, w, 3) uint8 RGB, on the CPU.

    `factors` is the family's C x 3 map (default SD 1.x/2.x's). RGB in [-1, 1] maps to [0, 255] as the web UI
    maps it: x * 127.5 + 127.5, rounded, clamped; NaN shows as grey.
    """
    table = torch.tensor(factors if factors is not None else SD_LATENT_RGB, dtype=torch.float32)
    if latents.ndim != 4 or latents.shape[1] != table.shape[0]:
        raise ValueError(
            f"latents of shape {tuple(latents.shape)} are not (N, {table.shape[0]}, h, w): "
            f"this preview map takes {table.shape[0]}-channel latents"
        )
    if not latents.is_floating_point():
        raise ValueError(f"latents of dtype {latents.dtype} are not floating point")
    rgb = torch.einsum("nchw,cr->nhwr", latents.detach().to("cpu", torch.float32), table)
    rgb = torch.nan_to_num(rgb, nan=0.0)
    return (rgb * 127.5 + 127.5).round().clamp(0, 255).to(torch.uint8)


def preview_images(
    latents: torch.Tensor, upscale: int = 8, factors: Sequence[Sequence[float]] | None = None
) -> list[Image.Image]:
    """(N, C, h, w) latents -> N RGB images of (h * upscale, w * upscale), nearest-upscaled to the image's size.

    The default 8 is SD's VAE downsampling factor, so a preview has the size of the image it previews.
    """
    _check_upscale(upscale)
    rgb = latents_to_rgb(latents, factors)
    if upscale > 1:
        rgb = rgb.repeat_interleave(upscale, dim=1).repeat_interleave(upscale, dim=2)
    return [Image.fromarray(image.numpy()) for image in rgb]


def _check_upscale(upscale: int) -> None:
    if isinstance(upscale, bool) or not isinstance(upscale, int) or upscale < 1:
        raise ValueError(f"upscale {upscale!r} is not a positive integer")


class PreviewWriter:
    """A step callback, (step, timestep, latents) -> None, writing DIR/<prefix>-img<i>-step<k>.png for each image.

    Each file is written to a temporary name in DIR and renamed into place, so a reader (a web UI polling the
    directory) never sees a half-written PNG.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        prefix: str = "preview",
        upscale: int = 8,
        factors: Sequence[Sequence[float]] | None = None,
    ) -> None:
        if not prefix or any(sep in prefix for sep in ("/", os.sep, os.altsep) if sep):
            raise ValueError(f"prefix {prefix!r} must be a non-empty file name part without path separators")
        _check_upscale(upscale)
        self.directory = Path(directory)
        self.prefix = prefix
        self.upscale = upscale
        self.factors = factors  # the model family's latent -> RGB map (Pipeline.family.latent_rgb)
        self.directory.mkdir(parents=True, exist_ok=True)

    def path(self, image: int, step: int) -> Path:
        """Where the preview of image `image` at step `step` goes."""
        return self.directory / f"{self.prefix}-img{image}-step{step}.png"

    def __call__(self, step: int, timestep: torch.Tensor | float, latents: torch.Tensor) -> None:
        """Write the previews of `latents` (N, 4, h, w) at `step`; `timestep` is accepted for the callback shape."""
        for i, image in enumerate(preview_images(latents, self.upscale, self.factors)):
            with atomic_file(self.path(i, step)) as tmp:
                image.save(tmp, format="PNG")
        log.debug("wrote %d previews of step %d to %s", latents.shape[0], step, self.directory)
