"""The networks a model's engines hold (LoRAs, a hypernetwork chain), switched exactly, through what the engines can do.

LoRAs: an engine that computes with a torch module it holds (the torch backend, `ModuleEngine`) has them fused
into that module; a refittable engine (TensorRT built with --refit, `Refittable`) is refit from the model's torch
modules with the LoRAs fused in, which need the model directory the artifact was exported from. Either way the
base weights are restored bit for bit before each new set (`LoraFuser`), so A, then B, then A again gives A's
weights exactly. Hypernetworks rewrite the attention layers' contexts: they run in the torch backend's UNet module
(hooks that change no weight), and nowhere else (an exported graph would need them traced in: `sdrt export
--hypernetwork`). Engines whose weights are baked in (ONNX Runtime, OpenVINO) cannot switch anything: their error
points to fusing at export instead.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

from torch import nn

from sdrt.engines.base import ModuleEngine, Refittable
from sdrt.hypernetworks import HypernetworkHooks, HypernetworkReader, check_fits, context_widths
from sdrt.lora import LoraFuser, LoraUse, as_lora_set
from sdrt.runtime.model import Model

log = logging.getLogger(__name__)

LoraSet = Sequence[LoraUse]
HypernetworkSet = Sequence[tuple[Path, float]]  # (file, multiplier) per link of the chain, in order
Optional = Callable[[Path], bool]  # files that may fit nothing of this model (another model of the request takes them)


def _never(path: Path) -> bool:
    return False


class NetworkWeights:
    """The LoRA set and hypernetwork chain one model's engines hold now, and switching them; what the engines can
    do is found on first use."""

    def __init__(self, model: Model, model_dir: str | os.PathLike | None = None) -> None:
        self.model = model
        self.model_dir = model_dir  # the model the artifact came from (refittable engines need its weights)
        self.held: tuple[LoraUse, ...] = ()  # the LoRAs the engines hold now
        self.held_hypernetworks: tuple[tuple[Path, float], ...] = ()  # the chain they run now
        self._switch: Callable[[LoraSet, Optional], None] | None = None
        self._fuser: LoraFuser | None = None
        self._hooks: HypernetworkHooks | None = None
        self._reader = HypernetworkReader()

    # --- LoRAs ---

    def check(self) -> None:
        """ValueError unless this model's engines can switch LoRAs (the reason names what to do instead)."""
        if self._switch is None:
            self._switch = self._switcher()

    def switch(self, loras: LoraSet, optional: Optional = _never) -> None:
        """Make the engines hold exactly these LoRAs (none: the base weights); a failed switch leaves the base.

        A file `optional` says yes to may fit no part of this model; any other such file is refused.
        """
        wanted = tuple(sorted(as_lora_set(loras)))
        if wanted == self.held:
            return
        self.check()
        assert self._switch is not None  # check() sets it
        self.held = ()
        self._switch(list(wanted), optional)
        self.held = wanted

    def reset(self) -> None:
        """The base weights and no hypernetwork, whatever was held."""
        self._remove_hooks()
        if self.held:
            self.switch([])

    def fits(self, path: Path) -> bool:
        """True when a LoRA file fits some part of this model (False when this model cannot switch LoRAs)."""
        try:
            self.check()
        except ValueError:
            return False
        assert self._fuser is not None
        return self._fuser.fits(path)

    def _switcher(self) -> Callable[[LoraSet, Optional], None]:
        family, engines = self.model.family, self.model.engines
        if not family.lora_loader:
            raise ValueError(f"LoRAs are not supported for {family.description}s")
        parts = family.lora_parts
        if all(isinstance(engines[p], ModuleEngine) for p in parts):
            modules = {p: engines[p].module for p in parts}  # fused in place: nothing to refit
            fuser = self._fuser = LoraFuser({p: m.adapted for p, m in modules.items()}, family.lora_loader)

            def fuse(loras: LoraSet, optional: Optional) -> None:
                fuser.set(loras, optional=optional)  # a failed fuse restores the base weights itself

            return fuse
        if all(isinstance(engines[p], Refittable) for p in parts):
            return self._refitter(parts)
        raise ValueError(
            f"LoRAs need the torch backend or the tensorrt backend built with --refit, not {self.model.backend}, whose "
            "engines have their weights baked in: fuse the LoRA at export instead (sdrt export MODEL --lora "
            "FILE:WEIGHT), or run this request on the torch or tensorrt backend"
        )

    def _refitter(self, parts: Sequence[str]) -> Callable[[LoraSet, Optional], None]:
        """Switching by refit: LoRAs fused into the source model's torch modules, each engine refit from its module."""
        from sdrt.model_dir import ModelDir

        model, engines = self.model, self.model.engines
        if self.model_dir is None:
            raise ValueError(
                f"LoRAs on the {model.backend} backend need model_dir (--model-dir): the model the artifact came from"
            )
        source = ModelDir.open(self.model_dir)
        if source.weights_sha256() != model.manifest.source_sha256:
            raise ValueError(f"{model.path} was not exported from {self.model_dir} (their weight hashes differ)")
        for p in parts:
            if not engines[p].refittable:
                raise ValueError(f"the {p} engine cannot be refit; build the engines with --refit")
        modules = {n: m for n, m in source.iter_modules() if n in parts}
        fuser = self._fuser = LoraFuser({p: m.adapted for p, m in modules.items()}, model.family.lora_loader)
        prefixes = {p: _child_prefix(modules[p], modules[p].adapted) for p in parts}

        def refit(changed: dict[str, set[str]]) -> None:
            for p in parts:
                engines[p].refit_from(modules[p], {prefixes[p] + n for n in changed[p]})

        def switch(loras: LoraSet, optional: Optional) -> None:
            try:
                refit(fuser.set(loras, optional=optional))
            except Exception:
                refit(fuser.set(None))  # the engines back on the base weights, whatever part of them was refit
                raise

        # refit once from the base weights: each engine maps its initializers to them (a map is found by value)
        refit(fuser.set(None))
        return switch

    # --- hypernetworks ---

    def unet_module(self) -> nn.Module:
        """The torch UNet the hypernetworks run in; ValueError when this model's denoiser is not one."""
        engine = self.model.denoiser
        if not isinstance(engine, ModuleEngine):
            raise ValueError(
                f"hypernetworks per request need the torch backend, not {self.model.backend}, whose UNet is an "
                "exported graph: trace the hypernetwork into it at export instead (sdrt export MODEL --hypernetwork "
                "FILE:MULTIPLIER), or run this request on the torch backend"
            )
        if not getattr(engine, "eager", True):
            raise ValueError(
                "hypernetworks per request need the torch backend's UNet run eagerly: load it without compile and "
                "cuda_graphs (a compiled or captured UNet would not see them), or trace the hypernetwork in at "
                "export (sdrt export MODEL --hypernetwork FILE:MULTIPLIER)"
            )
        return getattr(engine.module, "adapted", engine.module)

    def widths(self) -> set[int]:
        """The context widths this model's attention layers read (empty when it cannot run hypernetworks)."""
        try:
            return context_widths(self.unet_module())
        except ValueError:
            return set()

    def switch_hypernetworks(self, chain: HypernetworkSet, optional: Optional = _never) -> None:
        """Run exactly this chain in the UNet's attention layers (none: none); a failed switch leaves none.

        A file `optional` says yes to may fit no context width of this model (it is skipped then).
        """
        wanted = tuple((Path(p), float(m)) for p, m in chain)
        if wanted == self.held_hypernetworks:
            return
        self._remove_hooks()
        if not wanted:
            return
        unet = self.unet_module()
        widths = context_widths(unet)
        links = []
        for path, multiplier in wanted:
            hypernetwork = self._reader.read(path)
            if not widths & set(hypernetwork.layers) and optional(path):
                log.info("hypernetwork %s: no module for this model's context widths; skipped", path.name)
                continue
            check_fits(hypernetwork, widths)
            links.append((hypernetwork, multiplier))
        self._hooks = HypernetworkHooks(unet, links)
        self.held_hypernetworks = wanted
        log.info("running hypernetworks %s", ", ".join(f"{p.name} x {m:g}" for p, m in wanted))

    def read_hypernetwork(self, path: Path):
        return self._reader.read(path)

    def _remove_hooks(self) -> None:
        if self._hooks is not None:
            self._hooks.remove()
            self._hooks = None
        self.held_hypernetworks = ()


def can_skip(others: Collection[NetworkWeights], kind: str) -> Optional:
    """A file may fit nothing of one model when another model of the request takes it."""

    def optional(path: Path) -> bool:
        if kind == "lora":
            return any(w.fits(path) for w in others)
        return any(bool(w.widths() & set(w.read_hypernetwork(path).layers)) for w in others)

    return optional


def _child_prefix(wrapper: nn.Module, inner: nn.Module) -> str:
    """The parameter-name prefix of `inner` within `wrapper` (LoRA names parameters within the adapted module)."""
    for name, child in wrapper.named_children():
        if child is inner:
            return f"{name}."
    raise ValueError(f"{type(inner).__name__} is not a direct child of {type(wrapper).__name__}")
