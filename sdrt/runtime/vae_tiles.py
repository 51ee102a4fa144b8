"""The VAE in tiles: decoding and encoding large images in overlapping tiles, as diffusers' `vae.enable_tiling()`.

A wrapper that speaks the engine protocol around a VAE decoder or encoder (as `vae_guard` does). Tiled, the
latents are cut into squares of the VAE's tile size (its config's `sample_size` pixels: 512 for SD, 1024 for
SDXL, 256 for the x4 upscaler; a quarter of them overlapping), each decoded alone, and each tile faded into the one
above and the one on its left over a quarter of a tile, as diffusers' `tiled_decode` / `_tiled_encode` do, so the
result equals diffusers' tiled VAE. Memory then grows with the tile, not with the image.

When: "on" tiles whatever is larger than one tile (diffusers' enable_tiling); "off" never; "auto" (the default)
when an image has more than `max_pixels` pixels, or its latents exceed the engine's profile. A tile smaller than
the engine's smallest size (a thin last row) is padded by repetition and cropped after, the one place where the
result can differ from diffusers'.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F

from sdrt.engines import Engine

MODES = ("auto", "on", "off")
AUTO_MAX_PIXELS = 1024 * 1024  # "auto" tiles images with more pixels than this (per image)
OVERLAP = 0.25  # diffusers' tile_overlap_factor


class TiledVae:
    """A VAE decoder ("latent" -> "images") or encoder ("images" -> "latent_parameters") run in tiles when large."""

    def __init__(self, engine: Engine, mode: str = "auto", max_pixels: int = AUTO_MAX_PIXELS) -> None:
        if mode not in MODES:
            raise ValueError(f"vae_tiling {mode!r} is not one of {', '.join(MODES)}")
        if engine.spec.role not in ("vae_decoder", "vae_encoder"):
            raise ValueError(f"{engine.spec.name} is a {engine.spec.role}, not a VAE half")
        self.inner = engine
        self.spec, self.ranges, self.device = engine.spec, engine.ranges, engine.device
        self.mode, self.max_pixels = mode, max_pixels
        self.decoder = engine.spec.role == "vae_decoder"
        self.factor = engine.ranges.latent_factor
        sample = int(engine.spec.attributes.get("sample_size") or 64 * self.factor)  # diffusers' tile_sample_min_size
        self.tile_latent = sample // self.factor  # diffusers' tile_latent_min_size
        self.tiled_calls = 0  # calls that ran in tiles

    def __getattr__(self, name: str):  # the wrapped engine's other attributes (the guard's fell_back, ...)
        if name == "inner":  # not set yet (a copy being made): no wrapped engine to ask
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __call__(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        (name, x), = feeds.items()  # fmt: skip
        if not self.tiles(x):
            return self.inner(feeds)
        self.tiled_calls += 1
        (out,) = self.spec.output_names
        with torch.inference_mode():  # the blends write into the tiles: a torch engine's are inference tensors
            return {out: self._tiled(x, lambda tile: self._run(name, tile))}

    def tiles(self, x: torch.Tensor) -> bool:
        """Whether input `x` (latents for the decoder, images for the encoder) is run in tiles."""
        if self.mode == "off":
            return False
        latent = x.shape[-2:] if self.decoder else (x.shape[-2] // self.factor, x.shape[-1] // self.factor)
        if self.mode == "on":
            return max(latent) > self.tile_latent
        limit = self.ranges.dims()["latent_height"].max
        pixels = latent[0] * latent[1] * self.factor**2
        return pixels > self.max_pixels or max(latent) > limit

    def _tiled(self, x: torch.Tensor, run: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """diffusers' tiling: tiles every three quarters of a tile, each blended into its upper and left neighbour
        over a quarter of a tile (in the output's units), each kept up to where the next one's blend starts."""
        latent = min(self.tile_latent, self.ranges.dims()["latent_height"].max)
        sample = latent * self.factor
        tile_in, tile_out = (latent, sample) if self.decoder else (sample, latent)
        step = int(tile_in * (1 - OVERLAP))
        blend = int(tile_out * OVERLAP)
        limit = tile_out - blend
        rows = [
            [run(x[:, :, i : i + tile_in, j : j + tile_in]) for j in range(0, x.shape[3], step)]
            for i in range(0, x.shape[2], step)
        ]
        joined = []
        for i, row in enumerate(rows):
            kept = []
            for j, tile in enumerate(row):
                if i > 0:
                    tile = _blend(rows[i - 1][j], tile, blend, axis=2)
                if j > 0:
                    tile = _blend(row[j - 1], tile, blend, axis=3)
                kept.append(tile[:, :, :limit, :limit])
            joined.append(torch.cat(kept, dim=3))
        return torch.cat(joined, dim=2)

    def _run(self, name: str, tile: torch.Tensor) -> torch.Tensor:
        """One tile through the engine; a tile under the engine's smallest size padded (edge values) and cropped."""
        smallest = self.ranges.dims()["latent_height"].min * (1 if self.decoder else self.factor)
        height, width = tile.shape[-2:]
        pad = (0, max(0, smallest - width), 0, max(0, smallest - height))
        if any(pad):
            tile = F.pad(tile, pad, mode="replicate")
        (out,) = self.inner({name: tile.contiguous()}).values()
        scale = self.factor if self.decoder else 1 / self.factor
        return out[:, :, : round(height * scale), : round(width * scale)]


def _blend(above: torch.Tensor, tile: torch.Tensor, extent: int, axis: int) -> torch.Tensor:
    """`tile` with its first rows (axis 2) or columns (axis 3) faded in from the end of `above`, in place, with
    diffusers' weights (row y: 1 - y / e of the neighbour, y / e of the tile; the weights rounded from float64)."""
    extent = min(above.shape[axis], tile.shape[axis], extent)
    if extent == 0:
        return tile
    w = torch.arange(extent, dtype=torch.float64) / extent
    shape = [1, 1, 1, 1]
    shape[axis] = extent
    keep, take = (1 - w).float().reshape(shape), w.float().reshape(shape)
    start = tile.narrow(axis, 0, extent)
    start.copy_(above.narrow(axis, above.shape[axis] - extent, extent) * keep + start * take)
    return tile
