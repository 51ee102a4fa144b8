"""GAN upscalers (ESRGAN, Real-ESRGAN compact, SwinIR): their files, networks, artifacts and tiled runs."""

from sdrt.upscalers.models import UpscalerModel, load_upscaler, read_weights
from sdrt.upscalers.network import DEFAULT_RANGES, UpscalerArtifact, upscaler_spec
from sdrt.upscalers.upscaler import Tiling, Upscaler, to_image, to_tensor

__all__ = [
    "DEFAULT_RANGES",
    "Tiling",
    "Upscaler",
    "UpscalerArtifact",
    "UpscalerModel",
    "load_upscaler",
    "read_weights",
    "to_image",
    "to_tensor",
    "upscaler_spec",
]
