"""Fusing LoRAs and LyCORIS networks into the text encoders and UNet torch modules (LoRA: Hu et al. 2021,
arXiv:2106.09685).

For each adapted Linear or Conv layer W' = W + sum_k weight_k * ΔW_k: several files add up, each with its own
text-encoder and UNet weights (the web UI's `<lora:name:te:unet>`). Plain LoRA and LoCon files are read as
diffusers reads them (the family's loader: kohya/A1111 `lora_unet_...` / `lora_te_...` / SDXL's `lora_te1_` /
`lora_te2_` keys with `.alpha`, SDXL's sgm-named blocks, diffusers' and peft's `unet.` / `text_encoder.` keys)
and peft merges the layers, ΔW = alpha / rank * up @ down. Files holding LyCORIS kinds diffusers cannot load
(LoHa, LoKr, LoCon's CP form, full weights) are merged by their definitions (`sdrt.lycoris`); DoRA, OFT and
other kinds whose merge needs more are refused naming the kind. Files with non-finite weights are refused.

A file adapts parts (text encoders, UNet); each part of a model it names either fits (every layer it adapts
there matches a layer of the model by name and shape), does not fit at all (skipped: an SDXL base LoRA's UNet
on the refiner), or fits in part (refused: a file for another model). A file that fits no part of a model is
refused, unless the caller lets it pass (it fits another model of the request: the refiner's own LoRA).
`LoraFuser` restores the base weights bit for bit afterwards (a copy, not an "unfuse", which would leave
rounding residue), so fusing A, then B, then A again gives exactly A's weights. `fuse_into_part` fuses into
one part alone, as the exporter loads them (`sdrt export --lora`).
"""

from __future__ import annotations

import logging
import os
import re
import weakref
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from sdrt.lycoris import PART_PREFIXES, LycorisLayer, is_lycoris, kohya_names, read_layers, refused_kind

log = logging.getLogger(__name__)

ADAPTER = "sdrt_lora"
SD_LOADER = "StableDiffusionLoraLoaderMixin"  # diffusers' LoRA loader for SD 1.x/2.x; SDXL's is the XL one
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")
# one key per adapted layer: its down (A) matrix, in every naming diffusers reads
_DOWN_KEY = re.compile(r"(?:lora_down|lora_A|lora[._]down|lora_linear_layer\.down)(?:\.[A-Za-z0-9_]+)?\.weight$")


class LoraUse(NamedTuple):
    """One LoRA file of a set, with its text-encoder and UNet weights."""

    path: Path
    te: float  # weight of its text-encoder layers
    unet: float  # weight of its UNet layers

    def weight(self, part: str) -> float:
        return self.te if part in TEXT_ENCODERS else self.unet


LoraSet = Sequence[tuple]  # (file, weight) or (file, te weight, unet weight) per LoRA; their deltas add up


def as_lora_set(lora: str | os.PathLike | LoraSet | None, scale: float = 1.0) -> list[LoraUse]:
    """One LoRA file and its scale, none, or already a set of (file, weight[, unet weight]), as LoraUses."""
    if lora is None:
        return []
    if isinstance(lora, (str, os.PathLike)):
        return [LoraUse(Path(lora), float(scale), float(scale))]
    uses = []
    for entry in lora:
        path, *weights = entry
        te = float(weights[0]) if weights else 1.0
        uses.append(LoraUse(Path(path), te, float(weights[1]) if len(weights) > 1 else te))
    return uses


def read_lora(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a LoRA safetensors file; ValueError for another format, a missing file or non-finite weights."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    file = Path(path)
    if not file.is_file():
        raise ValueError(f"LoRA file {file} does not exist")
    if file.suffix != ".safetensors":
        raise ValueError(f"LoRA file {file} is not a .safetensors file; sdrt does not load pickled weights")
    try:
        tensors = load_file(str(file))
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"LoRA file {file} cannot be read as safetensors: {exc}") from exc
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(f"LoRA file {file} has non-finite weights (NaN or infinity) in {key}")
    return tensors


def lora_layer_count(state: Mapping[str, torch.Tensor]) -> int:
    """How many layers a LoRA state dict adapts (one down matrix per layer)."""
    return sum(1 for key in state if _DOWN_KEY.search(key))


@dataclass(frozen=True)
class LoraFile:
    """A LoRA file read: diffusers-named for peft to merge, or its LyCORIS layers; how many layers per part."""

    path: Path
    state: Mapping[str, torch.Tensor]  # diffusers-named: "unet....", "text_encoder...." (empty for LyCORIS)
    alphas: Mapping[str, float] | None
    layers: Mapping[str, int]  # part -> adapted layers
    lycoris: Mapping[str, Mapping[str, LycorisLayer]] = field(default_factory=dict)  # part -> kohya name -> layer

    @property
    def kind(self) -> str:
        return "LyCORIS" if self.lycoris else "LoRA"


def prepare_lora(path: str | os.PathLike, loader: str = SD_LOADER, unet_config: Mapping | None = None) -> LoraFile:
    """Read a LoRA or LyCORIS file; ValueError for kinds sdrt cannot merge exactly, or keys no layer has."""
    import diffusers.loaders

    raw = read_lora(path)
    refused = refused_kind(raw)
    if refused is not None:
        raise ValueError(
            f"LoRA file {path} is a {refused} network; sdrt merges LoRA, LoCon, LoHa, LoKr and full-weight networks"
        )
    if is_lycoris(raw):
        return _prepare_lycoris(Path(path), raw)
    expected = lora_layer_count(raw)
    if expected == 0:
        raise ValueError(
            f"LoRA file {path} holds no LoRA layers that sdrt reads (kohya, diffusers or peft LoRA keys, or "
            "LyCORIS LoHa, LoKr and full weights)"
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


def _prepare_lycoris(path: Path, raw: Mapping[str, torch.Tensor]) -> LoraFile:
    by_part: dict[str, dict[str, LycorisLayer]] = {}
    for name, layer in read_layers(raw, f"LoRA file {path}").items():
        part = next((p for p, prefixes in PART_PREFIXES.items() if name.startswith(prefixes)), None)
        if part is None:
            prefixes = ", ".join(p for ps in PART_PREFIXES.values() for p in ps)
            raise ValueError(
                f"LoRA file {path}: layer {name} is no UNet or text-encoder layer (names start {prefixes})"
            )
        by_part.setdefault(part, {})[name] = layer
    return LoraFile(path, {}, None, {p: len(v) for p, v in by_part.items()}, by_part)


# --- which layers of a model a file's layers are ----------------------------------------------------------------


def _peft_targets(lora: LoraFile, part: str, module: nn.Module) -> dict[str, tuple[torch.Size, torch.Size]]:
    """A diffusers-named file's layers of `part` as peft names them: module path -> (A shape, B shape)."""
    from diffusers.utils.state_dict_utils import (
        convert_state_dict_to_diffusers,
        convert_state_dict_to_peft,
        convert_unet_state_dict_to_peft,
    )

    state = {k.removeprefix(f"{part}."): v for k, v in lora.state.items() if k.startswith(f"{part}.")}
    if not state:
        return {}
    if part == "unet":
        if "lora_A" not in next(iter(state)):
            state = convert_unet_state_dict_to_peft(state)
    else:  # as diffusers' text-encoder loader converts them
        state = convert_state_dict_to_peft(convert_state_dict_to_diffusers(state))
        if not hasattr(module, "text_model"):
            state = {k.removeprefix("text_model."): v for k, v in state.items()}
    targets: dict[str, list] = {}
    for key, value in state.items():
        for side, marker in ((0, ".lora_A."), (1, ".lora_B.")):
            if marker in key:
                targets.setdefault(key.split(marker)[0], [None, None])[side] = value.shape
    return {path: (a, b) for path, (a, b) in targets.items() if a is not None and b is not None}


def _weight_of(module: nn.Module, path: str) -> torch.Tensor | None:
    try:
        layer = module.get_submodule(path)
    except AttributeError:
        return None
    return layer.weight if isinstance(layer, (nn.Linear, nn.Conv2d)) else None


_NAMES: weakref.WeakKeyDictionary[nn.Module, dict[str, dict[str, str]]] = weakref.WeakKeyDictionary()


def _names(part: str, module: nn.Module) -> dict[str, str]:
    """kohya names of a module's layers, computed once per module (its layers' names never change)."""
    by_part = _NAMES.setdefault(module, {})
    if part not in by_part:
        by_part[part] = kohya_names(part, module)
    return by_part[part]


def fitting_layers(lora: LoraFile, part: str, module: nn.Module) -> tuple[dict[str, str], list[str]]:
    """The file's layers of `part` that match a layer of `module` by name and shape (file name -> module path),
    and those that do not."""
    fit: dict[str, str] = {}
    unfit: list[str] = []
    if lora.lycoris:
        names = _names(part, module)
        for name, layer in lora.lycoris.get(part, {}).items():
            path = names.get(name)
            weight = None if path is None else _weight_of(module, path)
            shape = layer.shape()
            if weight is not None and weight.shape[0] == shape[0] and weight.numel() == _numel(shape):
                fit[name] = path
            else:
                unfit.append(name)
        return fit, unfit
    for path, (a, b) in _peft_targets(lora, part, module).items():
        weight = _weight_of(module, path)
        if weight is not None and b[0] == weight.shape[0] and a[1] == weight.shape[1] and a[0] == b[1]:
            fit[path] = path
        else:
            unfit.append(path)
    return fit, unfit


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


# --- fusing -----------------------------------------------------------------------------------------------------


def fuse_into_part(
    part: str, module: nn.Module, loras: Sequence[tuple[LoraFile, float]], loader: str = SD_LOADER
) -> int:
    """Fuse every LoRA's layers for `part` ("unet", "text_encoder", "text_encoder_2") into `module`, weighted.

    Returns the layers fused; ValueError when a LoRA's layers for this part do not all match the module.
    The module keeps plain layers holding the fused weights (peft's wrappers are removed).
    """
    peft = [(lora, w) for lora, w in loras if not lora.lycoris and lora.layers.get(part, 0)]
    fused = _fuse_peft(part, module, peft, loader) if peft else 0
    for lora, weight in loras:
        if lora.lycoris and lora.layers.get(part, 0):
            fused += _fuse_lycoris(part, module, lora, weight)
    return fused


def _fuse_lycoris(part: str, module: nn.Module, lora: LoraFile, weight: float) -> int:
    fit, unfit = fitting_layers(lora, part, module)
    if unfit:
        raise ValueError(
            f"LoRA file {lora.path} adapts {len(fit) + len(unfit)} layers of the {part}, but only {len(fit)} match "
            f"a layer of this model (first unmatched: {unfit[0]}; is it for another model family?)"
        )
    with torch.no_grad():
        for name, path in fit.items():
            layer, target = lora.lycoris[part][name], module.get_submodule(path)
            delta = layer.delta().reshape(target.weight.shape) * weight
            target.weight.copy_((target.weight.float() + delta.to(target.weight.device)).to(target.weight.dtype))
            bias = layer.bias_delta()
            if bias is not None:
                if target.bias is None or target.bias.numel() != bias.numel():
                    raise ValueError(f"LoRA file {lora.path}: layer {name} has a bias delta its layer cannot take")
                target.bias.copy_((target.bias.float() + bias.reshape(target.bias.shape) * weight).to(target.bias))
    return len(fit)


def _fuse_peft(part: str, module: nn.Module, loras: Sequence[tuple[LoraFile, float]], loader: str) -> int:
    import diffusers.loaders
    from diffusers.loaders.lora_base import fuse_text_encoder_lora, set_adapters_for_text_encoder

    mixin = getattr(diffusers.loaders, loader)
    names, weights, fused = [], [], 0
    try:
        for i, (lora, weight) in enumerate(loras):
            expected = lora.layers.get(part, 0)
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
        """Fuse a LoRA (or a set of (file, weight[, unet weight]); None: none); yield {part: changed names}.

        On exit, successful or not, every weight is back to its base value.
        """
        try:
            self._fuse(as_lora_set(lora, scale))
            yield self._changed()
        finally:
            self._restore()

    def set(
        self,
        lora: str | os.PathLike | LoraSet | None,
        scale: float = 1.0,
        optional: Callable[[Path], bool] | Collection[Path] = (),
    ) -> dict[str, set[str]]:
        """Leave a LoRA (or a set of (file, weight[, unet weight]); None: the base weights) fused in; return the
        changed parameter names. A file `optional` holds (or says yes to) may fit no part of this model (it is
        skipped then); any other such file is refused.

        A failed fuse leaves the base weights in place.
        """
        self._restore()
        try:
            self._fuse(as_lora_set(lora, scale), optional)
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

    def fits(self, path: Path) -> bool:
        """True when the file fits some part of this model (ValueError when it cannot be read or fits in part)."""
        return bool(self._plan(self.read(path))[0])

    def _plan(self, lora: LoraFile) -> tuple[list[str], list[str]]:
        """The parts of this model the file fits, and why it skips the others; ValueError for a part it fits in part."""
        parts, skipped = [], []
        for part in lora.layers:
            if part not in self.modules:
                skipped.append(f"this model has no {part}")
                continue
            fit, unfit = fitting_layers(lora, part, self.modules[part])
            if not unfit:
                parts.append(part)
            elif not fit:
                skipped.append(f"none of its {len(unfit)} {part} layers is a layer of this model's {part}")
            else:
                raise ValueError(
                    f"LoRA file {lora.path} adapts {len(fit) + len(unfit)} layers of the {part}, but only {len(fit)} "
                    f"match a layer of this model (first unmatched: {unfit[0]}; is it for another model family?)"
                )
        return parts, skipped

    def _fuse(self, loras: Sequence[LoraUse], optional: Callable[[Path], bool] | Collection[Path] = ()) -> None:
        if not loras:
            return
        skippable = optional if callable(optional) else optional.__contains__
        files = [(self.read(use.path), use) for use in loras]
        chosen: dict[str, list[tuple[LoraFile, float]]] = {part: [] for part in self.modules}
        for lora, use in files:
            parts, skipped = self._plan(lora)
            if not parts and not skippable(use.path):
                raise ValueError(f"LoRA file {lora.path} fits no part of this model: {'; '.join(skipped)}")
            if skipped:
                log.info("LoRA %s: %s", lora.path.name, "; ".join(skipped))
            for part in parts:
                chosen[part].append((lora, use.weight(part)))
        if any(not lora.lycoris for lora, _ in files):
            try:
                import peft  # noqa: F401 (diffusers reads LoRA files with it)
            except ImportError as exc:
                raise ValueError(
                    f"LoRA needs peft, which diffusers reads LoRA files with: pip install 'sdrt[lora]' ({exc})"
                ) from exc
        with torch.no_grad():
            for part, module in self.modules.items():
                if chosen[part]:
                    fuse_into_part(part, module, chosen[part], self.loader)
        log.info("fused LoRAs %s", ", ".join(f"{u.path.name} x {u.te:g}/{u.unet:g}" for u in loras))

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
