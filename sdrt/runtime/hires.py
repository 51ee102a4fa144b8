"""The web UI's hires fix: generate at a first size, upscale, then denoise again at the target size (img2img).

Latent upscalers interpolate the first pass's latents (torch's `interpolate`, with the web UI's modes); image
upscalers decode them, resize the image and encode it again: with PIL (Lanczos, Nearest), or with a GAN upscaler
(ESRGAN, Real-ESRGAN, SwinIR) named by its file's stem in the pipeline's upscaler directory (`sdrt.upscalers`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image

from sdrt.excerpt import check_text, excerpt
from sdrt.lazy import deferred
from sdrt.params import Param, check_declared, declare, declared
from sdrt.schedulers import check_sampler, sampler_label

if TYPE_CHECKING:
    import torch
    import torch.nn.functional as F

    from sdrt.upscalers.library import UpscalerLibrary
else:
    torch = deferred("torch")
    F = deferred("torch.nn.functional")

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
    Each field is a request parameter (`sdrt generate --hires-scale 2`, the native API's `hires` object).
    """

    scale: float = declare(
        2.0, "float", "upscale factor of the hires fix", minimum=1.0, maximum=MAX_HIRES_SCALE, webui="hr_scale"
    )
    width: int = declare(0, "int", "target width in pixels (0: from the scale, or from height)", webui="hr_resize_x")
    height: int = declare(0, "int", "target height in pixels (0: from the scale, or from width)", webui="hr_resize_y")
    upscaler: str = declare(
        "Latent",
        "str",
        "Latent, Latent (nearest), Latent (bicubic), ..., Lanczos, Nearest, or a GAN upscaler file's stem",
        webui="hr_upscaler",
    )
    steps: int | None = declare(
        None, "int", "second-pass steps (default: the first pass's)", minimum=1, webui="hr_second_pass_steps"
    )
    strength: float = declare(
        0.7, "float", "second-pass denoising strength; 0 upscales only", minimum=0.0, maximum=1.0,
        webui="denoising_strength",
    )  # fmt: skip
    prompt: str | None = declare(None, "str", "second-pass prompt for every image (default: each image's own)")
    negative_prompt: str | None = declare(None, "str", "second-pass negative prompt (default: each image's own)")
    sampler: str | None = declare(None, "str", "second-pass sampler (default: the first pass's)")

    def __post_init__(self) -> None:
        for name in ("width", "height"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"hires {name} {excerpt(value)} is not a size in pixels (0: from the scale)")
        if self.steps is not None and (
            isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1
        ):
            raise ValueError(f"hires steps {excerpt(self.steps)} is not a positive integer (None: the first pass's)")
        check_declared(self, prefix="hires ")
        if not isinstance(self.upscaler, str) or not self.upscaler.strip():
            raise ValueError(f"hires upscaler {excerpt(self.upscaler)} is not an upscaler's name")
        for name in ("prompt", "negative_prompt"):
            text = getattr(self, name)
            if text is not None:
                check_text(f"hires {name}", text)
        check_sampler(self.sampler)

    @property
    def latent(self) -> bool:
        """True when the latents are interpolated; False when the decoded image is resized."""
        return self.upscaler in LATENT_UPSCALERS

    def check_upscaler(self, upscalers: UpscalerLibrary | None) -> None:
        """ValueError unless the upscaler is one sdrt has or a file of `upscalers` (the pipeline's directory)."""
        if self.upscaler in LATENT_UPSCALERS or self.upscaler in IMAGE_UPSCALERS:
            return
        files = [] if upscalers is None else upscalers.names()
        if self.upscaler in files:
            return
        hint = (
            "GAN upscalers are the files of the upscaler directory, by name"
            if upscalers is not None
            else "GAN upscalers (ESRGAN, ...) need an upscaler directory (--upscaler-dir)"
        )
        served = ", ".join([*LATENT_UPSCALERS, *IMAGE_UPSCALERS, *files])
        raise ValueError(f"hires upscaler {excerpt(self.upscaler)} is not served here; served: {served} ({hint})")

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


PARAMS = (
    Param(
        "hires",
        "object",
        "the web UI's hires fix: upscale the first pass's images, then denoise again at that size "
        "(give any --hires-* flag to turn it on)",
        owner="hires",
        fields=declared(Hires, owner="hires"),
        make=Hires,
        webui="hr_scale",
    ),
)


def upscale_latents(latents: torch.Tensor, hires: Hires, geometry: HiresGeometry, factor: int) -> torch.Tensor:
    """First-pass latents (N, C, h, w) interpolated with the upscaler's mode and cropped to the target."""
    mode, antialias = LATENT_UPSCALERS[hires.upscaler]
    size = (geometry.upscaled[0] // factor, geometry.upscaled[1] // factor)
    up = F.interpolate(latents, size=size, mode=mode, antialias=antialias)
    top, left = geometry.crop
    rows, cols = geometry.size[0] // factor, geometry.size[1] // factor
    return up[:, :, top : top + rows, left : left + cols]


def upscale_image(
    image: Image.Image,
    hires: Hires,
    geometry: HiresGeometry,
    factor: int,
    upscalers: UpscalerLibrary | None = None,
) -> Image.Image:
    """A decoded first-pass image resized with the upscaler (a PIL filter, or a GAN upscaler of `upscalers` as the
    web UI resizes with one) and cropped to the target."""
    size = (geometry.upscaled[1], geometry.upscaled[0])
    if hires.upscaler in IMAGE_UPSCALERS:
        up = image.resize(size, IMAGE_UPSCALERS[hires.upscaler])
    else:
        hires.check_upscaler(upscalers)  # a file of the library: check_upscaler refuses a name without one
        up = upscalers.get(hires.upscaler).resize(image, *size)  # type: ignore[union-attr]
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
