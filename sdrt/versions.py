"""Versions of sdrt and the libraries whose behaviour an artifact or engine depends on."""

from __future__ import annotations

from importlib import metadata

_PACKAGES = ("sdrt", "torch", "diffusers", "transformers", "onnx", "onnxruntime")


def library_versions() -> dict[str, str]:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
