"""Images for the upscaler tests (the upscaler files are the session's: tests/conftest.py `upscaler_dir`)."""

from __future__ import annotations

import torch

from tests.conftest import UPSCALER_FILES as FILES  # noqa: F401  (the tests name files by these keys)


def smooth_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """(1, 3, H, W) in [0, 1]: random colours bicubically enlarged, so an image has shapes, not noise."""
    small = torch.rand(1, 3, max(2, height // 8), max(2, width // 8), generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(small, size=(height, width), mode="bicubic", align_corners=False).clamp(0, 1)
