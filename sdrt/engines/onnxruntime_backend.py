"""ONNX Runtime backend: graph-optimized models cached per input hash, run with IO binding on torch tensors.

The same code serves the CPU provider and the CUDA provider (`device="cuda"`): inputs and outputs are
bound by pointer to torch tensors on the engine's device, so a GPU run never copies through the host.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sdrt.engines.base import BuildRecord, CheckedEngine, indexed
from sdrt.engines.options import make_options
from sdrt.files import atomic_directory
from sdrt.hashing import file_sha256, json_sha256
from sdrt.manifest import ONNX_DATA_FILE, ONNX_FILE, Manifest, OnnxFile
from sdrt.spec import ComponentSpec, ShapeRanges

log = logging.getLogger(__name__)

BACKEND = "onnxruntime"
RECORD_FILE = "build.json"
OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
# IO binding takes numpy element types
_NUMPY_DTYPES = {torch.float32: np.float32, torch.float16: np.float16, torch.int32: np.int32, torch.int64: np.int64}


@dataclass(frozen=True)
class OnnxRuntimeOptions:
    """Options of the ONNX Runtime backend."""

    device: str = "cpu"  # "cpu" (CPUExecutionProvider) or "cuda[:N]" (CUDAExecutionProvider)
    optimization: str = "all"  # graph optimization level applied at build time: disable, basic, extended, all
    threads: int = 0  # intra-op threads; 0 lets ONNX Runtime choose (run-time only, not part of the cache key)

    def __post_init__(self) -> None:
        if self.optimization not in OPTIMIZATION_LEVELS:
            raise ValueError(f"optimization {self.optimization!r} is not one of {', '.join(OPTIMIZATION_LEVELS)}")
        if self.threads < 0:
            raise ValueError(f"threads {self.threads} must be 0 (automatic) or positive")

    @property
    def torch_device(self) -> torch.device:
        return indexed(torch.device(self.device))

    def providers(self) -> list:
        import onnxruntime as ort

        if self.torch_device.type == "cpu":
            return ["CPUExecutionProvider"]
        available = ort.get_available_providers()
        if "CUDAExecutionProvider" not in available:
            raise ValueError(
                f"device {self.device} needs ONNX Runtime's CUDAExecutionProvider, but this onnxruntime has only "
                f"{available}; install onnxruntime-gpu"
            )
        return [("CUDAExecutionProvider", {"device_id": self.torch_device.index or 0}), "CPUExecutionProvider"]


def options(**kwargs) -> OnnxRuntimeOptions:
    return make_options(OnnxRuntimeOptions, BACKEND, **kwargs)


def cache_key(onnx_file: OnnxFile, opts: OnnxRuntimeOptions, artifact: Path) -> str:
    """Hash of everything the optimized model depends on: ONNX bytes, settings, library version, hardware."""
    import onnxruntime as ort

    return json_sha256(
        {
            "onnx": file_sha256(artifact / onnx_file.path),
            "external_data": file_sha256(artifact / onnx_file.external_data) if onnx_file.external_data else None,
            "optimization": opts.optimization,
            "provider": opts.torch_device.type,
            "onnxruntime": ort.__version__,
            # optimized graphs are hardware-specific at level "all" (layout transforms for the CPU's vector width)
            "hardware": _hardware_id(opts.torch_device),
        }
    )


def engine_dir(artifact: Path, component: str, key: str) -> Path:
    return artifact / "engines" / BACKEND / component / key[:16]


def build(path: str | os.PathLike, manifest: Manifest, opts: OnnxRuntimeOptions) -> list[BuildRecord]:
    """Optimize every component's graph once and save it, keyed by `cache_key`; reuse what is already built."""
    artifact = Path(path)
    _require_onnx(artifact, manifest)
    opts.providers()  # fail on a missing execution provider before hashing gigabytes
    return [_build_one(artifact, name, manifest.files[name], opts) for name in manifest.components]


def load(path: str | os.PathLike, manifest: Manifest, opts: OnnxRuntimeOptions) -> dict[str, OnnxRuntimeEngine]:
    """Sessions over the cached optimized graphs (built first where missing)."""
    import onnxruntime as ort

    artifact = Path(path)
    _require_onnx(artifact, manifest)
    providers = opts.providers()
    engines = {}
    for name, spec in manifest.components.items():
        record = _build_one(artifact, name, manifest.files[name], opts)
        so = _session_options(opts)
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # already applied at build
        session = ort.InferenceSession(str(Path(record.path) / ONNX_FILE), so, providers=providers)
        engines[name] = OnnxRuntimeEngine(session, spec, manifest.ranges, opts.torch_device)
    return engines


class OnnxRuntimeEngine(CheckedEngine):
    """An ONNX Runtime session behind the engine protocol, fed by IO binding on torch tensors."""

    def __init__(self, session, spec: ComponentSpec, ranges: ShapeRanges, device: torch.device) -> None:
        super().__init__(spec, ranges, device)
        self.session = session
        self._device_type = "cuda" if self.device.type == "cuda" else "cpu"
        self._device_id = self.device.index or 0

    def _run(self, feeds: Mapping[str, torch.Tensor], dims: Mapping[str, int]) -> dict[str, torch.Tensor]:
        binding = self.session.io_binding()
        keep = []  # contiguous copies must outlive the run
        for spec in self.spec.inputs:
            tensor = feeds[spec.name].contiguous()
            keep.append(tensor)
            binding.bind_input(
                spec.name,
                self._device_type,
                self._device_id,
                _NUMPY_DTYPES[tensor.dtype],
                tuple(tensor.shape),
                tensor.data_ptr(),
            )
        outputs = {}
        for spec, shape in zip(self.spec.outputs, self.spec.output_shapes(dims).values(), strict=True):
            tensor = torch.empty(shape, dtype=spec.torch_dtype, device=self.device)
            outputs[spec.name] = tensor
            binding.bind_output(
                spec.name, self._device_type, self._device_id, _NUMPY_DTYPES[tensor.dtype], shape, tensor.data_ptr()
            )
        if self._device_type == "cuda":
            # ONNX Runtime runs on its own stream: torch's queued writes to the inputs must land first.
            torch.cuda.current_stream(self.device).synchronize()
        # Run returns once the execution provider's stream is done, so torch may read the outputs at once.
        self.session.run_with_iobinding(binding)
        return outputs


def _build_one(artifact: Path, name: str, onnx_file: OnnxFile, opts: OnnxRuntimeOptions) -> BuildRecord:
    import onnxruntime as ort

    key = cache_key(onnx_file, opts, artifact)
    target = engine_dir(artifact, name, key)
    if (target / RECORD_FILE).is_file():
        return BuildRecord(name, key, str(target), reused=True, seconds=0.0)
    log.info("building %s engine for %s (optimization %s)", BACKEND, name, opts.optimization)
    start = time.perf_counter()
    # a directory without its build.json is a build cut short: atomic_directory replaces it
    with atomic_directory(target) as tmp:
        so = _session_options(opts)
        so.graph_optimization_level = _level(opts.optimization)
        so.optimized_model_filepath = str(tmp / ONNX_FILE)
        if onnx_file.external_data:
            so.add_session_config_entry("session.optimized_model_external_initializers_file_name", ONNX_DATA_FILE)
            so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        ort.InferenceSession(str(artifact / onnx_file.path), so, providers=opts.providers())
        seconds = time.perf_counter() - start
        record = {
            "component": name,
            "key": key,
            "options": vars(opts),
            "onnxruntime": ort.__version__,
            "seconds": seconds,
        }
        (tmp / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return BuildRecord(name, key, str(target), reused=False, seconds=seconds)


def _session_options(opts: OnnxRuntimeOptions):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = opts.threads
    so.log_severity_level = 3  # errors only; ONNX Runtime's warnings would reach the user's terminal directly
    return so


def _level(name: str):
    import onnxruntime as ort

    levels = ort.GraphOptimizationLevel
    return {
        "disable": levels.ORT_DISABLE_ALL,
        "basic": levels.ORT_ENABLE_BASIC,
        "extended": levels.ORT_ENABLE_EXTENDED,
        "all": levels.ORT_ENABLE_ALL,
    }[name]


def _hardware_id(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return f"{platform.machine()}:{json_sha256(sorted(line.split(':', 1)[1].split()))[:16]}"
    except OSError:
        pass
    return platform.machine()


def _require_onnx(artifact: Path, manifest: Manifest) -> None:
    missing = [n for n in manifest.components if n not in manifest.files]
    if missing:
        raise ValueError(
            f"{artifact} has no ONNX files for {', '.join(missing)}: the onnxruntime backend runs an exported "
            "artifact (create one with 'sdrt export MODEL_DIR -o ARTIFACT_DIR')"
        )
