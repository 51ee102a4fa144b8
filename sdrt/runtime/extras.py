"""The web UI's "Extras" upscale: an image made larger by a factor or to a size, with one upscaler or two blended.

As the web UI's postprocessing upscale: the first upscaler (a GAN upscaler file of the pipeline's directory, or
Lanczos / Nearest) upscales by `scale` (the target's sides rounded down to multiples of 8), or to `width` x
`height` by the larger of the two ratios, then centred on a canvas of exactly that size when `crop`; a second
upscaler's result is blended in at `upscaler_2_visibility`. Its infotext entries are the web UI's
("Postprocess upscale by: 2, Postprocess upscaler: NAME").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from PIL import Image

from sdrt.excerpt import excerpt
from sdrt.runtime.hires import IMAGE_UPSCALERS
from sdrt.upscalers.library import UpscalerLibrary

NONE = "None"  # the web UI's name for "no upscaler"
MAX_SCALE = 8.0  # the web UI's slider goes to 8
MAX_SIDE = 8192  # largest side of an upscaled image sdrt makes (a 8192x8192 RGB image is 200 MB)


class ImageUpscaler(Protocol):
    def upscale(self, image: Image.Image, scale: float) -> Image.Image: ...


@dataclass(frozen=True)
class PilUpscaler:
    """A PIL filter as an upscaler (the web UI's Lanczos and Nearest): one resize to the target."""

    name: str
    resample: Image.Resampling

    def upscale(self, image: Image.Image, scale: float) -> Image.Image:
        target = (int(image.width * scale) // 8 * 8, int(image.height * scale) // 8 * 8)
        return image if target == image.size else image.resize(target, self.resample)


@dataclass(frozen=True)
class ExtrasUpscale:
    """What the web UI's extra-single-image / extra-batch-images upscale asks for."""

    upscaler_1: str  # NONE, Lanczos, Nearest or a GAN upscaler file's stem
    scale: float = 2.0  # resize by this (the web UI's upscaling_resize, resize_mode 0)
    width: int = 0  # or, with height, resize to this (resize_mode 1: upscaling_resize_w / _h)
    height: int = 0
    crop: bool = True  # with width and height: centre the result on a canvas of exactly that size
    upscaler_2: str = NONE  # a second upscaler, blended in
    upscaler_2_visibility: float = 0.0  # its weight in the blend, 0..1

    def __post_init__(self) -> None:
        if isinstance(self.scale, bool) or not 1.0 <= self.scale <= MAX_SCALE:
            raise ValueError(f"upscaling_resize {excerpt(self.scale)} is outside 1..{MAX_SCALE:g}")
        if (self.width > 0) != (self.height > 0) or self.width < 0 or self.height < 0:
            raise ValueError(f"upscale to {self.width}x{self.height}: give both a width and a height above 0")
        if max(self.width, self.height) > MAX_SIDE:
            raise ValueError(f"upscale to {self.width}x{self.height} is over {MAX_SIDE} pixels a side")
        if not 0.0 <= self.upscaler_2_visibility <= 1.0:
            raise ValueError(f"extras_upscaler_2_visibility {excerpt(self.upscaler_2_visibility)} is outside 0..1")

    @property
    def to_size(self) -> bool:
        return self.width > 0


def resolve(name: str, upscalers: UpscalerLibrary | None, field: str = "upscaler_1") -> ImageUpscaler | None:
    """The upscaler called `name` (None for the web UI's "None"); ValueError naming `field` and what is served."""
    if name == NONE:
        return None
    if name in IMAGE_UPSCALERS:
        return PilUpscaler(name, IMAGE_UPSCALERS[name])
    files = [] if upscalers is None else upscalers.names()
    if name not in files:
        served = ", ".join([NONE, *IMAGE_UPSCALERS, *files])
        where = "" if upscalers is not None else " (GAN upscalers need an upscaler directory: --upscaler-dir)"
        raise ValueError(f"{field} {excerpt(name)} is not served here; served: {served}{where}")
    return upscalers.get(name)  # type: ignore[union-attr]  # names() came from it


def check(request: ExtrasUpscale, upscalers: UpscalerLibrary | None) -> None:
    """ValueError unless both upscalers are served (before any image is decoded or upscaled)."""
    if request.upscaler_1 not in (NONE, *IMAGE_UPSCALERS):
        resolve(request.upscaler_1, upscalers, "upscaler_1")
    if request.upscaler_2 not in (NONE, *IMAGE_UPSCALERS) and request.upscaler_2_visibility > 0:
        resolve(request.upscaler_2, upscalers, "upscaler_2")


def upscale(
    image: Image.Image, request: ExtrasUpscale, upscalers: UpscalerLibrary | None
) -> tuple[Image.Image, dict[str, str]]:
    """The upscaled image and its infotext entries (empty when upscaler_1 is "None": the image as it is)."""
    first = resolve(request.upscaler_1, upscalers, "upscaler_1")
    info: dict[str, str] = {}
    if first is None:
        return image, info
    image = image.convert("RGB")
    scale = max(request.width / image.width, request.height / image.height) if request.to_size else request.scale
    if max(image.width, image.height) * scale > MAX_SIDE:
        raise ValueError(f"upscaling {image.width}x{image.height} by {scale:g} is over {MAX_SIDE} pixels a side")
    if request.to_size:
        info["Postprocess upscale to"] = f"{request.width}x{request.height}"
    else:
        info["Postprocess upscale by"] = f"{request.scale:g}"
    result = _sized(first.upscale(image, scale), request)
    info["Postprocess upscaler"] = request.upscaler_1
    second = resolve(request.upscaler_2, upscalers, "upscaler_2") if request.upscaler_2_visibility > 0 else None
    if second is not None:
        other = _sized(second.upscale(image, scale), request)
        if other.size != result.size:
            other = other.resize(result.size, Image.Resampling.LANCZOS)
        result = Image.blend(result, other, request.upscaler_2_visibility)
        info["Postprocess upscaler 2"] = request.upscaler_2
    if request.to_size and request.crop:
        info["Postprocess crop to"] = f"{result.width}x{result.height}"
    return result, info


def _sized(image: Image.Image, request: ExtrasUpscale) -> Image.Image:
    """With a target size and crop: the image centred on a black canvas of exactly that size, as the web UI."""
    if not (request.to_size and request.crop):
        return image
    canvas = Image.new("RGB", (request.width, request.height))
    canvas.paste(image, (request.width // 2 - image.width // 2, request.height // 2 - image.height // 2))
    return canvas


def infotext(info: Mapping[str, str]) -> str:
    """The entries as the web UI writes a postprocessing infotext."""
    return ", ".join(f"{key}: {value}" for key, value in info.items())
