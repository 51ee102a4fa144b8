"""ONNX / torch modules -> runnable engines, one backend per module, chosen by name."""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Any

from sdrt.engines.base import BuildRecord, Engine, call_in_chunks, max_batch
from sdrt.manifest import Manifest

# backend name -> module; imported only when asked for, so a missing optional library never breaks the others
BACKENDS = {
    "torch": "sdrt.engines.torch_backend",
    "onnxruntime": "sdrt.engines.onnxruntime_backend",
    "tensorrt": "sdrt.engines.tensorrt_backend",
    "openvino": "sdrt.engines.openvino_backend",
}
DEVICES = ("cpu", "cuda")


def backend_module(name: str) -> ModuleType:
    """The module implementing backend `name`; ValueError listing the known names otherwise."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; known backends: {', '.join(BACKENDS)}")
    return importlib.import_module(BACKENDS[name])


def check_device(device: str) -> str:
    """Raise ValueError unless `device` names a device this machine has."""
    import torch

    kind = device.split(":")[0]
    if kind not in DEVICES:
        raise ValueError(f"unknown device {device!r}; use one of {', '.join(DEVICES)} (optionally cuda:N)")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} is not available: this torch has no CUDA or there is no GPU")
    return device


def build_engines(
    path: str | os.PathLike, manifest: Manifest, backend: str, device: str = "cpu", **options: Any
) -> list[BuildRecord]:
    """Prepare engines for `backend` under `path/engines/<backend>/`, reusing any built from the same inputs."""
    module = backend_module(backend)
    return module.build(path, manifest, module.options(device=check_device(device), **options))


def load_engines(
    path: str | os.PathLike, manifest: Manifest, backend: str, device: str = "cpu", **options: Any
) -> dict[str, Engine]:
    """Engines for every component of the artifact (or, for the torch backend, model directory) at `path`."""
    module = backend_module(backend)
    return module.load(path, manifest, module.options(device=check_device(device), **options))


__all__ = [
    "BACKENDS",
    "BuildRecord",
    "Engine",
    "backend_module",
    "build_engines",
    "call_in_chunks",
    "load_engines",
    "max_batch",
]
