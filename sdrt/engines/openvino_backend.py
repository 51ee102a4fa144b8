"""OpenVINO backend: the artifact's own ONNX compiled by OpenVINO's CPU plugin, static shapes where a call's are known.

- Reads `<component>/model.onnx` directly (`Core.read_model`, external weights beside it), as exported;
  an fp16 artifact runs unchanged (its graphs take and return float32).
- Inference precision is pinned to f32 (`INFERENCE_PRECISION_HINT`): on CPUs with bf16 or AMX units
  OpenVINO would otherwise pick bf16 and change the image. The key records it.
- The networks that run at a few shapes per generation, by role (the denoiser every step, the VAE
  halves once), are reshaped to each call's static shapes and compiled for exactly those (OpenVINO's
  fastest kernels); a text encoder, whose row count varies with the prompts, is compiled once with
  dynamic shapes. An engine keeps at most `max_compiled` static models in memory (each holds its own
  copy of the weights), dropping the least recently used.
- Compiled models are cached on disk like every other engine (`sdrt.engines.cache`): one engine
  directory per (component, shapes) holding OpenVINO's exported blob, keyed on the ONNX bytes, the
  OpenVINO version, the CPU and the compile settings, and verified against its recorded sha256 before
  it is imported. `sdrt build --backend openvino` compiles the tuned shapes (`opt` batch and size).
- Inputs and outputs are torch CPU tensors shared with OpenVINO without copies (`ov.Tensor` over their
  memory); outputs are allocated by torch at the shapes the spec resolves.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sdrt.engines.base import BuildRecord, CheckedEngine, Networks, indexed
from sdrt.engines.cache import EngineCache, ensure_engine, hardware_id, onnx_digests, reading, require_onnx
from sdrt.engines.float32 import float32_name, float32_onnx
from sdrt.engines.options import make_options
from sdrt.hashing import json_sha256
from sdrt.onnx_files import OnnxFile
from sdrt.spec import ComponentSpec, ShapeRanges

log = logging.getLogger(__name__)

BACKEND = "openvino"
BLOB_FILE = "model.blob"
NEEDS = "the openvino backend needs OpenVINO (pip install 'sdrt[openvino]') and runs on the CPU"
# a few shapes per generation (an upscaler's: its tile size): compiled per shape
STATIC_ROLES = ("denoiser", "controlnet", "vae_decoder", "vae_encoder", "upscaler")
INFERENCE_PRECISION = "f32"  # never bf16 or f16: speed must not buy a different image
DYNAMIC = "dynamic"


@dataclass(frozen=True)
class OpenVinoOptions:
    """Options of the OpenVINO backend."""

    device: str = "cpu"  # OpenVINO's CPU plugin; this backend runs on the CPU only
    threads: int = 0  # inference threads; 0 lets OpenVINO choose (run-time only, not part of the cache key)
    static_shapes: bool = True  # compile the denoiser and VAE for each call's exact shapes (False: dynamic models)
    max_compiled: int = 2  # static models kept in memory per component (each holds its own weights)
    cache_dir: str | None = None  # engine cache outside the artifact (default $SDRT_CACHE_DIR, else the artifact)

    def __post_init__(self) -> None:
        if self.device.split(":")[0] != "cpu":
            raise ValueError(f"device {self.device!r}: {NEEDS}; use --device cpu")
        if self.threads < 0:
            raise ValueError(f"threads {self.threads} must be 0 (automatic) or positive")
        if self.max_compiled < 1:
            raise ValueError(f"max_compiled {self.max_compiled} must be at least 1")

    def settings(self) -> dict[str, Any]:
        """The compile settings a blob depends on (part of the cache key)."""
        return {"inference_precision": INFERENCE_PRECISION, "performance_hint": "LATENCY"}


def openvino():
    """The openvino module; ValueError saying what is missing."""
    try:
        import openvino as ov
    except ImportError as exc:
        raise ValueError(f"{NEEDS}: the openvino package cannot be imported ({exc})") from exc
    return ov


def options(**kwargs) -> OpenVinoOptions:
    opts = make_options(OpenVinoOptions, BACKEND, **kwargs)
    openvino()
    return opts


def build(path: str | os.PathLike, manifest: Networks, opts: OpenVinoOptions) -> list[BuildRecord]:
    """Compile every component at its tuned shapes (static roles) or dynamically (the others), cached on disk."""
    artifact = Path(path)
    require_onnx(artifact, manifest, BACKEND)
    cache = EngineCache.for_artifact(artifact, opts.cache_dir)
    records = []
    for name, spec in manifest.components.items():
        compiler = _Compiler(artifact, name, spec, manifest.files[name], opts, cache)
        dims = None
        if compiler.static:
            dims = {s: r.opt for s, r in manifest.ranges.dims().items()}
        cached = compiler.engine(dims)
        records.append(BuildRecord(name, cached.record["key"], str(cached.path), cached.reused, cached.seconds))
    return records


def load(path: str | os.PathLike, manifest: Networks, opts: OpenVinoOptions) -> dict[str, OpenVinoEngine]:
    """Engines for every component; static models are compiled (or imported from the cache) at their first shape."""
    artifact = Path(path)
    require_onnx(artifact, manifest, BACKEND)
    cache = EngineCache.for_artifact(artifact, opts.cache_dir)
    engines = {}
    for name, spec in manifest.components.items():
        compiler = _Compiler(artifact, name, spec, manifest.files[name], opts, cache)
        engine = OpenVinoEngine(compiler, spec, manifest.ranges, opts.max_compiled)
        if not compiler.static:
            engine.compiled(None)  # one dynamic model: load it now, not inside the first request
        engines[name] = engine
    return engines


class _Compiler:
    """Compiles (or imports from the engine cache) one component's model, for given static shapes or dynamic."""

    def __init__(
        self,
        root: Path,
        name: str,
        spec: ComponentSpec,
        onnx_file: OnnxFile,
        opts: OpenVinoOptions,
        cache: EngineCache,
    ) -> None:
        self.root = root  # onnx_file's paths are relative to it: the artifact, or the cached float32 copy
        self.name, self.spec, self.onnx_file, self.opts, self.cache = name, spec, onnx_file, opts, cache
        self.static = opts.static_shapes and spec.role in STATIC_ROLES
        self._source_key: str | None = None
        self._core = None

    @property
    def core(self):
        if self._core is None:
            ov = openvino()
            self._core = ov.Core()
            self._core.set_property("CPU", {"INFERENCE_PRECISION_HINT": INFERENCE_PRECISION})
            if self.opts.threads:
                self._core.set_property("CPU", {"INFERENCE_NUM_THREADS": self.opts.threads})
        return self._core

    def shapes(self, dims: Mapping[str, int] | None) -> dict[str, tuple[int, ...]] | None:
        """Input name -> static shape for these symbol values (None: dynamic)."""
        if dims is None:
            return None
        return {t.name: t.concrete(dims) for t in self.spec.inputs}

    def key(self, shapes: Mapping[str, tuple[int, ...]] | None) -> str:
        if self._source_key is None:
            ov = openvino()
            self._source_key = json_sha256(
                {
                    **onnx_digests(self.root, self.name, self.onnx_file),
                    "openvino": ov.__version__,
                    "hardware": hardware_id(torch.device("cpu")),
                    "settings": self.opts.settings(),
                }
            )
        return json_sha256({"source": self._source_key, "shapes": {k: list(v) for k, v in (shapes or {}).items()}})

    def engine(self, dims: Mapping[str, int] | None):
        """The cached blob for these shapes, compiled and exported into the engine cache when missing."""
        ov = openvino()
        shapes = self.shapes(dims)
        label = DYNAMIC if shapes is None else "x".join(str(v) for v in shapes[self.spec.inputs[0].name])

        def compile_and_export(tmp: Path) -> dict:
            compiled = self._compile(shapes)
            (tmp / BLOB_FILE).write_bytes(_exported(compiled))
            return {"settings": self.opts.settings(), "shapes": {k: list(v) for k, v in (shapes or {}).items()}}

        what = f"OpenVINO model for {self.name} at {label}"
        return ensure_engine(
            self.cache, BACKEND, self.name, self.key(shapes), {"openvino": ov.__version__}, compile_and_export, what
        )

    def compiled(self, dims: Mapping[str, int] | None):
        """(compiled model, the blob mapping it reads) for these shapes (None: dynamic), from the verified blob."""
        ov = openvino()
        cached = self.engine(dims)
        with reading(cached.path):
            # mapped copy-on-write, not read into a bytes object: the blob holds the weights, gigabytes at full
            # size, and its pages stay the page cache's (a replaced blob's old inode lives on for the mapping)
            blob = np.memmap(cached.path / BLOB_FILE, dtype=np.uint8, mode="c")
        compiled = self.core.import_model(ov.Tensor(blob, shared_memory=True), "CPU")
        return compiled, blob  # OpenVINO may read the weights from the mapping: it must outlive the model

    def _compile(self, shapes: Mapping[str, tuple[int, ...]] | None):
        ov = openvino()
        model = self.core.read_model(str(self.root / self.onnx_file.path))
        if shapes is not None:
            model.reshape({name: ov.PartialShape(list(shape)) for name, shape in shapes.items()})
        return self.core.compile_model(model, "CPU", {"PERFORMANCE_HINT": "LATENCY"})


def _exported(compiled) -> bytes:
    """A compiled model's blob as bytes (export_model returns bytes, or writes to a stream in some versions)."""
    import io

    exported = compiled.export_model()
    if isinstance(exported, (bytes, bytearray, memoryview)):
        return bytes(exported)
    stream = io.BytesIO()
    compiled.export_model(stream)
    return stream.getvalue()


class OpenVinoEngine(CheckedEngine):
    """One component on OpenVINO's CPU plugin behind the engine protocol: torch CPU tensors in and out."""

    def __init__(self, compiler: _Compiler, spec: ComponentSpec, ranges: ShapeRanges, max_compiled: int) -> None:
        super().__init__(spec, ranges, indexed(torch.device("cpu")))
        self.compiler = compiler
        self.max_compiled = max_compiled
        # shapes -> (compiled model, its infer request, the blob mapping it reads)
        self._models: OrderedDict[tuple | None, tuple[Any, Any, Any]] = OrderedDict()

    def compiled(self, dims: Mapping[str, int] | None):
        """(compiled model, infer request, blob) for these symbol values; compiled models are kept LRU."""
        shapes = self.compiler.shapes(dims)
        key = None if shapes is None else tuple(sorted(shapes.items()))
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        compiled, blob = self.compiler.compiled(dims)
        self._models[key] = (compiled, compiled.create_infer_request(), blob)
        while len(self._models) > self.max_compiled:
            dropped, _ = self._models.popitem(last=False)
            log.info("%s: dropping the OpenVINO model compiled for %s (at most %d kept)", self.spec.name, dropped,
                     self.max_compiled)  # fmt: skip
        return self._models[key]

    def _run(self, feeds: Mapping[str, torch.Tensor], dims: Mapping[str, int]) -> dict[str, torch.Tensor]:
        ov = openvino()
        _, request, _ = self.compiled(dims if self.compiler.static else None)
        inputs = {name: feeds[name].contiguous() for name in self.spec.input_names}  # must outlive the run
        for name, tensor in inputs.items():
            request.set_tensor(name, ov.Tensor(tensor.numpy(), shared_memory=True))
        shapes = self.spec.output_shapes(dims)
        outputs = {t.name: torch.empty(shapes[t.name], dtype=t.torch_dtype) for t in self.spec.outputs}
        for name, tensor in outputs.items():
            request.set_tensor(name, ov.Tensor(tensor.numpy(), shared_memory=True))
        request.infer()
        return outputs

    def float32_copy(self) -> OpenVinoEngine:
        """This engine when it computes in float32 already (an fp32 graph: OpenVINO runs it in f32)."""
        return self if self.spec.attributes.get("precision", "fp32") == "fp32" else _upcast_engine(self)


def _upcast_engine(engine: OpenVinoEngine) -> OpenVinoEngine:
    c = engine.compiler
    root, onnx_file = float32_onnx(c.cache, c.root, c.name, c.onnx_file)
    fp32 = _Compiler(root, float32_name(c.name), engine.spec, onnx_file, c.opts, c.cache)
    return OpenVinoEngine(fp32, engine.spec, engine.ranges, engine.max_compiled)
