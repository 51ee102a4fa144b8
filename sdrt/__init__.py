"""sdrt: an optimized Stable Diffusion inference runtime."""

__version__ = "0.1.0"

from sdrt.runtime.pipeline import GenerationResult, Pipeline  # noqa: E402

__all__ = ["GenerationResult", "Pipeline", "__version__"]
