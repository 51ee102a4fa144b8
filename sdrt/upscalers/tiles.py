"""Images in overlapping tiles, as the web UI splits and joins them: the GAN upscalers' tiled runs and the
"SD upscale" script share this geometry.

Along each axis tiles are spread evenly from the first pixel to the last (the last tile ends at the edge), so
every tile has the same size and neighbours share at least `overlap` pixels. Joining pastes tile after tile,
left to right and then row after row, each fading in over its first `overlap` pixels with a linear ramp (the web
UI's `combine_grid`, in float rather than through 8-bit masks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Grid:
    """Where the tiles of one image lie: the same tile size everywhere, starts along each axis."""

    height: int  # the image's size in pixels
    width: int
    tile_height: int  # every tile's size (at most the image's)
    tile_width: int
    rows: tuple[int, ...]  # top row of each row of tiles
    cols: tuple[int, ...]  # left column of each column of tiles
    overlap: int  # pixels each tile fades in over

    @property
    def count(self) -> int:
        return len(self.rows) * len(self.cols)

    def boxes(self) -> list[tuple[int, int]]:
        """(top, left) of every tile, row-major (the order tiles are run and joined in)."""
        return [(y, x) for y in self.rows for x in self.cols]

    def scaled(self, factor: int) -> Grid:
        """The same grid on an image `factor` times larger (where an upscaler's output tiles lie)."""
        return Grid(
            self.height * factor, self.width * factor, self.tile_height * factor, self.tile_width * factor,
            tuple(y * factor for y in self.rows), tuple(x * factor for x in self.cols), self.overlap * factor,
        )  # fmt: skip


def starts(length: int, tile: int, overlap: int) -> tuple[int, ...]:
    """Tile starts along one axis: as many tiles as cover `length` sharing `overlap`, spread evenly to the end."""
    if tile >= length:
        return (0,)
    count = math.ceil((length - overlap) / (tile - overlap))
    step = (length - tile) / (count - 1)
    return tuple(min(int(i * step), length - tile) for i in range(count))


def split(height: int, width: int, tile_height: int, tile_width: int, overlap: int) -> Grid:
    """The grid of `tile_height` x `tile_width` tiles (clipped to the image) over an image."""
    th, tw = min(tile_height, height), min(tile_width, width)
    split_sides = [t for t, n in ((th, height), (tw, width)) if t < n]  # the sides cut into several tiles
    if overlap < 0 or any(overlap >= t for t in split_sides):
        raise ValueError(f"tile overlap {overlap} must be at least 0 and below the tile size {th}x{tw}")
    return Grid(height, width, th, tw, starts(height, th, overlap), starts(width, tw, overlap), overlap)


def crop(images: torch.Tensor, grid: Grid) -> torch.Tensor:
    """(B, C, H, W) -> every tile of every image, (B * count, C, th, tw), image-major then row-major."""
    tiles = [images[:, :, y : y + grid.tile_height, x : x + grid.tile_width] for y, x in grid.boxes()]
    return torch.stack(tiles, dim=1).flatten(0, 1)


def join(tiles: torch.Tensor, grid: Grid) -> torch.Tensor:
    """(B * count, C, th, tw) tiles -> (B, C, H, W) images, each tile fading in over `overlap` pixels."""
    count, (c, th, tw) = grid.count, tiles.shape[1:]
    if (th, tw) != (grid.tile_height, grid.tile_width) or tiles.shape[0] % count:
        raise ValueError(
            f"{tuple(tiles.shape)} tiles do not fit a grid of {count} {grid.tile_height}x{grid.tile_width}"
        )
    batch = tiles.shape[0] // count
    tiles = tiles.reshape(batch, len(grid.rows), len(grid.cols), c, th, tw)
    out = tiles.new_zeros((batch, c, grid.height, grid.width))
    ramp = torch.arange(grid.overlap, dtype=tiles.dtype, device=tiles.device) / max(grid.overlap, 1)
    for r, y in enumerate(grid.rows):
        row = tiles.new_zeros((batch, c, th, grid.width))
        for k, x in enumerate(grid.cols):
            _paste(row, tiles[:, r, k], x, grid.overlap if k else 0, ramp, axis=3)
        _paste(out, row, y, grid.overlap if r else 0, ramp, axis=2)
    return out


def _paste(target: torch.Tensor, piece: torch.Tensor, at: int, fade: int, ramp: torch.Tensor, axis: int) -> None:
    """Paste `piece` into `target` from `at` along `axis`, its first `fade` pixels blended in over the ramp."""
    length = piece.shape[axis]
    fade = min(fade, length)
    if fade:
        weight = ramp[:fade].reshape([-1 if d == axis else 1 for d in range(target.dim())])
        under = target.narrow(axis, at, fade)
        under.copy_(under * (1 - weight) + piece.narrow(axis, 0, fade) * weight)
    target.narrow(axis, at + fade, length - fade).copy_(piece.narrow(axis, fade, length - fade))
