"""A guard on the VAE decoder: NaN or Inf in its output means an fp16 overflow, never an image to return.

An fp16 VAE decoder can overflow (SDXL's does; SD 1.x/2.x VAEs are fine in practice); the overflow
turns into NaN, which 8-bit conversion would silently make a black image. The guard checks the
decoder's output and, on the first non-finite value, decodes again with a float32 decoder and keeps
using that one. Only NaN/Inf is a signal: a flat or black image can be what the prompt asked for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import torch

from sdrt.engines import Engine

log = logging.getLogger(__name__)

# a float32 decoder, or a function making one when first needed (building it may cost memory and time)
Fallback = Engine | Callable[[], Engine]


class NonFiniteOutputError(ValueError):
    """An engine produced NaN or Inf and nothing could recompute it in float32.

    A ValueError, so the CLI reports it as an error with its message rather than a traceback.
    """


class VaeDecoderGuard:
    """The VAE decoder engine, checked for NaN/Inf, with a float32 fallback; speaks the engine protocol."""

    def __init__(self, decoder: Engine, fallback: Fallback | None = None) -> None:
        self.decoder = decoder
        self.spec = decoder.spec
        self.ranges = decoder.ranges
        self.device = decoder.device
        self._fallback = fallback
        self._fallback_engine: Engine | None = None
        self.fell_back = False  # True once the decoder produced a non-finite value; the fallback decodes since

    def __call__(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        for name, tensor in feeds.items():
            if not _finite(tensor):
                raise NonFiniteOutputError(
                    f"the VAE decoder's input {name} holds NaN or Inf: the denoising loop overflowed before "
                    "decoding (an fp16 UNet or text encoder?); re-export with --precision fp32 or use a float32 backend"
                )
        if not self.fell_back:
            outputs = self.decoder(feeds)
            if all(_finite(t) for t in outputs.values()):
                return outputs
            fallback = self._fallback_decoder()
            if fallback is None:
                raise NonFiniteOutputError(
                    f"the VAE decoder ({self.spec.attributes.get('precision', 'fp32')}) produced NaN or Inf and no "
                    "float32 decoder is available to recompute it; re-export with --vae-precision fp32"
                )
            log.warning("the VAE decoder produced NaN or Inf (an fp16 overflow); decoding in float32 from now on")
            self.fell_back = True
        outputs = self._fallback_decoder()(feeds)
        if not all(_finite(t) for t in outputs.values()):
            raise NonFiniteOutputError("the float32 VAE decoder produced NaN or Inf too; the latents are unusable")
        return outputs

    def _fallback_decoder(self) -> Engine | None:
        if self._fallback_engine is None and self._fallback is not None:
            fallback = self._fallback
            self._fallback_engine = fallback if isinstance(fallback, Engine) else fallback()
        return self._fallback_engine


def _finite(tensor: torch.Tensor) -> bool:
    return bool(torch.isfinite(tensor).all())
