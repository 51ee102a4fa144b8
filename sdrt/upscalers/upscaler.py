"""An upscaler network on an engine of any backend, run in tiles: images of any size in, `scale` times larger out.

Tiles bound the memory a call needs whatever the image's size (the web UI's defaults: 192-pixel tiles sharing 8
pixels, joined with a linear fade: `tiles`). Images are RGB in [0, 1], the networks' training convention; an
image is padded by reflection to the sizes the network takes (a multiple of a SwinIR's window, of a
pixel-unshuffling ESRGAN's block, at least the engine's smallest size) and the output cropped back.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from sdrt.engines import Engine, max_batch
from sdrt.upscalers import tiles

MAX_PASSES = 3  # the web UI runs an upscaler at most three times to reach a target size


@dataclass(frozen=True)
class Tiling:
    """How images are split for the network: tile side and overlap in input pixels (tile 0: whole images)."""

    tile: int = 192  # the web UI's ESRGAN_tile
    overlap: int = 8  # the web UI's ESRGAN_tile_overlap

    def __post_init__(self) -> None:
        if self.tile < 0 or self.overlap < 0:
            raise ValueError(f"tile {self.tile} and overlap {self.overlap} must be at least 0")
        if self.tile and self.overlap >= self.tile:
            raise ValueError(f"tile overlap {self.overlap} must be below the tile size {self.tile}")


class Upscaler:
    """One upscaler network (`scale` x) on an engine, run in tiles; calls are serialized (one engine, one run)."""

    def __init__(self, name: str, engine: Engine, tiling: Tiling = Tiling(), progress: bool = False) -> None:
        if engine.spec.role != "upscaler":
            raise ValueError(f"{engine.spec.name} is a {engine.spec.role}, not an upscaler")
        self.name = name  # how it is listed and asked for: its file's stem
        self.engine = engine
        self.scale = int(engine.spec.attributes["scale"])
        self.multiple = int(engine.spec.attributes.get("multiple", 1))
        self.tiling = tiling
        self.progress = progress  # show a progress bar over the tiles
        self._lock = threading.Lock()

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float32 in [0, 1] on the engine's device -> (B, 3, sH, sW), not clamped."""
        with self._lock, torch.no_grad():
            return self._run(images)

    def _run(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        padded = self._pad(images)
        tile = self.tiling.tile or max(padded.shape[-2:])
        grid = tiles.split(padded.shape[-2], padded.shape[-1], tile, tile, self.tiling.overlap)
        self._check_tile(grid)
        pieces = tiles.crop(padded, grid)
        limit = max_batch(self.engine)
        outputs = []
        with tqdm(total=pieces.shape[0], desc=f"upscale {self.name}", unit="tile", disable=not self.progress) as bar:
            for start in range(0, pieces.shape[0], limit):
                chunk = pieces[start : start + limit].contiguous()
                outputs.append(self.engine({"image": chunk})["upscaled"])
                bar.update(chunk.shape[0])
        joined = tiles.join(torch.cat(outputs), grid.scaled(self.scale))
        return joined[:, :, : height * self.scale, : width * self.scale]

    def _pad(self, images: torch.Tensor) -> torch.Tensor:
        """Reflection-padded (bottom, right) to multiples of the network's, and to the engine's smallest size."""
        smallest = self.engine.ranges.dims()["latent_height"].min
        pads = [-(-max(size, smallest) // self.multiple) * self.multiple - size for size in images.shape[-2:]]
        if not any(pads):
            return images
        mode = "reflect" if all(p < s for p, s in zip(pads, images.shape[-2:], strict=True)) else "replicate"
        return F.pad(images, (0, pads[1], 0, pads[0]), mode=mode)

    def _check_tile(self, grid: tiles.Grid) -> None:
        dims = self.engine.ranges.dims()["latent_height"]
        for size in (grid.tile_height, grid.tile_width):
            if not dims.min <= size <= dims.max:
                raise ValueError(
                    f"upscaler {self.name}: {size}-pixel tiles are outside its engine's profile "
                    f"{dims.min}..{dims.max}; use tiles of at most {dims.max} pixels"
                )
            if size % self.multiple:
                raise ValueError(f"upscaler {self.name}: tiles must be multiples of {self.multiple} pixels, not {size}")

    def run(self, image: Image.Image) -> Image.Image:
        """One pass of the network: an 8-bit RGB image `scale` times larger."""
        return to_image(self(to_tensor(image, self.engine.device))[0])

    def upscale(self, image: Image.Image, scale: float) -> Image.Image:
        """The web UI's upscale by `scale`: the network's passes until the image reaches the target (at most three),
        then a Lanczos resize to the target, whose sides are rounded down to multiples of 8."""
        target = (int(image.width * scale) // 8 * 8, int(image.height * scale) // 8 * 8)
        return self._reach(image, target, scale)

    def resize(self, image: Image.Image, width: int, height: int) -> Image.Image:
        """The web UI's resize of an image to `width` x `height` with an upscaler (hires fix, "just resize")."""
        scale = max(width / image.width, height / image.height)
        if scale > 1.0:
            image = self.upscale(image, scale)
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.LANCZOS)
        return image

    def _reach(self, image: Image.Image, target: tuple[int, int], scale: float) -> Image.Image:
        for i in range(MAX_PASSES):
            if image.width >= target[0] and image.height >= target[1] and (i > 0 or scale != 1):
                break
            image = self.run(image)
        if image.size != target:
            image = image.resize(target, Image.Resampling.LANCZOS)
        return image


def to_tensor(image: Image.Image, device: torch.device | str = "cpu") -> torch.Tensor:
    """An image as (1, 3, H, W) float32 RGB in [0, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).to(device)


def to_image(tensor: torch.Tensor) -> Image.Image:
    """(3, H, W) float in [0, 1] (clamped) -> an 8-bit RGB image, rounded to nearest."""
    array = (tensor.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array, "RGB")
