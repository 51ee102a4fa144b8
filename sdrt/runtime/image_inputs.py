"""Input images and masks for image-to-image and inpainting: reading, checking, and preprocessing as diffusers does."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, UnidentifiedImageError

from sdrt.lazy import deferred

if TYPE_CHECKING:
    import torch
else:
    torch = deferred("torch")

ImageInput = Image.Image | str | os.PathLike | bytes

# Decompression-bomb guard: no input needs more pixels than a 4096 x 4096 image.
MAX_INPUT_PIXELS = 4096 * 4096


def open_image(value: ImageInput, field: str) -> Image.Image:
    """A PIL image from an image, a file path or encoded bytes; ValueError naming `field` if it cannot be read."""
    if isinstance(value, Image.Image):
        image = value
    else:
        if isinstance(value, bytes):
            source: io.BytesIO | Path = io.BytesIO(value)
            name = f"{len(value)} bytes"
        elif isinstance(value, (str, os.PathLike)):
            source = Path(value)
            name = str(source)
            if not source.is_file():
                raise ValueError(f"{field} {name} does not exist or is not a file")
        else:
            raise ValueError(f"{field} must be a PIL image, a file path or image bytes, got {type(value).__name__}")
        try:
            image = Image.open(source)
            if image.width * image.height > MAX_INPUT_PIXELS:
                raise ValueError(
                    f"{field} {name} is {image.width}x{image.height}, over the {MAX_INPUT_PIXELS} pixels allowed"
                )
            image.load()
        except UnidentifiedImageError as exc:  # its message shows the reader's repr, "<_io.BytesIO object at 0x..>"
            raise ValueError(
                f"{field} {name} cannot be read as an image: no format PIL reads (PNG, JPEG, ...)"
            ) from exc
        except (OSError, Image.DecompressionBombError) as exc:
            raise ValueError(f"{field} {name} cannot be read as an image: {exc}") from exc
    if image.width < 1 or image.height < 1:
        raise ValueError(f"{field} is empty ({image.width}x{image.height})")
    return image


def size_from_image(image: Image.Image, factor: int) -> tuple[int, int]:
    """(height, width) of `image` rounded down to multiples of `factor`, as diffusers' image processor does."""
    return image.height - image.height % factor, image.width - image.width % factor


def check_mask_matches(image: Image.Image, mask: Image.Image) -> None:
    """A mask must cover the image it masks: same size in pixels."""
    if image.size != mask.size:
        raise ValueError(
            f"mask_image is {mask.width}x{mask.height} but image is {image.width}x{image.height}; "
            "give a mask of the image's size"
        )


def preprocess_image(image: Image.Image, height: int, width: int, factor: int) -> torch.Tensor:
    """(1, 3, height, width) float32 in [-1, 1], resized as diffusers' VaeImageProcessor does."""
    from diffusers.image_processor import VaeImageProcessor

    return VaeImageProcessor(vae_scale_factor=factor).preprocess(image.convert("RGB"), height=height, width=width)


def preprocess_mask(mask: Image.Image, height: int, width: int, factor: int) -> torch.Tensor:
    """(1, 1, height, width) float32 of 0 (keep) and 1 (repaint): grayscale, resized, binarized at 0.5, as diffusers."""
    from diffusers.image_processor import VaeImageProcessor

    processor = VaeImageProcessor(
        vae_scale_factor=factor, do_normalize=False, do_binarize=True, do_convert_grayscale=True
    )
    return processor.preprocess(mask, height=height, width=width)
