"""TensorRT backend: fp16 engines built from the exported ONNX, run on torch CUDA tensors with CUDA graphs.

Build (`sdrt build ARTIFACT --backend tensorrt --device cuda`), through TensorRT's Python API:
parse the ONNX with `trt.OnnxParser`, allow FP16 kernels, add the optimization profiles derived from
the manifest's ranges (`tensorrt_profiles`: a static profile at the opt shapes for speed and/or a
dynamic one for the whole range), optionally mark the engine refittable (LoRA switching, see
`sdrt.engines.refit`), and reuse a timing cache so rebuilds skip kernel timing. SD 2.x UNets
(`upcast_attention`) keep their attention scores and softmax in fp32, as diffusers does.

Cache: engines live in `engines/tensorrt/<component>/<key16>/` (`model.plan` and `build.json`), keyed
on the ONNX bytes, the settings, the profiles, the TensorRT version and the GPU model
(`tensorrt_cache`). A plan whose record does not match, whose bytes are truncated or damaged, or
that TensorRT refuses to deserialize is rebuilt with a warning, never loaded. The timing cache is
not part of the key: it only makes builds faster (one file per TensorRT version and GPU).

Run, with TensorRT >= 10's named-tensor API:
- Inputs and outputs are torch CUDA tensors bound by address (`set_tensor_address`); outputs are
  allocated with torch at the shapes the spec resolves; nothing is copied through the host.
- The engine runs on torch's current stream (`execute_async_v3(current_stream)`), so torch's
  writes to the inputs come before it and torch's reads of the outputs after it, with no sync.
- All engines share one activation buffer, sized for the largest (`device_memory_size_v2`), since
  the components run one after another on one stream; contexts are created with user-managed memory.
- A call whose shapes are all at opt runs on the static profile, any other on the dynamic one
  (`set_optimization_profile_async`, then `set_input_shape` for each input).
- CUDA graphs are captured lazily, one per (profile, shapes): the first call at a new shape gets
  its own execution context with static input and output buffers, runs once outside the capture
  (the profile switch's one-time copies) and is captured into a `torch.cuda.CUDAGraph`; later calls
  at that shape copy the feeds into the static inputs, replay, and return clones of the outputs. A
  graph is tied to the state of the context it was captured from, hence one context per shape: a
  dynamic-shape engine keeps graph speed at every shape it has seen (the TensorRT and ONNX Runtime
  diffusion demos turn graphs off with dynamic shapes). A refit drops the captured graphs.

Everything that imports tensorrt or touches CUDA does so inside functions, so this module imports
on a machine without either; `options()` and `load()` say what is missing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sdrt.engines.base import BuildRecord, CheckedEngine
from sdrt.engines.cache import require_onnx
from sdrt.engines.options import make_options
from sdrt.engines.tensorrt_build import (
    BACKEND,
    NEEDS,
    TensorRTOptions,
    build_one,
    tensorrt,
    trt_logger,
)
from sdrt.engines.tensorrt_cache import PLAN_FILE
from sdrt.engines.tensorrt_profiles import Profile, build_profiles, select_profile
from sdrt.manifest import Manifest
from sdrt.spec import ComponentSpec, ShapeRanges

log = logging.getLogger(__name__)

__all__ = ["NEEDS", "ActivationMemory", "TensorRTEngine", "TensorRTOptions", "build", "load", "options"]


def options(**kwargs) -> TensorRTOptions:
    opts = make_options(TensorRTOptions, BACKEND, **kwargs)
    tensorrt()
    return opts


def build(path: str | os.PathLike, manifest: Manifest, opts: TensorRTOptions) -> list[BuildRecord]:
    """Build every component's engine once, keyed by `cache_key`; reuse valid plans, rebuild invalid ones."""
    artifact = Path(path)
    require_onnx(artifact, manifest, BACKEND)
    with torch.cuda.device(opts.torch_device):
        return [build_one(artifact, manifest, name, opts) for name in manifest.components]


def load(path: str | os.PathLike, manifest: Manifest, opts: TensorRTOptions) -> dict[str, TensorRTEngine]:
    """Engines for every component (built first where missing or invalid), sharing one activation buffer."""
    trt = tensorrt()
    artifact = Path(path)
    require_onnx(artifact, manifest, BACKEND)
    device = opts.torch_device
    loaded = {}
    with torch.cuda.device(device):
        runtime = trt.Runtime(trt_logger())
        for name, spec in manifest.components.items():
            profiles = build_profiles(spec, manifest.ranges, opts.profile)
            record = build_one(artifact, manifest, name, opts)
            engine = _deserialize(runtime, Path(record.path), len(profiles))
            if engine is None:
                log.warning("TensorRT could not load the %s plan in %s; rebuilding it", name, record.path)
                record = build_one(artifact, manifest, name, opts, force=True)
                engine = _deserialize(runtime, Path(record.path), len(profiles))
                if engine is None:
                    raise RuntimeError(f"TensorRT cannot load the {name} plan it has just built in {record.path}")
            _check_io(engine, spec)
            loaded[name] = (engine, profiles)
        memory = ActivationMemory(max(_device_memory_size(e) for e, _ in loaded.values()), device)
    return {
        name: TensorRTEngine(
            engine,
            manifest.components[name],
            manifest.ranges,
            device,
            profiles,
            memory,
            cuda_graphs=opts.cuda_graphs,
            onnx_path=artifact / manifest.files[name].path,
        )
        for name, (engine, profiles) in loaded.items()
    }


class ActivationMemory:
    """One device buffer for the activations of every engine: they run one after another on one stream."""

    def __init__(self, size: int, device: torch.device) -> None:
        self.size = max(int(size), 1)
        # torch's allocator aligns blocks to 512 bytes; TensorRT asks for 256
        self.buffer = torch.empty(self.size, dtype=torch.uint8, device=device)

    def attach(self, context) -> None:
        """Give a context created with user-managed memory this buffer."""
        if hasattr(context, "set_device_memory"):  # TensorRT >= 10.1
            context.set_device_memory(self.buffer.data_ptr(), self.size)
        else:
            context.device_memory = self.buffer.data_ptr()


@dataclass
class _GraphRun:
    """A captured engine call at one (profile, shapes): its own context, static buffers and graph."""

    context: Any
    inputs: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]
    graph: Any = None  # torch.cuda.CUDAGraph


@dataclass
class _Eager:
    """The context for runs without CUDA graphs, and the profile it has selected."""

    context: Any
    profile: int = -1


class TensorRTEngine(CheckedEngine):
    """A deserialized TensorRT engine behind the engine protocol, on torch CUDA tensors and torch's stream."""

    def __init__(
        self,
        engine,
        spec: ComponentSpec,
        ranges: ShapeRanges,
        device: torch.device,
        profiles: list[Profile],
        memory: ActivationMemory,
        cuda_graphs: bool = True,
        onnx_path: Path | None = None,
    ) -> None:
        super().__init__(spec, ranges, device)
        self.cuda_engine = engine
        self.profiles = profiles
        self.memory = memory
        self.cuda_graphs = cuda_graphs
        self.onnx_path = onnx_path  # source of the weights a refit must restate but no torch weight maps
        self._graphs: dict[tuple, _GraphRun] = {}
        self._eager: _Eager | None = None
        self._onnx_arrays: dict[str, np.ndarray] = {}

    def _run(self, feeds: Mapping[str, torch.Tensor], dims: Mapping[str, int]) -> dict[str, torch.Tensor]:
        profile = select_profile(self.profiles, dims, self.spec.name)
        with torch.cuda.device(self.device):
            if self.cuda_graphs:
                return self._run_graph(profile, feeds, dims)
            return self._run_eager(profile, feeds, dims)

    def _run_eager(self, profile: int, feeds: Mapping[str, torch.Tensor], dims: Mapping[str, int]):
        stream = torch.cuda.current_stream(self.device).cuda_stream
        if self._eager is None:
            self._eager = _Eager(self._new_context())
        eager = self._eager
        if eager.profile != profile:
            _ok(eager.context.set_optimization_profile_async(profile, stream), f"select profile {profile}", self)
            eager.profile = profile
        inputs = {name: feeds[name].contiguous() for name in self.spec.input_names}
        outputs = self._empty_outputs(dims)
        self._bind(eager.context, inputs, outputs)
        _ok(eager.context.execute_async_v3(stream), "execute", self)
        # the caching allocator reuses freed blocks in stream order, so the inputs may be released now
        return outputs

    def _run_graph(self, profile: int, feeds: Mapping[str, torch.Tensor], dims: Mapping[str, int]):
        key = (profile, tuple(sorted(dims.items())))
        run = self._graphs.get(key)
        if run is None:
            run = self._capture(profile, feeds, dims)
            self._graphs[key] = run
        for name, tensor in feeds.items():
            run.inputs[name].copy_(tensor)
        run.graph.replay()  # on the current stream, after the copies
        return {name: tensor.clone() for name, tensor in run.outputs.items()}

    def _capture(self, profile: int, feeds: Mapping[str, torch.Tensor], dims: Mapping[str, int]) -> _GraphRun:
        log.debug("capturing a CUDA graph for %s at %s (profile %d)", self.spec.name, dict(dims), profile)
        current = torch.cuda.current_stream(self.device)
        context = self._new_context()
        _ok(context.set_optimization_profile_async(profile, current.cuda_stream), f"select profile {profile}", self)
        run = _GraphRun(context, {n: t.clone().contiguous() for n, t in feeds.items()}, self._empty_outputs(dims))
        self._bind(context, run.inputs, run.outputs)
        # one run outside the capture: it performs the profile switch and any lazy one-time work
        _ok(context.execute_async_v3(current.cuda_stream), "execute", self)
        graph = torch.cuda.CUDAGraph()
        capture = torch.cuda.Stream(self.device)
        capture.wait_stream(current)
        with torch.cuda.graph(graph, stream=capture, capture_error_mode="thread_local"):
            _ok(context.execute_async_v3(capture.cuda_stream), "capture", self)
        current.wait_stream(capture)
        run.graph = graph
        return run

    def _new_context(self):
        trt = tensorrt()
        context = self.cuda_engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if context is None:
            raise RuntimeError(f"TensorRT could not create an execution context for {self.spec.name}")
        self.memory.attach(context)
        return context

    def _empty_outputs(self, dims: Mapping[str, int]) -> dict[str, torch.Tensor]:
        shapes = self.spec.output_shapes(dims)
        return {t.name: torch.empty(shapes[t.name], dtype=t.torch_dtype, device=self.device) for t in self.spec.outputs}

    def _bind(self, context, inputs: Mapping[str, torch.Tensor], outputs: Mapping[str, torch.Tensor]) -> None:
        for name, tensor in inputs.items():
            _ok(context.set_input_shape(name, tuple(tensor.shape)), f"set input shape {name}", self)
            _ok(context.set_tensor_address(name, tensor.data_ptr()), f"bind {name}", self)
        for name, tensor in outputs.items():
            _ok(context.set_tensor_address(name, tensor.data_ptr()), f"bind {name}", self)

    @property
    def refittable(self) -> bool:
        return bool(self.cuda_engine.refittable)

    def refit(self, weights: Mapping[str, np.ndarray]) -> None:
        """Replace the engine's weights by name (ONNX initializer names), in place.

        Every weight given is set, changed or not, so the engine after a refit depends only on the
        weights given, never on earlier refits. Weights TensorRT needs alongside them (folded into
        the same layer) are restated from the ONNX. Raises ValueError for an engine built without
        refit, or when a given weight differs from one the engine cannot refit.
        """
        trt = tensorrt()
        if not self.refittable:
            raise ValueError(f"the {self.spec.name} engine was built without refit; rebuild it with --refit")
        torch.cuda.current_stream(self.device).synchronize()  # no run may use the weights while they change
        refitter = trt.Refitter(self.cuda_engine, trt_logger())
        refittable = set(refitter.get_all_weights())
        baked = [n for n in weights if n not in refittable]
        originals = self._onnx_values(baked)
        changed = [n for n in baked if n not in originals or not np.array_equal(originals[n], weights[n])]
        if changed:
            raise ValueError(
                f"the {self.spec.name} engine cannot refit {', '.join(changed[:5])}"
                f"{' ...' if len(changed) > 5 else ''}: TensorRT folded them into other weights"
            )
        keep = []  # arrays must outlive refit_cuda_engine
        for name in sorted(set(weights) & refittable):
            keep.append(self._set_weight(trt, refitter, name, weights[name]))
        missing = list(refitter.get_missing_weights())
        restated = self._onnx_values(missing)
        for name in missing:
            if name not in restated:
                raise RuntimeError(
                    f"{self.spec.name} refit: TensorRT needs weight {name}, which the ONNX does not hold"
                )
            keep.append(self._set_weight(trt, refitter, name, restated[name]))
        with torch.cuda.device(self.device):
            _ok(refitter.refit_cuda_engine(), "refit", self)
        self._graphs.clear()  # recapture: a graph may hold the addresses of the weights it was captured with
        log.info(
            "refit %d weights of %s (%d restated from the ONNX)",
            len(weights) - len(baked),
            self.spec.name,
            len(missing),
        )

    def _set_weight(self, trt, refitter, name: str, value: np.ndarray) -> np.ndarray:
        array = np.ascontiguousarray(value)
        if hasattr(refitter, "get_weights_prototype"):  # the dtype TensorRT stores the weight in
            array = np.ascontiguousarray(array.astype(trt.nptype(refitter.get_weights_prototype(name).dtype)))
        _ok(refitter.set_named_weights(name, trt.Weights(array)), f"set weight {name}", self)
        return array

    def _onnx_values(self, names: list[str]) -> dict[str, np.ndarray]:
        """Initializers of the source ONNX by name, read once and kept for later refits."""
        wanted = [n for n in names if n not in self._onnx_arrays]
        if wanted and self.onnx_path is not None:
            import onnx
            from onnx import numpy_helper

            model = onnx.load(str(self.onnx_path))
            found = {i.name: i for i in model.graph.initializer if i.name in wanted}
            self._onnx_arrays.update({n: numpy_helper.to_array(t) for n, t in found.items()})
        return {n: self._onnx_arrays[n] for n in names if n in self._onnx_arrays}


def _ok(result: bool, what: str, engine: TensorRTEngine) -> None:
    if not result:
        raise RuntimeError(f"TensorRT failed to {what} for {engine.spec.name} (see the log above)")


def _deserialize(runtime, directory: Path, profile_count: int):
    """The engine in `directory`, or None when TensorRT refuses it or it has the wrong profiles."""
    engine = runtime.deserialize_cuda_engine((directory / PLAN_FILE).read_bytes())
    if engine is not None and engine.num_optimization_profiles != profile_count:
        log.warning("%s has %d profiles, expected %d", directory, engine.num_optimization_profiles, profile_count)
        return None
    return engine


def _check_io(engine, spec: ComponentSpec) -> None:
    """The engine's named tensors must be exactly the spec's, with the spec's dtypes and directions."""
    trt = tensorrt()
    names = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
    expected = {t.name: (t, trt.TensorIOMode.INPUT) for t in spec.inputs}
    expected.update({t.name: (t, trt.TensorIOMode.OUTPUT) for t in spec.outputs})
    if names != set(expected):
        raise ValueError(f"the {spec.name} engine has tensors {sorted(names)}; the manifest says {sorted(expected)}")
    for name, (tensor, mode) in expected.items():
        dtype = _TORCH_DTYPES.get(engine.get_tensor_dtype(name).name)
        if engine.get_tensor_mode(name) != mode or dtype != tensor.torch_dtype:
            raise ValueError(f"the {spec.name} engine's {name} is {dtype}; the manifest says {tensor.dtype}")


_TORCH_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "INT32": torch.int32, "INT64": torch.int64}


def _device_memory_size(engine) -> int:
    return int(getattr(engine, "device_memory_size_v2", engine.device_memory_size))
