"""Tiny random upscaler files of every architecture, and their torch references."""

from __future__ import annotations

import pytest
import torch

from sdrt.demo.upscalers import write_upscaler

# (architecture, layout, scale, suffix): every layout and format the tests read
FILES = {
    "esrgan-original": ("ESRGAN", "original", 4, ".pth"),
    "esrgan-bsrgan": ("ESRGAN", "bsrgan", 4, ".safetensors"),
    "realesrgan-x4plus": ("ESRGAN", "realesrgan", 4, ".pth"),
    "realesrgan-x2plus": ("ESRGAN", "realesrgan", 2, ".safetensors"),
    "compact-x4": ("Compact", "realesrgan", 4, ".pth"),
    "swinir-x4": ("SwinIR", "swinir", 4, ".pth"),
    "swinir-x2": ("SwinIR", "swinir", 2, ".safetensors"),
}


@pytest.fixture(scope="session")
def upscaler_dir(tmp_path_factory):
    """A directory of one tiny file per entry of FILES, named by its key."""
    directory = tmp_path_factory.mktemp("upscalers")
    for i, (name, (architecture, layout, scale, suffix)) in enumerate(FILES.items()):
        write_upscaler(directory / f"{name}{suffix}", architecture, layout, scale=scale, seed=i)
    return directory


def smooth_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """(1, 3, H, W) in [0, 1]: random colours bicubically enlarged, so an image has shapes, not noise."""
    small = torch.rand(1, 3, max(2, height // 8), max(2, width // 8), generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(small, size=(height, width), mode="bicubic", align_corners=False).clamp(0, 1)
