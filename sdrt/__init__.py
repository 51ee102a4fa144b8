"""sdrt: an optimized Stable Diffusion inference runtime."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sdrt.lazy import lazy_names

__version__ = "0.1.0"

if TYPE_CHECKING:
    from sdrt.runtime.control import Control
    from sdrt.runtime.deep_cache import DeepCache
    from sdrt.runtime.hires import Hires
    from sdrt.runtime.pipeline import GenerationResult, Pipeline

# imported on first use: they import torch, which `sdrt --help` and `sdrt info` do without
__getattr__ = lazy_names(
    __name__,
    {
        "Control": "sdrt.runtime.control",
        "DeepCache": "sdrt.runtime.deep_cache",
        "GenerationResult": "sdrt.runtime.pipeline",
        "Hires": "sdrt.runtime.hires",
        "Pipeline": "sdrt.runtime.pipeline",
    },
)

__all__ = ["Control", "DeepCache", "GenerationResult", "Hires", "Pipeline", "__version__"]
