"""The LoRAs a model's engines hold, switched exactly, through what the engines can do.

An engine that computes with a torch module it holds (the torch backend, `ModuleEngine`) has the LoRAs
fused into that module; a refittable engine (TensorRT built with --refit, `Refittable`) is refit from
the model's torch modules with the LoRAs fused in, which need the model directory the artifact was
exported from. Either way the base weights are restored bit for bit before each new set (`LoraFuser`),
so A, then B, then A again gives A's weights exactly. Engines whose weights are baked in (ONNX Runtime,
OpenVINO) cannot switch: their error points to fusing at export instead.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from torch import nn

from sdrt.engines.base import ModuleEngine, Refittable
from sdrt.lora import LoraFuser
from sdrt.runtime.model import Model

log = logging.getLogger(__name__)

LoraSet = Sequence[tuple[Path, float]]


class LoraWeights:
    """The LoRA set one model's engines hold now, and switching it; the capability is found on first use."""

    def __init__(self, model: Model, model_dir: str | os.PathLike | None = None) -> None:
        self.model = model
        self.model_dir = model_dir  # the model the artifact came from (refittable engines need its weights)
        self.held: tuple[tuple[Path, float], ...] = ()  # what the engines hold now
        self._switch: Callable[[LoraSet], None] | None = None

    def check(self) -> None:
        """ValueError unless this model's engines can switch LoRAs (the reason names what to do instead)."""
        if self._switch is None:
            self._switch = self._switcher()

    def switch(self, loras: LoraSet) -> None:
        """Make the engines hold exactly these LoRAs (none: the base weights); a failed switch leaves the base."""
        wanted = tuple(sorted((Path(p), float(w)) for p, w in loras))
        if wanted == self.held:
            return
        self.check()
        assert self._switch is not None  # check() sets it
        self.held = ()
        self._switch(list(wanted))
        self.held = wanted

    def _switcher(self) -> Callable[[LoraSet], None]:
        family, engines = self.model.family, self.model.engines
        if not family.lora_loader:
            raise ValueError(f"LoRAs are not supported for {family.description}s")
        parts = family.lora_parts
        if all(isinstance(engines[p], ModuleEngine) for p in parts):
            modules = {p: engines[p].module for p in parts}  # fused in place: nothing to refit
            fuser = LoraFuser({p: m.adapted for p, m in modules.items()}, family.lora_loader)

            def fuse(loras: LoraSet) -> None:
                fuser.set(loras)  # a failed fuse restores the base weights itself

            return fuse
        if all(isinstance(engines[p], Refittable) for p in parts):
            return self._refitter(parts)
        raise ValueError(
            f"LoRAs need the torch backend or the tensorrt backend built with --refit, not {self.model.backend}, whose "
            "engines have their weights baked in: fuse the LoRA at export instead (sdrt export MODEL --lora "
            "FILE:WEIGHT), or run this request on the torch or tensorrt backend"
        )

    def _refitter(self, parts: Sequence[str]) -> Callable[[LoraSet], None]:
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
        fuser = LoraFuser({p: m.adapted for p, m in modules.items()}, model.family.lora_loader)
        prefixes = {p: _child_prefix(modules[p], modules[p].adapted) for p in parts}

        def refit(changed: dict[str, set[str]]) -> None:
            for p in parts:
                engines[p].refit_from(modules[p], {prefixes[p] + n for n in changed[p]})

        def switch(loras: LoraSet) -> None:
            try:
                refit(fuser.set(loras))
            except Exception:
                refit(fuser.set(None))  # the engines back on the base weights, whatever part of them was refit
                raise

        # refit once from the base weights: each engine maps its initializers to them (a map is found by value)
        refit(fuser.set(None))
        return switch


def _child_prefix(wrapper: nn.Module, inner: nn.Module) -> str:
    """The parameter-name prefix of `inner` within `wrapper` (LoRA names parameters within the adapted module)."""
    for name, child in wrapper.named_children():
        if child is inner:
            return f"{name}."
    raise ValueError(f"{type(inner).__name__} is not a direct child of {type(wrapper).__name__}")
