"""A deserialized TensorRT engine behind the engine protocol: binding, execution, CUDA graphs, refit.

- Inputs and outputs are torch tensors bound by address (`set_input_shape`, `set_tensor_address`,
  `execute_async_v3`). TensorRT requires 256-byte aligned addresses: a feed that is not (a slice
  `call_in_chunks` cut at a batch row whose offset is not a multiple of 256 bytes, e.g. 520x520 latents)
  is copied first; outputs are allocated aligned.
- Before a run, the output shapes TensorRT will write (`get_tensor_shape` once the input shapes are set)
  must be the ones the spec gave the output buffers: anything else is a ValueError, never a write past a buffer.
- Work is ordered by a `CudaPlace`: enqueued on the device's side stream after torch's current stream's
  work, torch's later work after it (`cuda_graphs.side_stream`).
- All engines of a pipeline share one activation buffer (`ActivationMemory`), since they run one after
  another on one stream; contexts are created with user-managed memory (`tensorrt_api` says how on each
  TensorRT version).
- CUDA graphs are captured per (profile, shapes) into the device's shared pool, at most `max_cuda_graphs`
  per engine (least recently used dropped): each graph has its own execution context and static buffers,
  runs once outside the capture, then is captured; later calls copy the feeds in, replay, and return clones
  of the outputs. A capture that fails is reported whole and that shape runs eagerly from then on.
- A refit replaces weights by name in place and drops the graphs.

Never imports tensorrt: the engine keeps the module it was loaded with. The `trt.X` annotations name
TensorRT's classes for readers and for tests/engines/test_tensorrt_names.py, which checks every name reached
against the real bindings of each supported version.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from sdrt.engines.base import CheckedEngine, indexed
from sdrt.engines.cuda_graphs import GraphCache, GraphCaptureError, capture, side_stream
from sdrt.engines.refit import WeightSource
from sdrt.engines.tensorrt_api import TensorRTPath
from sdrt.engines.tensorrt_build import TensorRTOptions, gpu_info, guarded, trt_logger
from sdrt.engines.tensorrt_cache import GpuInfo
from sdrt.engines.tensorrt_profiles import Profile, select_profile
from sdrt.spec import ComponentSpec, ShapeRanges

if TYPE_CHECKING:
    import tensorrt as trt

log = logging.getLogger(__name__)

ALIGNMENT = 256  # bytes: the least alignment `IExecutionContext.set_tensor_address` accepts


class CudaPlace:
    """The GPU an engine runs on, and how its work is ordered against torch's."""

    def __init__(self, device: torch.device) -> None:
        self.device = indexed(device)

    @property
    def gpu(self) -> GpuInfo:
        return gpu_info(self.device)

    def scope(self) -> contextlib.AbstractContextManager:
        """Make the engine's device current (TensorRT creates its objects on the current device)."""
        return torch.cuda.device(self.device)

    @contextlib.contextmanager
    def enqueue(self) -> Iterator[int]:
        """The side stream's handle, to enqueue on after torch's queued work; torch's later work waits for it."""
        current, stream = torch.cuda.current_stream(self.device), side_stream(self.device)
        stream.wait_stream(current)
        yield stream.cuda_stream
        current.wait_stream(stream)

    def keep(self, tensors: Iterable[torch.Tensor]) -> None:
        """Keep the allocator from reusing these tensors' memory before the side stream is done with them."""
        stream = side_stream(self.device)
        for tensor in tensors:
            tensor.record_stream(stream)

    def capture(self, enqueue: Callable[[int], Any]) -> Any:
        """A CUDA graph of the work `enqueue(stream handle)` queues, captured on the side stream."""
        stream = side_stream(self.device)
        graph, _ = capture(lambda: enqueue(stream.cuda_stream), self.device, stream)
        return graph

    def synchronize(self) -> None:
        """Wait for everything queued on the device's current and side streams."""
        torch.cuda.current_stream(self.device).synchronize()
        side_stream(self.device).synchronize()


def aligned_empty(shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialized contiguous tensor whose address TensorRT accepts (256-byte aligned)."""
    out = torch.empty(tuple(shape), dtype=dtype, device=device)
    if out.data_ptr() % ALIGNMENT == 0:
        return out  # always, from torch's CUDA allocator (512-byte blocks)
    itemsize = out.element_size()
    flat = torch.empty(out.numel() + ALIGNMENT // itemsize, dtype=dtype, device=device)
    offset = (-flat.data_ptr() % ALIGNMENT) // itemsize
    return flat[offset : offset + out.numel()].view(tuple(shape))


def aligned(tensor: torch.Tensor, copy: bool = False) -> torch.Tensor:
    """`tensor` when it is contiguous and 256-byte aligned (and no `copy` is asked for), else an aligned copy."""
    if not copy and tensor.is_contiguous() and tensor.data_ptr() % ALIGNMENT == 0:
        return tensor
    out = aligned_empty(tensor.shape, tensor.dtype, tensor.device)
    out.copy_(tensor)
    return out


class ActivationMemory:
    """One device buffer for the activations of every engine: they run one after another on one stream."""

    def __init__(self, size: int, device: torch.device, api: TensorRTPath) -> None:
        self.size = max(int(size), 1)
        self.api = api
        self.buffer = aligned_empty((self.size,), torch.uint8, device)

    def attach(self, context: trt.IExecutionContext) -> None:
        """Give a context created with user-managed memory this buffer."""
        self.api.attach_memory(context, self.buffer.data_ptr(), self.size)


@dataclass
class _GraphRun:
    """A captured engine call at one (profile, shapes): its own context, static buffers and graph."""

    context: trt.IExecutionContext
    inputs: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]
    graph: Any = None  # torch.cuda.CUDAGraph


@dataclass
class _Eager:
    """The context for runs without CUDA graphs, and the profile it has selected."""

    context: trt.IExecutionContext
    profile: int = -1


class TensorRTEngine(CheckedEngine):
    """A deserialized TensorRT engine behind the engine protocol, on torch tensors and a side stream."""

    def __init__(
        self,
        trt,
        engine: trt.ICudaEngine,
        spec: ComponentSpec,
        ranges: ShapeRanges,
        place: CudaPlace,
        profiles: list[Profile],
        memory: ActivationMemory,
        opts: TensorRTOptions,
        onnx_path: Path | None = None,
        precision: str | None = None,
    ) -> None:
        super().__init__(spec, ranges, place.device)
        self.trt = trt  # the tensorrt module the engine was loaded with
        self.cuda_engine = engine
        self.place = place
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
        with self.place.scope():
            key = (profile, tuple(sorted(dims.items())))
            if self.cuda_graphs and key not in self.graphs.failed:
                return self._run_graph(key, profile, feeds, dims)
            return self._run_eager(profile, feeds, dims)

    def _run_eager(self, profile: int, feeds: Mapping[str, torch.Tensor], dims: Mapping[str, int]):
        if self._eager is None:
            self._eager = _Eager(self._new_context())
        eager = self._eager
        inputs = {name: aligned(feeds[name]) for name in self.spec.input_names}
        outputs = self._empty_outputs(dims)
        with self.place.enqueue() as stream:  # after the inputs' writes and the outputs' allocation
            if eager.profile != profile:
                select_profile_on(eager.context, profile, stream, self.spec.name, self.profiles)
                eager.profile = profile
            bind_tensors(eager.context, inputs, outputs, self.spec.name)
            self._execute(eager.context, stream, dims)
            self.place.keep([*inputs.values(), *outputs.values()])
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
        context = self._new_context()
        inputs = {name: aligned(feeds[name], copy=True) for name in self.spec.input_names}
        run = _GraphRun(context, inputs, self._empty_outputs(dims))
        with self.place.enqueue() as stream:
            select_profile_on(context, profile, stream, self.spec.name, self.profiles)
            bind_tensors(context, run.inputs, run.outputs, self.spec.name)
            # one run outside the capture: it performs the profile switch and any lazy one-time work
            self._execute(context, stream, dims)
            run.graph = self.place.capture(context.execute_async_v3)
        return run

    def _new_context(self) -> trt.IExecutionContext:
        trt = self.trt
        context = self.cuda_engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if context is None:
            raise ValueError(f"TensorRT could not create an execution context for {self.spec.name}")
        self.memory.attach(context)
        return context

    def _empty_outputs(self, dims: Mapping[str, int]) -> dict[str, torch.Tensor]:
        shapes = self.spec.output_shapes(dims)
        return {t.name: aligned_empty(shapes[t.name], t.torch_dtype, self.device) for t in self.spec.outputs}

    def _execute(self, context: trt.IExecutionContext, stream: int, dims: Mapping[str, int]) -> None:
        guarded(
            lambda: context.execute_async_v3(stream),
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
        refit, when a given weight differs from one the engine cannot refit, or when TensorRT keeps
        a weight in a type numpy has none for (bf16, fp8).
        """
        trt = self.trt
        if not self.refittable:
            raise ValueError(f"the {self.spec.name} engine was built without refit; rebuild it with --refit")
        self.place.synchronize()  # no run may use the weights while they change
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
        with self.place.scope():
            guarded(refitter.refit_cuda_engine, f"TensorRT failed to refit the {self.spec.name} engine")
        self.graphs.clear()  # recapture: a graph may hold the addresses of the weights it was captured with
        log.info(
            "refit %d weights of %s (%d restated from the ONNX)",
            len(weights) - len(baked),
            self.spec.name,
            len(missing),
        )

    def _set_weight(self, trt, refitter: trt.Refitter, name: str, value: np.ndarray) -> np.ndarray:
        """Hand TensorRT one weight in the type it keeps it in; the array, which must outlive the refit."""
        prototype = refitter.get_weights_prototype(name)
        try:
            dtype = trt.nptype(prototype.dtype)
        except TypeError as exc:  # TensorRT's nptype knows no numpy type for bf16 and fp8
            raise ValueError(
                f"{self.spec.name} refit: TensorRT keeps weight {name} as {prototype.dtype.name}, which has no "
                "numpy type; sdrt refits float32 and float16 weights only (export with --precision fp16 or fp32)"
            ) from exc
        array = np.ascontiguousarray(np.asarray(value).astype(dtype))
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


def select_profile_on(
    context: trt.IExecutionContext, profile: int, stream: int, component: str, profiles: list[Profile]
) -> None:
    """Switch `context` to optimization profile `profile`; ValueError naming it when TensorRT refuses."""
    guarded(
        lambda: context.set_optimization_profile_async(profile, stream),
        f"TensorRT refused to switch {component} to its {profiles[profile].kind} profile (index {profile})",
    )


def bind_tensors(
    context: trt.IExecutionContext,
    inputs: Mapping[str, torch.Tensor],
    outputs: Mapping[str, torch.Tensor],
    component: str,
) -> None:
    """Set every input's shape and every tensor's address, after checking the output buffers' shapes.

    ValueError naming the tensor when TensorRT refuses a shape or an address, or would write an output at
    another shape than its buffer's.
    """
    for name, tensor in inputs.items():
        shape = tuple(tensor.shape)
        guarded(
            lambda name=name, shape=shape: context.set_input_shape(name, shape),
            f"TensorRT refused input {name} of {component} at shape {list(shape)} (outside its profile?)",
        )
    for name, tensor in outputs.items():
        expected = tuple(context.get_tensor_shape(name))
        if expected != tuple(tensor.shape):
            raise ValueError(
                f"the {component} engine would write {name} at shape {list(expected)}, but sdrt's spec gives it "
                f"{list(tensor.shape)} for inputs {', '.join(f'{n} {list(t.shape)}' for n, t in inputs.items())}: "
                "the engine was not built from this artifact's graph; rebuild it"
            )
    for name, tensor in (*inputs.items(), *outputs.items()):
        if tensor.data_ptr() % ALIGNMENT:
            raise ValueError(f"{component}'s {name} is not {ALIGNMENT}-byte aligned, as TensorRT requires")
        guarded(
            lambda name=name, tensor=tensor: context.set_tensor_address(name, tensor.data_ptr()),
            f"TensorRT refused the address of {component}'s {name}",
        )
