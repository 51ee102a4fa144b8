"""The web UI's "SD upscale" script: upscale an image, redraw it tile by tile with img2img, join the tiles.

As the web UI's `scripts/sd_upscale.py`: the image is upscaled by `scale` with an upscaler (a GAN upscaler file,
Lanczos, Nearest; "None" keeps it), split into tiles of the request's size sharing at least `overlap` pixels
(`sdrt.upscalers.tiles`: the web UI's grid), each tile redrawn by image-to-image, and the tiles joined with the
web UI's fade. Tile k of a batch of `batch_size` gets the seed the web UI gives it: batch i starts at seed + i (the
script adds one per batch), its images count on from there. Each tile is a request of its own, so a server
batches the tiles together (and with other work of the same shape).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from sdrt.excerpt import excerpt
from sdrt.runtime import extras
from sdrt.upscalers import tiles
from sdrt.upscalers.library import UpscalerLibrary

MAX_TILES = 256  # most tiles one upscale may make (a 4096x4096 result of 512-pixel tiles sharing 64 is 81)


@dataclass(frozen=True)
class SdUpscale:
    """The script's arguments: the web UI's script_args [info, overlap, upscaler, scale]."""

    overlap: int = 64  # pixels neighbouring tiles share (the web UI's default 64)
    upscaler: str = extras.NONE  # the upscaler's name ("None": the image as it is)
    scale: float = 2.0  # the upscale factor (the web UI's "Scale Factor")

    def __post_init__(self) -> None:
        if isinstance(self.overlap, bool) or not isinstance(self.overlap, int) or not 0 <= self.overlap <= 256:
            raise ValueError(f"script_args overlap {excerpt(self.overlap)} is not a pixel count in 0..256")
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) or not 1 <= self.scale <= 4:
            raise ValueError(f"script_args scale {excerpt(self.scale)} is outside 1..4")


@dataclass(frozen=True)
class Plan:
    """An SD upscale made ready: the upscaled image's tiles, where they go, and the size of the result."""

    grid: tiles.Grid  # over the upscaled image (padded with black to a whole tile where smaller, as the web UI)
    tiles: list[Image.Image]  # row-major, each of the request's size
    size: tuple[int, int]  # the result's width and height (the upscaled image's)


def prepare(image: Image.Image, script: SdUpscale, width: int, height: int, upscalers: UpscalerLibrary | None) -> Plan:
    """Upscale `image` and cut it into `width` x `height` tiles; ValueError for an unknown upscaler, too many tiles."""
    upscaler = extras.resolve(script.upscaler, upscalers, "script_args upscaler")
    image = image.convert("RGB")
    big = image if upscaler is None else upscaler.upscale(image, script.scale)
    if script.overlap >= min(width, height):
        raise ValueError(f"script_args overlap {script.overlap} must be below the tile size {width}x{height}")
    canvas = Image.new("RGB", (max(big.width, width), max(big.height, height)))  # the web UI's crop pads black
    canvas.paste(big)
    grid = tiles.split(canvas.height, canvas.width, height, width, script.overlap)
    if grid.count > MAX_TILES:
        raise ValueError(f"SD upscale to {big.width}x{big.height} makes {grid.count} tiles, over {MAX_TILES}")
    boxes = [(x, y, x + width, y + height) for y, x in grid.boxes()]
    return Plan(grid, [canvas.crop(box) for box in boxes], big.size)


def seeds(seed: int, count: int, batch_size: int) -> list[int]:
    """The web UI's seeds of `count` tiles redrawn `batch_size` at a time: batch i from seed + i, counting on."""
    return [seed + k // batch_size + k % batch_size for k in range(count)]


def join(plan: Plan, images: Sequence[Image.Image]) -> Image.Image:
    """The redrawn tiles joined with the web UI's fade, cropped to the upscaled image."""
    stacked = torch.stack([torch.from_numpy(np.asarray(i.convert("RGB"), dtype=np.float32)) for i in images])
    joined = tiles.join(stacked.permute(0, 3, 1, 2), plan.grid)[0]
    array = joined.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(array, "RGB").crop((0, 0, *plan.size))


def infotext_fields(script: SdUpscale) -> tuple[tuple[str, str], ...]:
    """The web UI's entries of the infotext."""
    return (("SD upscale overlap", str(script.overlap)), ("SD upscale upscaler", script.upscaler))


def with_fields(infotext: str, fields: Sequence[tuple[str, str]]) -> str:
    """An infotext with more "Key: value" entries before its closing Version entry (as the web UI orders them)."""
    lines = infotext.split("\n")
    pairs = ", ".join(f"{key}: {value}" for key, value in fields)
    last, marker = lines[-1], ", Version: "
    at = last.rfind(marker)
    lines[-1] = f"{last[:at]}, {pairs}{last[at:]}" if at >= 0 else f"{last}, {pairs}"
    return "\n".join(lines)
