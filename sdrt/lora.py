"""Fusing LoRAs into the text encoders and UNet torch modules (LoRA: Hu et al. 2021, arXiv:2106.09685).

For each adapted Linear or Conv layer W' = W + sum_k weight_k * (alpha_k / rank_k) * up_k @ down_k
(for a conv, the 1x1 `up` applied after the k x k `down`: LoCon): several LoRAs add up. diffusers
reads the file with the family's loader (kohya/A1111 `lora_unet_...` / `lora_te_...` / SDXL's
`lora_te1_` / `lora_te2_` keys with `.alpha`, SDXL's sgm-named blocks, diffusers' and peft's
`unet.` / `text_encoder.` keys) and peft injects and merges the layers, so every format diffusers
reads is read here the same way; LyCORIS LoHa, LoKr and DoRA files, which diffusers cannot load
exactly, are refused naming the format.

diffusers skips LoRA keys that match no module with only a log line; sdrt counts the layers in the
file and the layers injected, part by part, and refuses a file that does not fit the model.
`LoraFuser` restores the base weights bit for bit afterwards (a copy, not an "unfuse", which would
leave rounding residue), so fusing A, then B, then A again gives exactly A's weights.
`fuse_into_part` fuses into one part alone, as the exporter loads them (`sdrt export --lora`).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

ADAPTER = "sdrt_lora"
SD_LOADER = "StableDiffusionLoraLoaderMixin"  # diffusers' LoRA loader for SD 1.x/2.x; SDXL's is the XL one
# LyCORIS kinds diffusers and peft cannot load from these files, by a key only they have
_UNSUPPORTED = {
    "hada_w1_a": "LyCORIS LoHa",
    "lokr_w1": "LyCORIS LoKr",
    "oft_blocks": "LyCORIS OFT",
    "lora_mid": "LyCORIS LoCon with CP decomposition (lora_mid)",
    "dora_scale": "DoRA (diffusers drops its magnitudes)",
    ".diff": "LyCORIS full (diff)",
}
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


LoraSet = Sequence[tuple[os.PathLike | str, float]]  # (file, weight) per LoRA; their deltas add up


def as_lora_set(lora: str | os.PathLike | LoraSet | None, scale: float = 1.0) -> list[tuple[Path, float]]:
    """One LoRA file and its scale, none, or already a set of (file, weight), as a list of (path, weight)."""
    if lora is None:
        return []
    if isinstance(lora, (str, os.PathLike)):
        return [(Path(lora), float(scale))]
    return [(Path(path), float(weight)) for path, weight in lora]


@dataclass(frozen=True)
class LoraFile:
    """A LoRA file read and converted to diffusers' naming, with how many layers it adapts in each part."""

    path: Path
    state: Mapping[str, torch.Tensor]  # diffusers-named: "unet....", "text_encoder....", "text_encoder_2...."
    alphas: Mapping[str, float] | None
    layers: Mapping[str, int]  # part -> adapted layers


def prepare_lora(path: str | os.PathLike, loader: str = SD_LOADER, unet_config: Mapping | None = None) -> LoraFile:
    """Read a LoRA file with the family's diffusers loader; ValueError for formats diffusers cannot load exactly."""
    import diffusers.loaders

    raw = read_lora(path)
    for marker, kind in _UNSUPPORTED.items():
        if any(marker in key for key in raw):
            raise ValueError(
                f"LoRA file {path} is a {kind} network; sdrt fuses what diffusers and peft load exactly: kohya and "
                "diffusers/peft LoRA and LoCon"
            )
    expected = lora_layer_count(raw)
    if expected == 0:
        raise ValueError(
            f"LoRA file {path} holds no LoRA layers that sdrt reads (kohya, diffusers or peft LoRA keys; "
            "LoHa, LoKr and other LyCORIS kinds are not supported)"
        )
    from diffusers.configuration_utils import FrozenDict

    # the UNet's config maps SDXL's sgm block names (input_blocks.4.1) to diffusers' (down_blocks.1.attentions.0)
    kwargs = {"unet_config": FrozenDict(unet_config)} if unet_config is not None else {}
    try:
        state, alphas = getattr(diffusers.loaders, loader).lora_state_dict(dict(raw), **kwargs)
    except (KeyError, RuntimeError, ValueError) as exc:
        raise ValueError(f"LoRA file {path} cannot be read: {exc}") from exc
    layers: dict[str, int] = {}
    for key in state:
        if _DOWN_KEY.search(key):
            part = key.split(".", 1)[0]
            layers[part] = layers.get(part, 0) + 1
    if sum(layers.values()) != expected:
        raise ValueError(
            f"LoRA file {path} adapts {expected} layers, but diffusers reads {sum(layers.values())} of them "
            "(is it for another model family?)"
        )
    return LoraFile(Path(path), state, alphas, layers)


def fuse_into_part(
    part: str, module: nn.Module, loras: Sequence[tuple[LoraFile, float]], loader: str = SD_LOADER
) -> int:
    """Fuse every LoRA's layers for `part` ("unet", "text_encoder", "text_encoder_2") into `module`, weighted.

    Returns the layers fused; ValueError when a LoRA's layers for this part do not all match the module.
    The module keeps plain layers holding the fused weights (peft's wrappers are removed).
    """
    import diffusers.loaders
    from diffusers.loaders.lora_base import fuse_text_encoder_lora, set_adapters_for_text_encoder

    mixin = getattr(diffusers.loaders, loader)
    names, weights, fused = [], [], 0
    try:
        for i, (lora, weight) in enumerate(loras):
            expected = lora.layers.get(part, 0)
            if expected == 0:
                continue
            name = f"{ADAPTER}_{i}"
            try:
                if part == "unet":
                    mixin.load_lora_into_unet(dict(lora.state), lora.alphas, module, adapter_name=name)
                else:
                    mixin.load_lora_into_text_encoder(
                        dict(lora.state), lora.alphas, module, prefix=part, adapter_name=name
                    )
            except (KeyError, RuntimeError, ValueError) as exc:
                raise ValueError(f"LoRA file {lora.path} does not fit this model's {part}: {exc}") from exc
            injected = _adapted_layers(module, name)
            if injected != expected:
                raise ValueError(
                    f"LoRA file {lora.path} adapts {expected} layers of the {part}, but only {injected} match a "
                    "layer of this model (is it for another model family, e.g. SDXL?)"
                )
            names.append(name)
            weights.append(weight)
            fused += expected
        if names:
            if part == "unet":
                module.set_adapters(names, weights)
                module.fuse_lora(adapter_names=names)
            else:
                set_adapters_for_text_encoder(names, module, weights)
                fuse_text_encoder_lora(module, adapter_names=names)
    finally:
        _unload(part, module)  # plain modules again, holding the fused weights under their own names
    return fused


def _adapted_layers(module: nn.Module, adapter: str) -> int:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return sum(1 for m in module.modules() if isinstance(m, BaseTunerLayer) and adapter in getattr(m, "lora_A", {}))


def _unload(part: str, module: nn.Module) -> None:
    """Remove peft's wrappers, keeping whatever weights they merged."""
    from diffusers.loaders.lora_base import _remove_text_encoder_monkey_patch

    if part == "unet":
        module.unload_lora()
    else:
        _remove_text_encoder_monkey_patch(module)  # what diffusers' own unloading calls


class LoraFuser:
    """Fuses sets of LoRAs into a model's text encoders and UNet in place, restoring their base weights exactly."""

    def __init__(self, modules: Mapping[str, nn.Module], loader: str = SD_LOADER) -> None:
        self.modules = dict(modules)  # part ("unet", "text_encoder", "text_encoder_2") -> its module
        self.loader = loader
        unet = self.modules.get("unet")
        self._unet_config = dict(unet.config) if unet is not None and hasattr(unet, "config") else None
        # the base weights, copied once; restoring copies them back (fusing then unfusing would not be exact)
        self._base = {
            part: {name: p.detach().clone() for name, p in module.named_parameters()}
            for part, module in self.modules.items()
        }
        self._files: dict[tuple[Path, int, int], LoraFile] = {}  # read once per file version

    @contextmanager
    def fused(self, lora: str | os.PathLike | LoraSet | None, scale: float = 1.0) -> Iterator[dict[str, set[str]]]:
        """Fuse a LoRA (or a set of (file, weight); None: none); yield {part: changed parameter names}.

        On exit, successful or not, every weight is back to its base value.
        """
        try:
            self._fuse(as_lora_set(lora, scale))
            yield self._changed()
        finally:
            self._restore()

    def set(self, lora: str | os.PathLike | LoraSet | None, scale: float = 1.0) -> dict[str, set[str]]:
        """Leave a LoRA (or a set of (file, weight); None: the base weights) fused in; return the changed names.

        A failed fuse leaves the base weights in place.
        """
        self._restore()
        try:
            self._fuse(as_lora_set(lora, scale))
        except BaseException:
            self._restore()
            raise
        return self._changed()

    def read(self, path: Path) -> LoraFile:
        """A LoRA file prepared for fusing, cached per file version."""
        stat = path.stat() if path.is_file() else None
        key = (path.resolve(), stat.st_mtime_ns if stat else 0, stat.st_size if stat else 0)
        if key not in self._files:
            self._files[key] = prepare_lora(path, self.loader, self._unet_config)
        return self._files[key]

    def _fuse(self, loras: Sequence[tuple[Path, float]]) -> None:
        if not loras:
            return
        try:
            import peft  # noqa: F401 (diffusers reads LoRA files with it)
        except ImportError as exc:
            raise ValueError(
                f"LoRA needs peft, which diffusers reads LoRA files with: pip install 'sdrt[lora]' ({exc})"
            ) from exc
        files = [(self.read(path), weight) for path, weight in loras]
        for lora, _ in files:
            unknown = sorted(set(lora.layers) - set(self.modules))
            if unknown:
                raise ValueError(f"LoRA file {lora.path} adapts {', '.join(unknown)}, which this model does not have")
        with torch.no_grad():
            for part, module in self.modules.items():
                fuse_into_part(part, module, files, self.loader)
        log.info("fused LoRAs %s", ", ".join(f"{p.name} x {w:g}" for p, w in loras))

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
