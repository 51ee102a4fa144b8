"""Shared settings and the image comparison of the parity tests against diffusers."""

from __future__ import annotations

import numpy as np

# 8-bit pixels: the bound. torch and onnxruntime differ from diffusers only in float rounding.
MAX_PIXEL_DIFF = 2
HEIGHT, WIDTH = 72, 104  # non-square, and latents (9x13) not divisible by the UNet's 8x downsampling
STEPS = 6


def assert_images_close(ours, theirs, bound: int = MAX_PIXEL_DIFF, size: tuple[int, int] = (HEIGHT, WIDTH)) -> None:
    """Every 8-bit pixel of every image within `bound`; references must not be flat (a flat pair proves little)."""
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        a, b = np.asarray(a, dtype=np.int16), np.asarray(b, dtype=np.int16)
        assert a.shape == b.shape == (*size, 3)
        assert b.std() > 10, "reference image is nearly flat: the comparison would prove little"
        diff = np.abs(a - b).max()
        assert diff <= bound, f"max 8-bit difference {diff} > {bound}"
