"""Fusing a LoRA into the text encoder and UNet torch modules (LoRA: Hu et al. 2021, arXiv:2106.09685).

For each adapted Linear or Conv layer W' = W + scale * (alpha / rank) * up @ down (for a conv, the
1x1 `up` applied after the k x k `down`). diffusers reads the file (kohya/A1111 `lora_unet_...` /
`lora_te_...` keys with `.alpha`, diffusers' and peft's `unet.` / `text_encoder.` keys) and peft
injects and merges the layers, so every format diffusers reads is read here the same way.

diffusers skips LoRA keys that match no module with only a log line; `LoraFuser` counts the layers
in the file and the layers injected and refuses a file that does not fit the model. It restores
the base weights bit for bit afterwards (a copy, not an "unfuse", which would leave rounding
residue), so fusing A, then B, then A again gives exactly A's weights.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

ADAPTER = "sdrt_lora"
# one key per adapted layer: its down (A) matrix, in every naming diffusers reads
_DOWN_KEY = re.compile(r"(?:lora_down|lora_A|lora[._]down|lora_linear_layer\.down)(?:\.[A-Za-z0-9_]+)?\.weight$")


def read_lora(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a LoRA safetensors file; ValueError for another format or a missing file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    file = Path(path)
    if not file.is_file():
        raise ValueError(f"LoRA file {file} does not exist")
    if file.suffix != ".safetensors":
        raise ValueError(f"LoRA file {file} is not a .safetensors file; sdrt does not load pickled weights")
    try:
        return load_file(str(file))
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"LoRA file {file} cannot be read as safetensors: {exc}") from exc


def lora_layer_count(state: dict[str, torch.Tensor]) -> int:
    """How many layers a LoRA state dict adapts (one down matrix per layer)."""
    return sum(1 for key in state if _DOWN_KEY.search(key))


class LoraFuser:
    """Fuses LoRAs into a text encoder and a UNet in place, restoring their base weights exactly afterwards."""

    def __init__(self, text_encoder: nn.Module, unet: nn.Module) -> None:
        self.modules = {"text_encoder": text_encoder, "unet": unet}
        # the base weights, copied once; restoring copies them back (fusing then unfusing would not be exact)
        self._base = {
            part: {name: p.detach().clone() for name, p in module.named_parameters()}
            for part, module in self.modules.items()
        }

    @contextmanager
    def fused(self, path: str | os.PathLike | None, scale: float = 1.0) -> Iterator[dict[str, set[str]]]:
        """Fuse the LoRA at `path` (None: no LoRA) with `scale`; yield {"text_encoder"|"unet": changed names}.

        On exit, successful or not, every weight is back to its base value.
        """
        try:
            if path is not None:
                self._fuse(path, scale)
            yield self._changed()
        finally:
            self._unload()
            self._restore()

    def set(self, path: str | os.PathLike | None, scale: float = 1.0) -> dict[str, set[str]]:
        """Leave the LoRA at `path` fused in at `scale` (None: the base weights); return the changed names.

        A failed fuse leaves the base weights in place.
        """
        self._unload()
        self._restore()
        if path is not None:
            try:
                self._fuse(path, scale)
            except BaseException:
                self._unload()
                self._restore()
                raise
        return self._changed()

    def _fuse(self, path: str | os.PathLike, scale: float) -> None:
        from diffusers.loaders import StableDiffusionLoraLoaderMixin as Loader
        from diffusers.loaders.lora_base import fuse_text_encoder_lora

        try:
            from peft.tuners.tuners_utils import BaseTunerLayer
        except ImportError as exc:
            raise ValueError(
                f"LoRA needs peft, which diffusers reads LoRA files with: pip install 'sdrt[lora]' ({exc})"
            ) from exc

        raw = read_lora(path)
        expected = lora_layer_count(raw)
        if expected == 0:
            raise ValueError(
                f"LoRA file {path} holds no LoRA layers that sdrt reads (kohya, diffusers or peft LoRA keys; "
                "LoHa, LoKr and other LyCORIS kinds are not supported)"
            )
        text_encoder, unet = self.modules["text_encoder"], self.modules["unet"]
        try:
            state, alphas = Loader.lora_state_dict(raw)
            if any(k.startswith("unet.") for k in state):
                Loader.load_lora_into_unet(state, alphas, unet, adapter_name=ADAPTER)
            if any(k.startswith("text_encoder.") for k in state):
                Loader.load_lora_into_text_encoder(state, alphas, text_encoder, adapter_name=ADAPTER)
        except (KeyError, RuntimeError, ValueError) as exc:
            raise ValueError(f"LoRA file {path} does not fit this model: {exc}") from exc
        injected = sum(isinstance(m, BaseTunerLayer) for part in self.modules.values() for m in part.modules())
        if injected != expected:
            raise ValueError(
                f"LoRA file {path} adapts {expected} layers, but only {injected} match a layer of this model "
                "(is it for another model family, e.g. SDXL?)"
            )
        if any(isinstance(m, BaseTunerLayer) for m in unet.modules()):
            unet.fuse_lora(lora_scale=scale, adapter_names=[ADAPTER])
        if any(isinstance(m, BaseTunerLayer) for m in text_encoder.modules()):
            fuse_text_encoder_lora(text_encoder, lora_scale=scale, adapter_names=[ADAPTER])
        self._unload()  # plain modules again, holding the fused weights under their own names
        log.info("fused LoRA %s (%d layers, scale %g)", path, expected, scale)

    def _unload(self) -> None:
        """Remove peft's wrappers, keeping whatever weights they merged (restored right after)."""
        from diffusers.loaders.lora_base import _remove_text_encoder_monkey_patch

        self.modules["unet"].unload_lora()
        _remove_text_encoder_monkey_patch(self.modules["text_encoder"])  # what diffusers' own unloading calls

    def _changed(self) -> dict[str, set[str]]:
        return {
            part: {name for name, p in module.named_parameters() if not torch.equal(p, self._base[part][name])}
            for part, module in self.modules.items()
        }

    def _restore(self) -> None:
        with torch.no_grad():
            for part, module in self.modules.items():
                params = dict(module.named_parameters())
                if set(params) != set(self._base[part]):
                    raise RuntimeError(f"the {part} module's parameters changed names while fusing a LoRA")
                for name, base in self._base[part].items():
                    params[name].copy_(base)
