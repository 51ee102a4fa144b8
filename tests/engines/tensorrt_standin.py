"""Stand-ins for the `tensorrt` module, one per tabulated version, that run sdrt's TensorRT code on a CPU.

Each stand-in has only names the real bindings of its version have, with the same owners, kinds and keyword
names, and its enums carry the real numbers: tests/engines/test_tensorrt_names.py checks it against the name
tables of the real wheels (tests/engines/tensorrt_names/). Within that surface it behaves as TensorRT
documents: `set_shape` and `set_optimization_profile_async` raise RuntimeError on bad input; `set_input_shape`,
`set_tensor_address`, `set_timing_cache` and `execute_async_v3` return False; `add_optimization_profile`
returns -1 for an invalid profile; a strongly typed network built with a weak-typing flag fails; a context
created with USER_MANAGED memory cannot run before it is given memory; tensor addresses must be 256-byte
aligned; `nptype` knows no numpy type for bf16 and fp8; the built-in `Logger` filters by severity.

A "plan" is a JSON description of what was asked for. An engine runs its ONNX graph with ONNX Runtime on the
CPU, reading its inputs from and writing its outputs to the addresses bound to the context (CPU tensors here),
and a refit replaces the graph's initializers. None of this is TensorRT: it checks sdrt's calls, never a GPU
result (the GPU tests skip without TensorRT and a GPU).
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import json
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx
import torch

from sdrt.engines.tensorrt_cache import GpuInfo
from tests.engines.tensorrt_tables import table_for

_WEAK_TYPING = (
    "FP16",
    "BF16",
    "INT8",
    "FP8",
    "INT4",
    "FP4",
    "OBEY_PRECISION_CONSTRAINTS",
    "PREFER_PRECISION_CONSTRAINTS",
)
_ONNX_TO_TRT = {
    onnx.TensorProto.FLOAT: "FLOAT",
    onnx.TensorProto.FLOAT16: "HALF",
    onnx.TensorProto.INT32: "INT32",
    onnx.TensorProto.INT64: "INT64",
    onnx.TensorProto.BOOL: "BOOL",
    onnx.TensorProto.BFLOAT16: "BF16",
}
_TORCH = {"FLOAT": torch.float32, "HALF": torch.float16, "INT32": torch.int32, "INT64": torch.int64, "BOOL": torch.bool}
ALIGNMENT = 256
STANDIN_GPU = GpuInfo("stand-in GPU (CPU)", "0.0")


class _Bound:
    """Like a pybind11 object: setting an attribute the class does not define is an AttributeError.

    Python subclasses (a logger written in Python) may set their own attributes, as they may on the real one.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        cls = type(self)
        if name.startswith("_") or isinstance(getattr(cls, name, None), property) or "_standin" not in cls.__dict__:
            object.__setattr__(self, name, value)
        else:
            raise AttributeError(f"'tensorrt.{cls.__name__}' object has no attribute '{name}'")


def make_tensorrt(version: str, device: str = "NVIDIA H100 80GB HBM3") -> SimpleNamespace:
    """A stand-in `tensorrt` module of a tabulated `version` ("10.0.1", "10.16.1", "11.4", ...) on GPU `device`."""
    table = table_for(version)
    major, minor = (int(p) for p in table.version.split(".")[:2])
    calls: list[tuple] = []
    printed: list[tuple] = []

    def enum_type(name: str) -> type[enum.IntEnum]:
        values = {k: v for k, v in table.enum_values(name).items() if v is not None}
        return enum.IntEnum(name.rsplit(".", 1)[-1], values)

    BuilderFlag = enum_type("BuilderFlag")  # noqa: N806 (TensorRT's names)
    NetworkDefinitionCreationFlag = enum_type("NetworkDefinitionCreationFlag")  # noqa: N806
    MemoryPoolType = enum_type("MemoryPoolType")  # noqa: N806
    ExecutionContextAllocationStrategy = enum_type("ExecutionContextAllocationStrategy")  # noqa: N806
    TensorIOMode = enum_type("TensorIOMode")  # noqa: N806
    DataType = enum_type("DataType")  # noqa: N806
    Severity = enum_type("ILogger.Severity")  # noqa: N806

    def nptype(trt_type):
        mapping = {
            DataType.FLOAT: np.float32,
            DataType.HALF: np.float16,
            DataType.INT8: np.int8,
            DataType.INT32: np.int32,
            DataType.INT64: np.int64,
            DataType.BOOL: np.bool_,
            DataType.UINT8: np.uint8,
        }
        if trt_type in mapping:
            return mapping[trt_type]
        raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")

    def strongly_typed(flags: int) -> bool:
        return major >= 11 or bool(flags & (1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED)))

    class ILogger(_Bound):
        def __init__(self) -> None:
            pass

        def log(self, severity, msg: str) -> None:
            raise NotImplementedError  # pure virtual: Python subclasses implement it

    ILogger.Severity = Severity
    for member in Severity:
        setattr(ILogger, member.name, member)  # .export_values(): trt.ILogger.ERROR too

    class Logger(ILogger):
        def __init__(self, min_severity=Severity.WARNING) -> None:
            self._min_severity = min_severity

        @property
        def min_severity(self):
            return self._min_severity

        @min_severity.setter
        def min_severity(self, severity) -> None:
            self._min_severity = severity

        def log(self, severity, msg: str) -> None:
            if severity <= self.min_severity:  # INFO and VERBOSE are the larger numbers
                printed.append((Severity(severity).name, msg))

    def report(logger, severity, msg: str) -> None:
        logger.log(severity, msg)

    class IHostMemory(bytes):
        @property
        def nbytes(self) -> int:
            return len(self)

    class ITimingCache(_Bound):
        def __init__(self, origin: str, entries: int) -> None:
            self._origin, self._entries = origin, entries

        def serialize(self) -> IHostMemory:
            return IHostMemory(json.dumps({"origin": self._origin, "entries": self._entries}).encode())

    class IOptimizationProfile(_Bound):
        def __init__(self) -> None:
            self._shapes: dict[str, tuple] = {}

        def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:  # noqa: A002 (TensorRT's names)
            calls.append(("set_shape", input, tuple(min), tuple(opt), tuple(max)))
            if not len(min) == len(opt) == len(max) or any(
                not lo <= o <= hi for lo, o, hi in zip(min, opt, max, strict=True)
            ):
                raise RuntimeError("Shape provided for min is inconsistent with other shapes.")
            self._shapes[input] = (tuple(min), tuple(opt), tuple(max))

    class IBuilderConfig(_Bound):
        def __init__(self) -> None:
            self._flags = {BuilderFlag.TF32}  # "Enabled by default" (BuilderFlag.TF32's documentation)
            self._profiles: list[IOptimizationProfile] = []
            self._timing_cache: ITimingCache | None = None
            self._level = 3

        @property
        def builder_optimization_level(self) -> int:
            return self._level

        @builder_optimization_level.setter
        def builder_optimization_level(self, level: int) -> None:
            self._level = level

        def set_flag(self, flag) -> None:
            calls.append(("set_flag", flag.name))
            self._flags.add(flag)

        def clear_flag(self, flag) -> None:
            calls.append(("clear_flag", flag.name))
            self._flags.discard(flag)

        def get_flag(self, flag) -> bool:
            return flag in self._flags

        def set_memory_pool_limit(self, pool, pool_size: int) -> None:
            calls.append(("set_memory_pool_limit", pool, pool_size))

        def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
            if not profile._shapes:  # IOptimizationProfile::isValid: nothing set is not a profile
                return -1
            self._profiles.append(profile)
            return len(self._profiles) - 1

        @property
        def num_optimization_profiles(self) -> int:
            return len(self._profiles)

        def create_timing_cache(self, serialized_timing_cache) -> ITimingCache | None:
            data = bytes(serialized_timing_cache)
            if not data:
                return ITimingCache(device, 0)
            try:
                parsed = json.loads(data)
                return ITimingCache(parsed["origin"], int(parsed["entries"]))
            except (ValueError, KeyError, TypeError):
                return None  # TensorRT logs an error and returns null for bytes it cannot read

        def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
            calls.append(("set_timing_cache", cache._origin, cache._entries, ignore_mismatch))
            if cache._origin != device and not ignore_mismatch:
                return False  # "A failure will be reported if the CUDA device property ... is different"
            self._timing_cache = cache
            return True

    class ITensor(_Bound):
        def __init__(self, name: str, dtype: str, shape: list) -> None:
            self._name, self._dtype, self._shape = name, dtype, shape

        @property
        def name(self) -> str:
            return self._name

        @name.setter
        def name(self, name: str) -> None:
            self._name = name

    class INetworkDefinition(_Bound):
        def __init__(self, flags: int) -> None:
            self._flags = flags
            self._inputs: list[ITensor] = []
            self._outputs: list[ITensor] = []
            self._onnx: str | None = None

        @property
        def num_inputs(self) -> int:
            return len(self._inputs)

        def get_input(self, index: int) -> ITensor:
            return self._inputs[index]

        @property
        def num_outputs(self) -> int:
            return len(self._outputs)

        def get_output(self, index: int) -> ITensor:
            return self._outputs[index]

    class OnnxParser(_Bound):
        def __init__(self, network: INetworkDefinition, logger) -> None:
            self._network, self._errors = network, []

        def parse_from_file(self, model: str) -> bool:
            calls.append(("parse_from_file", model))
            graph = onnx.load(model, load_external_data=False).graph
            initializers = {i.name for i in graph.initializer}

            def tensor(value) -> ITensor:
                kind = value.type.tensor_type
                shape = [d.dim_value if d.HasField("dim_value") else -1 for d in kind.shape.dim]
                return ITensor(value.name, _ONNX_TO_TRT[kind.elem_type], shape)

            self._network._inputs = [tensor(i) for i in graph.input if i.name not in initializers]
            self._network._outputs = [tensor(o) for o in graph.output]
            self._network._onnx = model
            return True

        @property
        def num_errors(self) -> int:
            return len(self._errors)

        def get_error(self, index: int) -> str:
            return self._errors[index]

    class Builder(_Bound):
        def __init__(self, logger) -> None:
            self._logger = logger

        @property
        def logger(self):
            return self._logger

        def create_network(self, flags: int = 0) -> INetworkDefinition:
            calls.append(("create_network", flags))
            return INetworkDefinition(flags)

        def create_builder_config(self) -> IBuilderConfig:
            return IBuilderConfig()

        def create_optimization_profile(self) -> IOptimizationProfile:
            return IOptimizationProfile()

        def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig):
            weak = sorted(f.name for f in config._flags if f.name in _WEAK_TYPING)
            if strongly_typed(network._flags) and weak:
                report(self.logger, Severity.ERROR, f"flags {weak} are not allowed with a strongly typed network")
                return None
            calls.append(("build_serialized_network",))
            if config._timing_cache is not None:
                config._timing_cache._entries += 1  # kernels timed in this build
            description = {
                "version": table.version,
                "onnx": network._onnx,
                "strongly_typed": strongly_typed(network._flags),
                "flags": sorted(f.name for f in config._flags),
                "profiles": [{k: [list(s) for s in v] for k, v in p._shapes.items()} for p in config._profiles],
                "optimization_level": config.builder_optimization_level,
                "inputs": [[t.name, t._dtype] for t in network._inputs],
                "outputs": [[t.name, t._dtype] for t in network._outputs],
            }
            return IHostMemory(json.dumps(description).encode())

    class Weights(_Bound):
        def __init__(self, a: np.ndarray) -> None:
            names = {np.dtype(np.float32): "FLOAT", np.dtype(np.float16): "HALF", np.dtype(np.int32): "INT32"}
            self._array = a
            self._dtype = DataType[names[a.dtype]]

        @property
        def dtype(self):
            return self._dtype

        @property
        def size(self) -> int:
            return int(self._array.size)

        def numpy(self) -> np.ndarray:
            return self._array

    class ICudaEngine(_Bound):
        def __init__(self, plan: dict) -> None:
            self._plan = plan
            self._io = [(n, d, TensorIOMode.INPUT) for n, d in plan["inputs"]]
            self._io += [(n, d, TensorIOMode.OUTPUT) for n, d in plan["outputs"]]
            self._weights: dict[str, np.ndarray] = {}  # refit values by initializer name
            self._session = None
            self._shapes: dict[tuple, dict[str, tuple]] = {}  # output shapes by input shapes
            self._device_memory = 1 << 20

        @property
        def num_io_tensors(self) -> int:
            return len(self._io)

        def get_tensor_name(self, index: int) -> str:
            return self._io[index][0]

        def get_tensor_dtype(self, name: str):
            return DataType[self._tensor(name)[1]]

        def get_tensor_mode(self, name: str):
            return self._tensor(name)[2]

        @property
        def num_optimization_profiles(self) -> int:
            return len(self._plan["profiles"])

        @property
        def refittable(self) -> bool:
            return "REFIT" in self._plan["flags"]

        def create_execution_context(self, strategy=ExecutionContextAllocationStrategy.STATIC):
            return IExecutionContext(self, strategy)

        def _tensor(self, name: str) -> tuple:
            return next(t for t in self._io if t[0] == name)

        def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            if self._session is None:
                self._session = _session(self._plan["onnx"], self._weights)
            return dict(zip([n for n, _ in self._plan["outputs"]], self._session.run(None, feeds), strict=True))

        def _output_shapes(self, shapes: dict[str, tuple]) -> dict[str, tuple]:
            key = tuple(sorted(shapes.items()))
            if key not in self._shapes:
                feeds = {n: np.zeros(shapes[n], dtype=nptype(DataType[d])) for n, d in self._plan["inputs"]}
                self._shapes[key] = {n: v.shape for n, v in self._run(feeds).items()}
            return self._shapes[key]

    if major == 10:  # removed in 11.x
        ICudaEngine.device_memory_size = property(lambda self: self._device_memory)
    if (major, minor) != (10, 0):  # came in 10.1
        ICudaEngine.device_memory_size_v2 = property(lambda self: self._device_memory)

    class Dims(tuple):
        pass

    class IExecutionContext(_Bound):
        def __init__(self, engine: ICudaEngine, strategy) -> None:
            self._engine, self._strategy = engine, strategy
            self._profile = 0
            self._shapes: dict[str, tuple] = {}
            self._addresses: dict[str, int] = {}
            self._memory: int | None = None

        def set_optimization_profile_async(self, profile_index: int, stream_handle: int) -> bool:
            if not 0 <= profile_index < self._engine.num_optimization_profiles:
                raise RuntimeError("Error in set optimization profile async.")
            self._profile = profile_index
            self._shapes = {}
            return True

        def set_input_shape(self, name: str, shape) -> bool:
            ranges = self._engine._plan["profiles"][self._profile].get(name)
            shape = tuple(shape)
            if ranges is None or len(shape) != len(ranges[0]):
                return False
            low, _, high = ranges
            if any(not lo <= s <= hi for lo, s, hi in zip(low, shape, high, strict=True)):
                return False  # "the shape is outside the optimization profile": an error is logged
            self._shapes[name] = shape
            return True

        def get_tensor_shape(self, name: str) -> Dims:
            inputs = [n for n, _ in self._engine._plan["inputs"]]
            if name in inputs:
                return Dims(self._shapes.get(name, ()))
            if set(inputs) - set(self._shapes):
                return Dims([-1])  # not all input shapes known yet
            return Dims(self._engine._output_shapes(self._shapes)[name])

        def set_tensor_address(self, name: str, memory: int) -> bool:
            if name not in {n for n, _, _ in self._engine._io}:
                return False
            if memory % ALIGNMENT:
                return False  # the documented 256-byte alignment (TensorRT logs an API usage error)
            self._addresses[name] = memory
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            plan = self._engine._plan
            if self._strategy == ExecutionContextAllocationStrategy.USER_MANAGED and self._memory is None:
                return False  # no device memory given to a user-managed context
            if set(n for n, _, _ in self._engine._io) - set(self._addresses):
                return False
            if set(n for n, _ in plan["inputs"]) - set(self._shapes):
                return False
            feeds = {n: _at(self._addresses[n], self._shapes[n], _TORCH[d]).numpy().copy() for n, d in plan["inputs"]}
            for name, value in self._engine._run(feeds).items():
                _at(self._addresses[name], value.shape, torch.from_numpy(value).dtype).copy_(torch.from_numpy(value))
            return True

        def _set_memory(self, memory: int, size: int | None) -> None:
            calls.append(("device_memory" if size is None else "set_device_memory", memory, size))
            self._memory = memory

        device_memory = property(None, lambda self, memory: self._set_memory(memory, None))  # write-only

    if (major, minor) != (10, 0):  # came in 10.1

        def set_device_memory(self, memory: int, size: int) -> None:
            self._set_memory(memory, size)

        IExecutionContext.set_device_memory = set_device_memory

    class Runtime(_Bound):
        def __init__(self, logger) -> None:
            self._logger = logger

        @property
        def logger(self):
            return self._logger

        def deserialize_cuda_engine(self, serialized_engine) -> ICudaEngine | None:
            try:
                plan = json.loads(bytes(serialized_engine))
            except ValueError:
                report(self.logger, Severity.ERROR, "IRuntime::deserializeCudaEngine: the plan is damaged")
                return None
            if plan.get("version") != table.version:
                report(self.logger, Severity.ERROR, f"the plan was built by TensorRT {plan.get('version')}")
                return None
            return ICudaEngine(plan)

    class Refitter(_Bound):
        def __init__(self, engine: ICudaEngine, logger) -> None:
            self._engine, self._logger = engine, logger
            model = onnx.load(engine._plan["onnx"], load_external_data=False)
            self._prototypes = {
                i.name: ("HALF" if i.data_type == onnx.TensorProto.FLOAT16 else "FLOAT", tuple(i.dims))
                for i in model.graph.initializer
                if i.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16) and np.prod(i.dims) >= 2
            }
            self._pending: dict[str, np.ndarray] = {}

        def get_all_weights(self) -> list[str]:
            return sorted(self._prototypes)

        def get_missing_weights(self) -> list[str]:
            return []

        def get_weights_prototype(self, weights_name: str) -> Weights:
            dtype, shape = self._prototypes[weights_name]
            prototype = Weights(np.zeros(shape, nptype(DataType.FLOAT)))
            prototype._dtype = DataType[dtype]
            return prototype

        def set_named_weights(self, name: str, weights: Weights) -> bool:
            if name not in self._prototypes:
                return False
            dtype, shape = self._prototypes[name]
            if weights.dtype != DataType[dtype] or weights.size != int(np.prod(shape)):
                report(self.logger, Severity.ERROR, f"refit: {name} has the wrong type or count")
                return False
            self._pending[name] = weights.numpy().reshape(shape).copy()
            return True

        @property
        def logger(self):
            return self._logger

        def refit_cuda_engine(self) -> bool:
            self._engine._weights.update(self._pending)
            self._engine._session = None
            self._engine._shapes.clear()
            calls.append(("refit_cuda_engine", sorted(self._pending)))
            return True

    for cls in (
        ILogger, Logger, ITimingCache, IOptimizationProfile, IBuilderConfig, ITensor, INetworkDefinition, OnnxParser,
        Builder, Weights, ICudaEngine, IExecutionContext, Runtime, Refitter,
    ):  # fmt: skip
        cls._standin = True
    names = {
        "__version__": table.version,
        "_calls": calls,
        "_printed": printed,
        "BuilderFlag": BuilderFlag,
        "NetworkDefinitionCreationFlag": NetworkDefinitionCreationFlag,
        "MemoryPoolType": MemoryPoolType,
        "ExecutionContextAllocationStrategy": ExecutionContextAllocationStrategy,
        "TensorIOMode": TensorIOMode,
        "DataType": DataType,
        "ILogger": ILogger,
        "Logger": Logger,
        "IHostMemory": IHostMemory,
        "ITimingCache": ITimingCache,
        "IOptimizationProfile": IOptimizationProfile,
        "IBuilderConfig": IBuilderConfig,
        "ITensor": ITensor,
        "INetworkDefinition": INetworkDefinition,
        "OnnxParser": OnnxParser,
        "Builder": Builder,
        "Weights": Weights,
        "ICudaEngine": ICudaEngine,
        "Dims": Dims,
        "IExecutionContext": IExecutionContext,
        "Runtime": Runtime,
        "Refitter": Refitter,
        "nptype": nptype,
        "float32": DataType.FLOAT,
        "float16": DataType.HALF,
        "bfloat16": DataType.BF16,
        "fp8": DataType.FP8,
        "int32": DataType.INT32,
        "int64": DataType.INT64,
    }
    return SimpleNamespace(**names)


_SESSIONS: dict[str, Any] = {}  # ONNX path -> ONNX Runtime session of the graph as exported


def _session(path: str, weights: dict[str, np.ndarray]):
    """An ONNX Runtime session of the graph at `path` with `weights` in place of its initializers of those names."""
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if not weights:
        if path not in _SESSIONS:
            _SESSIONS[path] = ort.InferenceSession(path, providers=providers)
        return _SESSIONS[path]
    model = onnx.load(path)
    for initializer in model.graph.initializer:
        if initializer.name in weights:
            initializer.CopyFrom(onnx.numpy_helper.from_array(weights[initializer.name], initializer.name))
    return ort.InferenceSession(model.SerializeToString(), providers=providers)


def _at(address: int, shape, dtype: torch.dtype) -> torch.Tensor:
    """The tensor of `shape` and `dtype` at host address `address` (the memory a context was bound to)."""
    count = int(np.prod(shape)) if len(shape) else 1
    nbytes = count * torch.empty((), dtype=dtype).element_size()
    if nbytes == 0:
        return torch.empty(tuple(shape), dtype=dtype)
    buffer = (ctypes.c_byte * nbytes).from_address(address)
    return torch.frombuffer(buffer, dtype=dtype).view(tuple(shape))


def calls(trt: SimpleNamespace) -> list[tuple]:
    """What sdrt asked of stand-in `trt`: network creation, flags, profiles, timing caches, memory, refits."""
    return trt._calls


def printed(trt: SimpleNamespace) -> list[tuple]:
    """What the stand-in's built-in `Logger` let through: (severity name, message)."""
    return trt._printed


class SerialPlace:
    """Where stand-in engines run: the CPU, in order, with "CUDA graphs" that call the captured enqueue again."""

    device = torch.device("cpu")
    gpu = STANDIN_GPU

    def scope(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def enqueue(self):
        yield 0

    def keep(self, tensors) -> None:
        pass

    def capture(self, enqueue) -> Any:
        if enqueue(0) is False:  # the real capture reports an enqueue that fails while captured
            from sdrt.engines.cuda_graphs import GraphCaptureError

            raise GraphCaptureError("CUDA graph capture failed: the engine reported an error while being captured")
        return SimpleNamespace(replay=lambda: enqueue(0))

    def synchronize(self) -> None:
        pass


__all__ = ["STANDIN_GPU", "SerialPlace", "calls", "make_tensorrt", "printed"]
