"""TensorRT backend: engines built from the exported ONNX, run on torch CUDA tensors with CUDA graphs.

Build (`sdrt build ARTIFACT --backend tensorrt --device cuda`), through TensorRT's Python API
(`tensorrt_build`): parse the ONNX into a strongly typed network (TensorRT 10.x and 11.x alike; the
artifact's precision is the engine's: `sdrt export --precision fp16` for fp16 engines), TF32 off unless
asked, the optimization profiles derived from the manifest's ranges (`tensorrt_profiles`: a static
profile at the opt shapes for speed and/or a dynamic one for the whole range), optionally refittable
(LoRA switching, see `sdrt.engines.refit`), and a timing cache so rebuilds skip kernel timing.

Cache: engines live in the engine cache (`sdrt.engines.cache`) as `engines/tensorrt/<component>/<key16>/`
(`model.plan` and `build.json` with its sha256), keyed on the ONNX bytes, the settings, the profiles,
the TensorRT version and the GPU model (`tensorrt_cache`). A plan whose record does not match, whose
bytes are truncated or damaged, or that TensorRT refuses to deserialize is rebuilt with a warning,
never loaded. The timing cache is not part of the key: it only makes builds faster.

Load: every engine's named tensors must be the spec's, with its dtypes and directions, and it must hold
the profiles it was built with; then the engines run as `tensorrt_engine.TensorRTEngine` (binding,
alignment, CUDA graphs, refit), sharing one activation buffer sized for the largest. TensorRT's failures
(a shape or profile it refuses, a failed enqueue) are ValueErrors naming the component and the shapes.

Everything that imports tensorrt or touches CUDA does so inside functions, so this module imports
on a machine without either; `options()` and `load()` say what is missing.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sdrt.engines.base import BuildRecord, Networks
from sdrt.engines.cache import EngineCache, reading, require_onnx
from sdrt.engines.float32 import float32_name, float32_onnx
from sdrt.engines.options import make_options
from sdrt.engines.refit import WeightSource
from sdrt.engines.tensorrt_api import api_path
from sdrt.engines.tensorrt_build import NEEDS, TensorRTOptions, build_one, gpu_info, tensorrt, trt_logger
from sdrt.engines.tensorrt_cache import BACKEND, PLAN_FILE
from sdrt.engines.tensorrt_engine import ActivationMemory, CudaPlace, TensorRTEngine, bind_tensors, select_profile_on
from sdrt.engines.tensorrt_profiles import Profile, build_profiles
from sdrt.spec import ComponentSpec

if TYPE_CHECKING:
    import tensorrt as trt

log = logging.getLogger(__name__)

__all__ = [
    "NEEDS",
    "ActivationMemory",
    "CudaPlace",
    "TensorRTEngine",
    "TensorRTOptions",
    "bind_tensors",
    "build",
    "load",
    "load_engines",
    "options",
    "select_profile_on",
]


def options(**kwargs) -> TensorRTOptions:
    opts = make_options(TensorRTOptions, BACKEND, **kwargs)
    tensorrt()
    return opts


def build(path: str | os.PathLike, manifest: Networks, opts: TensorRTOptions) -> list[BuildRecord]:
    """Build every component's engine once, keyed by `cache_key`; reuse valid plans, rebuild invalid ones."""
    trt = tensorrt()
    artifact = Path(path)
    require_onnx(artifact, manifest, BACKEND)
    gpu = gpu_info(opts.torch_device)
    with torch.cuda.device(opts.torch_device):
        return [build_one(trt, gpu, artifact, manifest, name, opts) for name in manifest.components]


def load(path: str | os.PathLike, manifest: Networks, opts: TensorRTOptions) -> dict[str, TensorRTEngine]:
    """Engines for every component (built first where missing or invalid), sharing one activation buffer."""
    trt = tensorrt()
    return load_engines(trt, CudaPlace(opts.torch_device), Path(path), manifest, opts)


def load_engines(
    trt, place: CudaPlace, artifact: Path, manifest: Networks, opts: TensorRTOptions
) -> dict[str, TensorRTEngine]:
    """`load` with a given tensorrt module and place (the GPU, and how work is ordered on it)."""
    require_onnx(artifact, manifest, BACKEND)
    api = api_path(trt.__version__)
    with place.scope():
        runtime = trt.Runtime(trt_logger(trt))
        loaded = {
            name: _load_engine(trt, runtime, place, artifact, manifest, name, opts) for name in manifest.components
        }
        memory = ActivationMemory(max(api.device_memory_size(e) for e, _ in loaded.values()), place.device, api)
    engines = {}
    for name, (engine, profiles) in loaded.items():
        engines[name] = TensorRTEngine(
            trt, engine, manifest.components[name], manifest.ranges, place, profiles, memory, opts,
            onnx_path=artifact / manifest.files[name].path,
        )  # fmt: skip
        engines[name].float32_factory = _float32_factory(trt, runtime, place, artifact, manifest, name, opts)
        engines[name].weight_source = WeightSource(artifact, manifest, name, opts.cache_dir)
    return engines


def _load_engine(
    trt, runtime: trt.Runtime, place: CudaPlace, artifact: Path, manifest: Networks, name: str, opts: TensorRTOptions,
    **source: Any,
) -> tuple[trt.ICudaEngine, list[Profile]]:  # fmt: skip
    """(deserialized engine, profiles) of one component: built where missing, rebuilt once if TensorRT refuses it."""
    spec = manifest.components[name]
    profiles = build_profiles(spec, manifest.ranges, opts.profile)
    gpu = place.gpu
    record = build_one(trt, gpu, artifact, manifest, name, opts, **source)
    engine = _deserialize(runtime, Path(record.path), len(profiles))
    if engine is None:
        log.warning("TensorRT could not load the %s plan in %s; rebuilding it", name, record.path)
        record = build_one(trt, gpu, artifact, manifest, name, opts, force=True, **source)
        engine = _deserialize(runtime, Path(record.path), len(profiles))
        if engine is None:
            raise ValueError(f"TensorRT cannot load the {name} plan it has just built in {record.path}")
    _check_io(trt, engine, spec)
    return engine, profiles


def _float32_factory(
    trt, runtime: trt.Runtime, place: CudaPlace, artifact: Path, manifest: Networks, name: str, opts: TensorRTOptions
):
    """What builds the float32 copy of an fp16 component's engine, when the VAE guard first needs it."""

    def make() -> TensorRTEngine:
        cache = EngineCache.for_artifact(artifact, opts.cache_dir)
        source = float32_onnx(cache, artifact, name, manifest.files[name])
        api = api_path(trt.__version__)
        with place.scope():
            engine, profiles = _load_engine(
                trt, runtime, place, artifact, manifest, name, opts, source=source, engine_name=float32_name(name)
            )
            memory = ActivationMemory(api.device_memory_size(engine), place.device, api)  # sized for fp32 activations
        spec = manifest.components[name]
        return TensorRTEngine(trt, engine, spec, manifest.ranges, place, profiles, memory, opts, precision="fp32")

    return make


def _deserialize(runtime: trt.Runtime, directory: Path, profile_count: int) -> trt.ICudaEngine | None:
    """The engine in `directory`, or None when TensorRT refuses it or it has the wrong profiles."""
    with reading(directory):
        plan = (directory / PLAN_FILE).read_bytes()
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is not None and engine.num_optimization_profiles != profile_count:
        log.warning("%s has %d profiles, expected %d", directory, engine.num_optimization_profiles, profile_count)
        return None
    return engine


def _check_io(trt, engine: trt.ICudaEngine, spec: ComponentSpec) -> None:
    """The engine's named tensors must be exactly the spec's, with the spec's dtypes and directions."""
    names = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
    expected = {t.name: (t, trt.TensorIOMode.INPUT) for t in spec.inputs}
    expected.update({t.name: (t, trt.TensorIOMode.OUTPUT) for t in spec.outputs})
    if names != set(expected):
        raise ValueError(f"the {spec.name} engine has tensors {sorted(names)}; the manifest says {sorted(expected)}")
    for name, (tensor, mode) in expected.items():
        dtype = engine.get_tensor_dtype(name)
        actual = engine.get_tensor_mode(name)
        if actual != mode or _TORCH_DTYPES.get(dtype.name) != tensor.torch_dtype:
            raise ValueError(
                f"the {spec.name} engine's {name} is an {actual.name.lower()} of {dtype.name}; "
                f"the manifest says an {mode.name.lower()} of {tensor.dtype}"
            )


_TORCH_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "INT32": torch.int32, "INT64": torch.int64}
