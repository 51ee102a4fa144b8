"""GAN upscaler files as users have them: read as data, their architecture and hyperparameters detected from the
weights' keys and shapes, and the torch module built for them.

`.safetensors` files are read as they are; `.pth`/`.pt` pickles (how most upscalers are distributed) only
through torch's weights-only unpickler, which refuses anything that would run code.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from sdrt.upscalers import compact, esrgan, swinir
from sdrt.weights_io import load_pickle_weights_only

# checked in this order: SwinIR's and ESRGAN's keys are specific, Compact's `body.0` is generic
ARCHITECTURES: tuple[ModuleType, ...] = (swinir, esrgan, compact)
BUILDERS = {
    swinir.ARCHITECTURE: swinir.SwinIR,
    esrgan.ARCHITECTURE: esrgan.RRDBNet,
    compact.ARCHITECTURE: compact.SRVGGNetCompact,
}
SUFFIXES = (".safetensors", ".pth", ".pt")
# containers some trainers save the weights under (BasicSR: params_ema is the EMA generator, the one to use)
_WRAPPERS = ("params_ema", "params", "state_dict", "model", "net_g")

Config = esrgan.EsrganConfig | compact.CompactConfig | swinir.SwinIRConfig


@dataclass(frozen=True)
class UpscalerModel:
    """One upscaler file, detected: where it is, what it is, and its canonical weights."""

    name: str  # the file's stem: how the web UI lists and names it
    path: Path  # the file
    architecture: str  # "ESRGAN", "Compact" or "SwinIR"
    config: Config  # hyperparameters read from the weights
    state: Mapping[str, torch.Tensor]  # float32 weights under the module's own names

    @property
    def scale(self) -> int:
        """Output pixels per input pixel along each axis."""
        return self.config.scale

    @property
    def multiple(self) -> int:
        """Input heights and widths the network takes are multiples of this."""
        return self.config.multiple

    def describe(self) -> str:
        return f"{self.architecture} x{self.scale} ({self.config.describe()})"

    def module(self) -> nn.Module:
        """The network in eval mode with this file's weights (every weight used, none missing)."""
        module = BUILDERS[self.architecture](self.config)
        missing, unexpected = module.load_state_dict(self.state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"upscaler {self.path.name}: its weights do not fit a {self.describe()}: "
                f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
            )
        return module.eval()


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A file's tensors by name: safetensors, or a pickle through the weights-only loader; ValueError naming it."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"upscaler file {file} does not exist")
    suffix = file.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            data: Any = load_file(str(file))
        except (SafetensorError, OSError) as exc:
            raise ValueError(f"{file.name} is not a readable safetensors file ({exc})") from exc
    elif suffix in (".pth", ".pt"):
        data = load_pickle_weights_only(file)
    else:
        raise ValueError(f"{file.name}: upscaler files are {', '.join(SUFFIXES)}, not {suffix or 'without a suffix'}")
    for key in _WRAPPERS:
        if isinstance(data, Mapping) and isinstance(data.get(key), Mapping):
            data = data[key]
            break
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ValueError(f"{file.name} holds no state dict of tensors (a whole pickled model is not read)")
    return {str(k): v for k, v in data.items()}


def detect(state: Mapping[str, torch.Tensor], name: str = "weights") -> tuple[str, Config, dict[str, torch.Tensor]]:
    """(architecture, hyperparameters, canonical float32 weights) of an upscaler's tensors; ValueError if unknown."""
    for arch in ARCHITECTURES:
        if arch.claims(state):
            try:
                canonical = {k: v.float() for k, v in arch.canonical(state).items()}
                config = arch.config_of(canonical)
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(f"{name}: {arch.ARCHITECTURE} weights sdrt cannot read: {exc}") from exc
            if config.channels != 3:
                raise ValueError(f"{name}: a {config.channels}-channel {arch.ARCHITECTURE} model; sdrt upscales RGB")
            return arch.ARCHITECTURE, config, canonical
    sample = ", ".join(sorted(state)[:6])
    known = ", ".join(a.ARCHITECTURE for a in ARCHITECTURES)
    raise ValueError(f"{name} is no upscaler architecture sdrt knows ({known}); its keys begin {sample}")


def load_upscaler(path: str | os.PathLike) -> UpscalerModel:
    """Read and detect an upscaler file."""
    file = Path(path)
    architecture, config, state = detect(read_weights(file), file.name)
    return UpscalerModel(file.stem, file, architecture, config, state)
