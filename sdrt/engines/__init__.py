"""ONNX / torch modules -> runnable engines, one backend per module, chosen by name."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any

from sdrt.lazy import lazy_names

if TYPE_CHECKING:
    from sdrt.engines.base import BuildRecord, Engine, Networks, NetworkSet, call_in_chunks, max_batch

# backend name -> module; imported only when asked for, so a missing optional library never breaks the others
BACKENDS = {
    "torch": "sdrt.engines.torch_backend",
    "onnxruntime": "sdrt.engines.onnxruntime_backend",
    "tensorrt": "sdrt.engines.tensorrt_backend",
    "openvino": "sdrt.engines.openvino_backend",
}
DEVICES = ("cpu", "cuda")


# the protocol's names, imported from sdrt.engines.base on first use: it imports torch, which the CLI does without
_BASE = ("BuildRecord", "Engine", "NetworkSet", "Networks", "call_in_chunks", "max_batch")
__getattr__ = lazy_names(__name__, {name: "sdrt.engines.base" for name in _BASE})


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
    path: str | os.PathLike, networks: Networks, backend: str, device: str = "cpu", **options: Any
) -> list[BuildRecord]:
    """Prepare engines for `backend` under `path/engines/<backend>/`, reusing any built from the same inputs."""
    module = backend_module(backend)
    return module.build(path, networks, module.options(device=check_device(device), **options))


def runs_modules(backend: str) -> bool:
    """True for a backend that runs the networks' torch modules themselves (it needs them to load)."""
    return bool(getattr(backend_module(backend), "RUNS_MODULES", False))


def load_engines(
    path: str | os.PathLike,
    networks: Networks,
    backend: str,
    device: str = "cpu",
    modules: Callable[[], Mapping[str, Any]] | None = None,
    **options: Any,
) -> dict[str, Engine]:
    """Engines for every network at `path` (an artifact; for a backend that runs torch modules, a model directory).

    `modules` loads the networks' torch modules, with their specs' IO: what a backend that `runs_modules` runs.
    """
    module = backend_module(backend)
    opts = module.options(device=check_device(device), **options)
    if runs_modules(backend):
        return module.load(path, networks, opts, modules=modules)
    return module.load(path, networks, opts)


__all__ = [
    "BACKENDS",
    "BuildRecord",
    "Engine",
    "NetworkSet",
    "Networks",
    "backend_module",
    "build_engines",
    "call_in_chunks",
    "load_engines",
    "max_batch",
    "runs_modules",
]
