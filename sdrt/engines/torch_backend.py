"""The reference backend: the diffusers/transformers modules themselves, run by torch."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sdrt.components import component_modules
from sdrt.engines.base import BuildRecord, CheckedEngine
from sdrt.engines.options import make_options
from sdrt.manifest import Manifest
from sdrt.model_dir import ModelDir
from sdrt.spec import ComponentSpec, ShapeRanges


@dataclass(frozen=True)
class TorchOptions:
    """Options of the torch backend."""

    device: str = "cpu"  # "cpu" or "cuda[:N]"


def options(**kwargs) -> TorchOptions:
    return make_options(TorchOptions, "torch", **kwargs)


class TorchEngine(CheckedEngine):
    """One component's torch module behind the engine protocol."""

    def __init__(self, module: nn.Module, spec: ComponentSpec, ranges: ShapeRanges, device: torch.device) -> None:
        super().__init__(spec, ranges, device)
        self.module = module.to(device)

    def _run(self, feeds: Mapping[str, torch.Tensor], dims: Mapping[str, int]) -> dict[str, torch.Tensor]:
        with torch.inference_mode():
            out = self.module(**feeds)
        outputs = out if isinstance(out, tuple) else (out,)
        return dict(zip(self.spec.output_names, outputs, strict=True))


def build(path: str | os.PathLike, manifest: Manifest, opts: TorchOptions) -> list[BuildRecord]:
    """The torch backend runs the modules as they are: nothing to build."""
    _model_dir(path)
    return []


def load(path: str | os.PathLike, manifest: Manifest, opts: TorchOptions) -> dict[str, TorchEngine]:
    model = _model_dir(path)
    device = torch.device(opts.device)
    modules = component_modules(*model.load_modules())
    return {
        name: TorchEngine(modules[name], spec, manifest.ranges, device) for name, spec in manifest.components.items()
    }


def _model_dir(path: str | os.PathLike) -> ModelDir:
    if not (Path(path) / "model_index.json").is_file():
        raise ValueError(
            f"the torch backend runs a diffusers model directory (with model_index.json); {path} is not one. "
            "Pass the model directory the artifact was exported from, or use --backend onnxruntime"
        )
    return ModelDir.open(path)
