"""GAN upscaler files -> ONNX artifacts with dynamic batch, height and width, and engines for them on any backend.

`export_upscaler` writes an artifact (`upscaler.json` and `upscaler/model.onnx`) atomically. `engine_factory`
gives a library (`sdrt.upscalers.library`) engines for the backend it serves on: the torch module itself, or for
every other backend the file's ONNX export, made on first use into a cache keyed on the file's sha256 and the
export settings (so a changed file or setting is exported again, never a stale one reused).
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from sdrt.engines import Engine, load_engines, runs_modules
from sdrt.export.fp16 import PRECISIONS, convert_component
from sdrt.export.onnx_export import export_component
from sdrt.files import atomic_directory, file_lock
from sdrt.hashing import file_sha256, json_sha256
from sdrt.spec import ShapeRanges
from sdrt.upscalers.library import DEFAULT_TILING, EngineFactory, UpscalerLibrary, torch_engines
from sdrt.upscalers.models import UpscalerModel, load_upscaler
from sdrt.upscalers.network import ARTIFACT_FILE, DEFAULT_RANGES, UPSCALER, UpscalerArtifact, upscaler_spec
from sdrt.upscalers.upscaler import Tiling
from sdrt.versions import library_versions

log = logging.getLogger(__name__)

CACHE_ENV = "SDRT_CACHE_DIR"


def export_upscaler(
    source: str | os.PathLike | UpscalerModel,
    out: str | os.PathLike,
    ranges: ShapeRanges = DEFAULT_RANGES,
    opset: int = 17,
    precision: str = "fp32",
    overwrite: bool = False,
) -> UpscalerArtifact:
    """Trace an upscaler file's network to `out/upscaler/model.onnx` and describe it in `out/upscaler.json`."""
    model = source if isinstance(source, UpscalerModel) else load_upscaler(source)
    target = Path(out)
    if target.exists() and not overwrite:
        raise ValueError(f"upscaler artifact {target} already exists; pass overwrite=True (--overwrite) to replace it")
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if ranges.latent_factor != 1:
        raise ValueError(f"upscaler ranges count input pixels (latent factor 1), not {ranges.latent_factor}")
    spec = upscaler_spec(model.scale, model.multiple)
    spec = replace(spec, attributes={**spec.attributes, "precision": precision})
    with atomic_directory(target) as tmp:
        log.info("exporting upscaler %s (%s) to ONNX", model.name, model.describe())
        onnx_file = export_component(model.module(), spec, ranges, tmp / UPSCALER, opset, trace_sizes(model, ranges))
        if precision == "fp16":
            onnx_file = convert_component(tmp, onnx_file, spec)
        artifact = UpscalerArtifact(
            name=model.name,
            architecture=model.architecture,
            description=model.describe(),
            source_sha256=file_sha256(model.path),
            ranges=ranges,
            components={UPSCALER: spec},
            files={UPSCALER: onnx_file},
            versions={**library_versions(), "onnx_opset": str(opset)},
        )
        artifact.write(tmp)
    return artifact


def trace_sizes(model: UpscalerModel, ranges: ShapeRanges) -> dict[str, int]:
    """Symbol values to trace at: two images, height != width, both multiples of what the network takes."""
    dims = ranges.dims()
    m = model.multiple
    low, high = dims["latent_height"].min, dims["latent_height"].max
    height = max(-(-low // m) * m, 3 * m)
    width = height + m
    if width > high:
        raise ValueError(f"upscaler size range {low}..{high} is too narrow to trace {model.name} ({height}x{width})")
    return {"batch": min(2, dims["batch"].max), "latent_height": height, "latent_width": width}


def default_cache_dir() -> Path:
    """Where exported upscalers are kept: $SDRT_CACHE_DIR/upscalers, else $XDG_CACHE_HOME/sdrt/upscalers."""
    root = os.environ.get(CACHE_ENV) or None
    if root is None:
        return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sdrt" / "upscalers"
    return Path(root).expanduser() / "upscalers"


def cached_export(
    model: UpscalerModel,
    cache_dir: str | os.PathLike | None = None,
    ranges: ShapeRanges = DEFAULT_RANGES,
    precision: str = "fp32",
    opset: int = 17,
) -> Path:
    """The directory of `model`'s export with these settings, exported now when the cache has none."""
    settings = {"sha256": file_sha256(model.path), "ranges": ranges.to_json(), "precision": precision,
                "opset": opset, "versions": library_versions()}  # fmt: skip
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    directory = root / f"{model.name}-{json_sha256(settings)[:16]}"
    with file_lock(root / f".{directory.name}.lock"):
        if (directory / ARTIFACT_FILE).is_file():
            try:
                artifact = UpscalerArtifact.read(directory)
                if artifact.source_sha256 == settings["sha256"]:
                    return directory
            except ValueError as exc:
                log.warning("exporting upscaler %s again: %s", model.name, exc)
        export_upscaler(model, directory, ranges, opset, precision, overwrite=True)
    return directory


def engine_factory(
    backend: str = "torch",
    device: str = "cpu",
    cache_dir: str | os.PathLike | None = None,
    ranges: ShapeRanges = DEFAULT_RANGES,
    precision: str = "fp32",
    **options: Any,
) -> EngineFactory:
    """Engines for upscaler files on `backend`: the torch module (torch), else its cached ONNX export's engine.

    `cache_dir` holds the exports (default `default_cache_dir()`); the backend's own engines (optimized graphs,
    TensorRT plans, OpenVINO blobs) are cached inside each export as for any artifact.
    """
    if runs_modules(backend):
        return torch_engines(device, ranges, **options)

    def make(model: UpscalerModel) -> Engine:
        directory = cached_export(model, cache_dir, ranges, precision)
        artifact = UpscalerArtifact.read(directory)
        return load_engines(directory, artifact, backend, device, **options)[UPSCALER]

    return make


def open_library(
    directory: str | os.PathLike,
    backend: str = "torch",
    device: str = "cpu",
    tiling: Tiling = DEFAULT_TILING,
    cache_dir: str | os.PathLike | None = None,
    **options: Any,
) -> UpscalerLibrary:
    """The upscalers of `directory` on `backend`. `cache_dir` (the backends' `--cache-dir`) holds their exports under
    `upscalers/` and their engines; default `default_cache_dir()` and, for the engines, each export itself."""
    exports = None if cache_dir is None else Path(cache_dir) / "upscalers"
    engine_options = (
        dict(options) if cache_dir is None or runs_modules(backend) else {**options, "cache_dir": cache_dir}
    )
    factory = engine_factory(backend, device, exports, **engine_options)
    return UpscalerLibrary(directory, factory, tiling)
