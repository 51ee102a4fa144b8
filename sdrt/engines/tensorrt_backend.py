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

Run, with the named-tensor API (`set_input_shape`, `set_tensor_address`, `execute_async_v3`):
- Inputs and outputs are torch CUDA tensors bound by address; outputs are allocated with torch at the
  shapes the spec resolves; nothing is copied through the host.
- Engines enqueue on the device's side stream (`cuda_graphs.side_stream`), not the legacy default
  stream, ordered against torch's current stream with `wait_stream` both ways.
- All engines share one activation buffer, sized for the largest, since the components run one after
  another on one stream; contexts are created with user-managed memory (`tensorrt_api` says how on
  each TensorRT version).
- A call whose shapes are all at opt runs on the static profile, any other on the dynamic one.
- CUDA graphs are captured per (profile, shapes) into the device's shared pool, at most
  `max_cuda_graphs` per engine (least recently used dropped): each graph has its own execution context
  and static buffers, runs once outside the capture, then is captured; later calls copy the feeds in,
  replay, and return clones of the outputs. A capture that fails is reported whole (after the capture
  ends, from TensorRT's error) and that shape runs eagerly from then on. A refit drops the graphs.
- TensorRT's failures (a shape or profile it refuses, a failed enqueue) are ValueErrors naming the
  component and the shapes.

Everything that imports tensorrt or touches CUDA does so inside functions, so this module imports
on a machine without either; `options()` and `load()` say what is missing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sdrt.engines.base import BuildRecord, CheckedEngine, Networks
from sdrt.engines.cache import EngineCache, reading, require_onnx
from sdrt.engines.cuda_graphs import GraphCache, GraphCaptureError, capture, side_stream
from sdrt.engines.float32 import float32_name, float32_onnx
from sdrt.engines.options import make_options
from sdrt.engines.refit import WeightSource
from sdrt.engines.tensorrt_api import TensorRTPath, api_path
from sdrt.engines.tensorrt_build import NEEDS, TensorRTOptions, build_one, guarded, tensorrt, trt_logger
from sdrt.engines.tensorrt_cache import BACKEND, PLAN_FILE
from sdrt.engines.tensorrt_profiles import Profile, build_profiles, select_profile
from sdrt.spec import ComponentSpec, ShapeRanges

log = logging.getLogger(__name__)

__all__ = ["NEEDS", "ActivationMemory", "TensorRTEngine", "TensorRTOptions", "build", "load", "options"]


def options(**kwargs) -> TensorRTOptions:
    opts = make_options(TensorRTOptions, BACKEND, **kwargs)
    tensorrt()
    return opts


def build(path: str | os.PathLike, manifest: Networks, opts: TensorRTOptions) -> list[BuildRecord]:
    """Build every component's engine once, keyed by `cache_key`; reuse valid plans, rebuild invalid ones."""
    artifact = Path(path)
    require_onnx(artifact, manifest, BACKEND)
    with torch.cuda.device(opts.torch_device):
        return [build_one(artifact, manifest, name, opts) for name in manifest.components]


def load(path: str | os.PathLike, manifest: Networks, opts: TensorRTOptions) -> dict[str, TensorRTEngine]:
    """Engines for every component (built first where missing or invalid), sharing one activation buffer."""
    trt = tensorrt()
    artifact = Path(path)
    require_onnx(artifact, manifest, BACKEND)
    device, api = opts.torch_device, api_path(trt.__version__)
    with torch.cuda.device(device):
        runtime = trt.Runtime(trt_logger(trt))
        loaded = {name: _load_engine(runtime, artifact, manifest, name, opts) for name in manifest.components}
        memory = ActivationMemory(max(api.device_memory_size(e) for e, _ in loaded.values()), device, api)
    engines = {}
    for name, (engine, profiles) in loaded.items():
        engines[name] = TensorRTEngine(
            engine, manifest.components[name], manifest.ranges, device, profiles, memory, opts,
            onnx_path=artifact / manifest.files[name].path,
        )  # fmt: skip
        engines[name].float32_factory = _float32_factory(runtime, artifact, manifest, name, opts)
        engines[name].weight_source = WeightSource(artifact, manifest, name, opts.cache_dir)
    return engines


def _load_engine(runtime, artifact: Path, manifest: Networks, name: str, opts: TensorRTOptions, **source: Any):
    """(deserialized engine, profiles) of one component: built where missing, rebuilt once if TensorRT refuses it."""
    spec = manifest.components[name]
    profiles = build_profiles(spec, manifest.ranges, opts.profile)
    record = build_one(artifact, manifest, name, opts, **source)
    engine = _deserialize(runtime, Path(record.path), len(profiles))
    if engine is None:
        log.warning("TensorRT could not load the %s plan in %s; rebuilding it", name, record.path)
        record = build_one(artifact, manifest, name, opts, force=True, **source)
        engine = _deserialize(runtime, Path(record.path), len(profiles))
        if engine is None:
            raise ValueError(f"TensorRT cannot load the {name} plan it has just built in {record.path}")
    _check_io(engine, spec)
    return engine, profiles


def _float32_factory(runtime, artifact: Path, manifest: Networks, name: str, opts: TensorRTOptions):
    """What builds the float32 copy of an fp16 component's engine, when the VAE guard first needs it."""

    def make() -> TensorRTEngine:
        cache = EngineCache.for_artifact(artifact, opts.cache_dir)
        source = float32_onnx(cache, artifact, name, manifest.files[name])
        trt = tensorrt()
        device, api = opts.torch_device, api_path(trt.__version__)
        with torch.cuda.device(device):
            engine, profiles = _load_engine(
                runtime, artifact, manifest, name, opts, source=source, engine_name=float32_name(name)
            )
            memory = ActivationMemory(api.device_memory_size(engine), device, api)  # sized for fp32 activations
        spec = manifest.components[name]
        return TensorRTEngine(engine, spec, manifest.ranges, device, profiles, memory, opts, precision="fp32")

    return make


class ActivationMemory:
    """One device buffer for the activations of every engine: they run one after another on one stream."""

    def __init__(self, size: int, device: torch.device, api: TensorRTPath) -> None:
        self.size = max(int(size), 1)
        self.api = api
        # torch's allocator aligns blocks to 512 bytes; TensorRT asks for 256
        self.buffer = torch.empty(self.size, dtype=torch.uint8, device=device)

    def attach(self, context) -> None:
        """Give a context created with user-managed memory this buffer."""
        self.api.attach_memory(context, self.buffer.data_ptr(), self.size)


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
    """A deserialized TensorRT engine behind the engine protocol, on torch CUDA tensors and a side stream."""

    def __init__(
        self,
        engine,
        spec: ComponentSpec,
        ranges: ShapeRanges,
        device: torch.device,
        profiles: list[Profile],
        memory: ActivationMemory,
        opts: TensorRTOptions,
        onnx_path: Path | None = None,
        precision: str | None = None,
    ) -> None:
        super().__init__(spec, ranges, device)
        self.cuda_engine = engine
        self.profiles = profiles
        self.memory = memory
        self.cuda_graphs = opts.cuda_graphs
        self.cache_dir = opts.cache_dir  # where LoRA weight maps go too
        self.onnx_path = onnx_path  # source of the weights a refit must restate but no torch weight maps
        self.precision = precision or spec.attributes.get("precision", "fp32")
        self.graphs: GraphCache[_GraphRun] = GraphCache(opts.max_cuda_graphs, spec.name)
        self.float32_factory: Callable[[], TensorRTEngine] | None = None
        self._eager: _Eager | None = None
        self._onnx_arrays: dict[str, np.ndarray] = {}
        self.weight_source: WeightSource | None = None  # the ONNX graph a refit from torch weights maps through

    def _run(self, feeds: Mapping[str, torch.Tensor], dims: Mapping[str, int]) -> dict[str, torch.Tensor]:
        profile = select_profile(self.profiles, dims, self.spec.name)
        with torch.cuda.device(self.device):
            key = (profile, tuple(sorted(dims.items())))
            if self.cuda_graphs and key not in self.graphs.failed:
                return self._run_graph(key, profile, feeds, dims)
            return self._run_eager(profile, feeds, dims)

    def _run_eager(self, profile: int, feeds: Mapping[str, torch.Tensor], dims: Mapping[str, int]):
        current, stream = torch.cuda.current_stream(self.device), side_stream(self.device)
        if self._eager is None:
            self._eager = _Eager(self._new_context())
        eager = self._eager
        inputs = {name: feeds[name].contiguous() for name in self.spec.input_names}
        outputs = self._empty_outputs(dims)
        stream.wait_stream(current)  # the inputs' writes (and the outputs' allocation) come first
        if eager.profile != profile:
            self._select_profile(eager.context, profile, stream)
            eager.profile = profile
        self._bind(eager.context, inputs, outputs, dims)
        self._execute(eager.context, stream, dims)
        for tensor in (*inputs.values(), *outputs.values()):
            tensor.record_stream(stream)  # not reused by the allocator before the engine is done with it
        current.wait_stream(stream)  # torch's reads of the outputs come after
        return outputs

    def _run_graph(self, key: tuple, profile: int, feeds: Mapping[str, torch.Tensor], dims: Mapping[str, int]):
        run = self.graphs.get(key)
        if run is None:
            try:
                run = self._capture(profile, feeds, dims)
            except GraphCaptureError as exc:
                self.graphs.fail(key, exc)
                return self._run_eager(profile, feeds, dims)
            self.graphs.put(key, run)
        for name, tensor in feeds.items():
            run.inputs[name].copy_(tensor)
        run.graph.replay()  # on the current stream, after the copies
        return {name: tensor.clone() for name, tensor in run.outputs.items()}

    def _capture(self, profile: int, feeds: Mapping[str, torch.Tensor], dims: Mapping[str, int]) -> _GraphRun:
        log.debug("capturing a CUDA graph for %s at %s (profile %d)", self.spec.name, dict(dims), profile)
        current, stream = torch.cuda.current_stream(self.device), side_stream(self.device)
        context = self._new_context()
        run = _GraphRun(context, {n: t.clone().contiguous() for n, t in feeds.items()}, self._empty_outputs(dims))
        stream.wait_stream(current)
        self._select_profile(context, profile, stream)
        self._bind(context, run.inputs, run.outputs, dims)
        # one run outside the capture: it performs the profile switch and any lazy one-time work
        self._execute(context, stream, dims)
        run.graph, _ = capture(lambda: context.execute_async_v3(stream.cuda_stream), self.device, stream)
        current.wait_stream(stream)
        return run

    def _new_context(self):
        trt = tensorrt()
        context = self.cuda_engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if context is None:
            raise ValueError(f"TensorRT could not create an execution context for {self.spec.name}")
        self.memory.attach(context)
        return context

    def _empty_outputs(self, dims: Mapping[str, int]) -> dict[str, torch.Tensor]:
        shapes = self.spec.output_shapes(dims)
        return {t.name: torch.empty(shapes[t.name], dtype=t.torch_dtype, device=self.device) for t in self.spec.outputs}

    def _select_profile(self, context, profile: int, stream: torch.cuda.Stream) -> None:
        select_profile_on(context, profile, stream.cuda_stream, self.spec.name, self.profiles)

    def _bind(self, context, inputs: Mapping[str, torch.Tensor], outputs: Mapping[str, torch.Tensor], dims) -> None:
        bind_tensors(context, inputs, outputs, self.spec.name)

    def _execute(self, context, stream: torch.cuda.Stream, dims: Mapping[str, int]) -> None:
        guarded(
            lambda: context.execute_async_v3(stream.cuda_stream),
            f"TensorRT failed to run the {self.spec.name} engine at {dict(dims)}",
        )

    def float32_copy(self) -> TensorRTEngine:
        """This network computing in float32: itself for an fp32 graph, else an engine of its upcast graph."""
        if self.precision == "fp32" or self.float32_factory is None:
            return self
        return self.float32_factory()

    @property
    def refittable(self) -> bool:
        return bool(self.cuda_engine.refittable)

    def refit_from(self, module: nn.Module, changed: Collection[str] = ()) -> None:
        """Refit to `module`'s parameters (the network's torch module, a LoRA fused in) through the weight map."""
        if self.weight_source is None:
            raise ValueError(f"the {self.spec.name} engine does not know the ONNX graph it was built from")
        self.weight_source.refit(self, module, changed)

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
        side_stream(self.device).synchronize()
        refitter = trt.Refitter(self.cuda_engine, trt_logger(trt))
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
                raise ValueError(f"{self.spec.name} refit: TensorRT needs weight {name}, which the ONNX does not hold")
            keep.append(self._set_weight(trt, refitter, name, restated[name]))
        with torch.cuda.device(self.device):
            guarded(refitter.refit_cuda_engine, f"TensorRT failed to refit the {self.spec.name} engine")
        self.graphs.clear()  # recapture: a graph may hold the addresses of the weights it was captured with
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
        guarded(lambda: refitter.set_named_weights(name, trt.Weights(array)), f"TensorRT refused weight {name}")
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


def select_profile_on(context, profile: int, stream: int, component: str, profiles: list[Profile]) -> None:
    """Switch `context` to optimization profile `profile`; ValueError naming it when TensorRT refuses."""
    guarded(
        lambda: context.set_optimization_profile_async(profile, stream),
        f"TensorRT refused to switch {component} to its {profiles[profile].kind} profile (index {profile})",
    )


def bind_tensors(
    context, inputs: Mapping[str, torch.Tensor], outputs: Mapping[str, torch.Tensor], component: str
) -> None:
    """Set every input's shape and every tensor's address; ValueError naming the tensor and shape refused."""
    for name, tensor in inputs.items():
        shape = tuple(tensor.shape)
        guarded(
            lambda name=name, shape=shape: context.set_input_shape(name, shape),
            f"TensorRT refused input {name} of {component} at shape {list(shape)} (outside its profile?)",
        )
    for name, tensor in (*inputs.items(), *outputs.items()):
        guarded(
            lambda name=name, tensor=tensor: context.set_tensor_address(name, tensor.data_ptr()),
            f"TensorRT refused the address of {component}'s {name}",
        )


def _deserialize(runtime, directory: Path, profile_count: int):
    """The engine in `directory`, or None when TensorRT refuses it or it has the wrong profiles."""
    with reading(directory):
        plan = (directory / PLAN_FILE).read_bytes()
    engine = runtime.deserialize_cuda_engine(plan)
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
