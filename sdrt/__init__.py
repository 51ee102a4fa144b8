"""sdrt: an optimized Stable Diffusion inference runtime."""

__version__ = "0.1.0"

from sdrt.runtime.control import Control  # noqa: E402
from sdrt.runtime.hires import Hires  # noqa: E402
from sdrt.runtime.pipeline import GenerationResult, Pipeline  # noqa: E402

__all__ = ["Control", "GenerationResult", "Hires", "Pipeline", "__version__"]
