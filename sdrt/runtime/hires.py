"""The web UI's hires fix: generate at a first size, upscale, then denoise again at the target size (img2img).

Latent upscalers interpolate the first pass's latents (torch's `interpolate`, with the web UI's modes); image
upscalers decode them, resize the image with PIL and encode it again. Upscalers that need model weights
(ESRGAN, Real-ESRGAN, SwinIR, ...) are not served.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image

from sdrt.excerpt import check_text, excerpt
from sdrt.runtime.schedulers import check_sampler, sampler_label

# the web UI's latent upscale modes: name -> (torch interpolate mode, antialias)
LATENT_UPSCALERS: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
# image upscalers that need no weights: name -> PIL resampling filter
IMAGE_UPSCALERS: dict[str, Image.Resampling] = {
    "Lanczos": Image.Resampling.LANCZOS,
    "Nearest": Image.Resampling.NEAREST,
}

MAX_HIRES_SCALE = 8.0  # largest hr_scale: beyond it no artifact's size range reaches


@dataclass(frozen=True)
class HiresGeometry:
    """Where the first pass's latents go: upscaled to `upscaled` pixels, then cropped to `size` (both h, w)."""

    upscaled: tuple[int, int]  # the web UI's hr_upscale_to_y, hr_upscale_to_x
    size: tuple[int, int]  # the second pass's height and width: the latents' size after the crop, in pixels
    crop: tuple[int, int]  # latent rows and columns cut off, top and left (the rest of the cut at bottom and right)


@dataclass(frozen=True)
class Hires:
    """The web UI's hires fix: after the first pass, upscale, then denoise at the target size (img2img).

    The target is `scale` times the first size, or `width` x `height` (one of them: the other keeps the aspect
    ratio; both: the upscale covers them and the latents are cropped to them, centred, as the web UI does).
    """

    scale: float = 2.0  # hr_scale
    width: int = 0  # hr_resize_x: target width in pixels (0: from the scale, or from height)
    height: int = 0  # hr_resize_y
    upscaler: str = "Latent"  # a LATENT_UPSCALERS or IMAGE_UPSCALERS name
    steps: int | None = None  # hr_second_pass_steps: the second pass's steps (None: the first pass's)
    strength: float = 0.7  # the second pass's denoising strength; 0 upscales only
    prompt: str | None = None  # hr_prompt for every prompt (None: each image's own prompt)
    negative_prompt: str | None = None  # hr_negative_prompt (None: each image's own)
    sampler: str | None = None  # hr_sampler_name (None: the first pass's)

    def __post_init__(self) -> None:
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)):
            raise ValueError(f"hires scale {excerpt(self.scale)} is not a number")
        if not 1.0 <= self.scale <= MAX_HIRES_SCALE:
            raise ValueError(f"hires scale {self.scale} is outside 1..{MAX_HIRES_SCALE:g}")
        for name in ("width", "height"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"hires {name} {excerpt(value)} is not a size in pixels (0: from the scale)")
        if self.upscaler not in LATENT_UPSCALERS and self.upscaler not in IMAGE_UPSCALERS:
            raise ValueError(
                f"hires upscaler {excerpt(self.upscaler)} is not served here; served: "
                f"{', '.join([*LATENT_UPSCALERS, *IMAGE_UPSCALERS])} (upscalers that need model weights, such as "
                "ESRGAN, are not available)"
            )
        if self.steps is not None and (
            isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1
        ):
            raise ValueError(f"hires steps {excerpt(self.steps)} is not a positive integer (None: the first pass's)")
        strength = self.strength
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 <= strength <= 1.0:
            raise ValueError(f"hires strength {excerpt(strength)} is outside 0..1")
        for name in ("prompt", "negative_prompt"):
            text = getattr(self, name)
            if text is not None:
                if not isinstance(text, str):
                    raise ValueError(f"hires {name} {excerpt(text)} is not a string")
                check_text(f"hires {name}", text)
        check_sampler(self.sampler)

    @property
    def latent(self) -> bool:
        """True when the latents are interpolated; False when the decoded image is resized."""
        return self.upscaler in LATENT_UPSCALERS

    def geometry(self, height: int, width: int, factor: int) -> HiresGeometry:
        """The upscale and crop from a first pass of height x width pixels, as the web UI computes them."""
        rx, ry = self.width, self.height
        truncate = (0, 0)
        if rx == 0 and ry == 0:
            to_y, to_x = int(height * self.scale), int(width * self.scale)
        elif ry == 0:
            to_y, to_x = rx * height // width, rx
        elif rx == 0:
            to_y, to_x = ry, ry * width // height
        else:
            if width / height < rx / ry:
                to_y, to_x = rx * height // width, rx
            else:
                to_y, to_x = ry, ry * width // height
            truncate = ((to_y - ry) // factor, (to_x - rx) // factor)
        latent = (to_y // factor - truncate[0], to_x // factor - truncate[1])
        return HiresGeometry(
            upscaled=(to_y, to_x),
            size=(latent[0] * factor, latent[1] * factor),
            crop=(truncate[0] // 2, truncate[1] // 2),
        )


def upscale_latents(latents: torch.Tensor, hires: Hires, geometry: HiresGeometry, factor: int) -> torch.Tensor:
    """First-pass latents (N, C, h, w) interpolated with the upscaler's mode and cropped to the target."""
    mode, antialias = LATENT_UPSCALERS[hires.upscaler]
    size = (geometry.upscaled[0] // factor, geometry.upscaled[1] // factor)
    up = F.interpolate(latents, size=size, mode=mode, antialias=antialias)
    top, left = geometry.crop
    rows, cols = geometry.size[0] // factor, geometry.size[1] // factor
    return up[:, :, top : top + rows, left : left + cols]


def upscale_image(image: Image.Image, hires: Hires, geometry: HiresGeometry, factor: int) -> Image.Image:
    """A decoded first-pass image resized with the upscaler's filter and cropped to the target."""
    up = image.resize((geometry.upscaled[1], geometry.upscaled[0]), IMAGE_UPSCALERS[hires.upscaler])
    top, left = geometry.crop[0] * factor, geometry.crop[1] * factor
    return up.crop((left, top, left + geometry.size[1], top + geometry.size[0]))


def infotext_fields(hires: Hires, first_steps: int) -> tuple[tuple[str, str], ...]:
    """The web UI's hires entries of the infotext."""
    fields = [("Hires upscale", f"{hires.scale:g}")] if not (hires.width or hires.height) else []
    if hires.width or hires.height:
        fields.append(("Hires resize", f"{hires.width}x{hires.height}"))
    if hires.steps is not None and hires.steps != first_steps:
        fields.append(("Hires steps", str(hires.steps)))
    fields.append(("Hires upscaler", hires.upscaler))
    if hires.sampler is not None:
        fields.append(("Hires sampler", sampler_label(hires.sampler, {})))
    if hires.prompt is not None:
        fields.append(("Hires prompt", hires.prompt))
    if hires.negative_prompt is not None:
        fields.append(("Hires negative prompt", hires.negative_prompt))
    return tuple(fields)
