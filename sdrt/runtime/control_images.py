"""A ControlNet unit's map at the output size, as the tensor its ControlNet reads: RGB in [0, 1], (1, 3, H, W).

"resize" is diffusers' `prepare_image` (its VaeImageProcessor stretches the map to height x width, Lanczos); "crop"
scales the map to cover the output and cuts the middle out; "fill" scales it to fit inside and fills the rest with
the median colour of the map's border, as the web UI ControlNet extension does (which also resamples maps of few
colours differently; sdrt resamples every map as diffusers does). The inpaint preprocessor's map carries its mask
as alpha: masked pixels become -1, as the extension and diffusers' ControlNet inpaint examples make them.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

_LANCZOS = Image.Resampling.LANCZOS


def fitted(hint: Image.Image, height: int, width: int, resize_mode: str) -> Image.Image:
    """The map at width x height under a resize mode (alpha, an inpaint mask, resampled nearest)."""
    if resize_mode == "resize" or hint.size == (width, height):
        return _resized(hint, width, height)
    k_h, k_w = height / hint.height, width / hint.width
    if resize_mode == "crop":
        k = max(k_h, k_w)
        scaled = _resized(hint, round(hint.width * k), round(hint.height * k))
        top, left = max(0, (scaled.height - height) // 2), max(0, (scaled.width - width) // 2)
        return scaled.crop((left, top, left + width, top + height))
    if resize_mode != "fill":
        raise ValueError(f"resize_mode {resize_mode!r} is not one of resize, crop, fill")
    k = min(k_h, k_w)
    pixels = np.asarray(hint)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]], axis=0)
    colour = np.median(border, axis=0).astype(np.uint8)
    if hint.mode == "RGBA":
        colour[3] = 255  # the fill is masked: the inpaint ControlNet repaints it
    canvas = Image.fromarray(np.tile(colour[None, None], (height, width, 1)), hint.mode)
    scaled = _resized(hint, round(hint.width * k), round(hint.height * k))
    canvas.paste(scaled, (max(0, (width - scaled.width) // 2), max(0, (height - scaled.height) // 2)))
    return canvas


def _resized(hint: Image.Image, width: int, height: int) -> Image.Image:
    if hint.size == (width, height):
        return hint
    if hint.mode == "RGBA":  # the inpaint map: colour resampled as any map, the mask kept binary
        rgb = hint.convert("RGB").resize((width, height), _LANCZOS)
        alpha = hint.getchannel("A").resize((width, height), Image.Resampling.NEAREST)
        rgb.putalpha(alpha)
        return rgb
    return hint.convert("RGB").resize((width, height), _LANCZOS)


def hint_tensor(hint: Image.Image, height: int, width: int, resize_mode: str = "resize") -> torch.Tensor:
    """(1, 3, height, width) float32: the map as a ControlNet reads it."""
    image = fitted(hint, height, width, resize_mode)
    if image.mode == "RGBA":
        pixels = np.asarray(image).astype(np.float32) / 255.0
        rgb, masked = pixels[:, :, :3], (pixels[:, :, 3:] > 0.5).astype(np.float32)
        out = rgb * (1.0 - masked) - masked
        return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))[None]
    from diffusers.image_processor import VaeImageProcessor

    processor = VaeImageProcessor(do_convert_rgb=True, do_normalize=False)  # diffusers' control_image_processor
    return processor.preprocess(image, height=height, width=width).to(torch.float32)
