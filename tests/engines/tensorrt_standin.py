"""Recording stand-ins for the `tensorrt` module, one per major version, to check sdrt's builder choices on a CPU.

Each stand-in has the API surface TensorRT documents for its version (`python/src/infer/pyCore.cpp` and
`pyCoreDoc.h` at the 10.x and 11.x releases, the 10.x -> 11.x migration guide): 11.x lacks the weak
typing flags (`BuilderFlag.FP16`, `PREFER_PRECISION_CONSTRAINTS`, ...), `EXPLICIT_BATCH` and
`ICudaEngine.device_memory_size`, so touching them raises AttributeError as the real module does;
`IOptimizationProfile.set_shape` and `set_optimization_profile_async` raise RuntimeError on bad input;
`set_input_shape`, `set_timing_cache` and `execute_async_v3` return False. A strongly typed network
built with a weak-typing flag fails the build, as TensorRT 10 documents.

They record what sdrt asks for and build nothing: a "plan" is a JSON description of the calls. They
never stand in for a GPU test (those skip without TensorRT and a GPU).
"""

from __future__ import annotations

import enum
import json
from types import SimpleNamespace
from typing import Any

import onnx

_WEAK_TYPING = ("FP16", "BF16", "INT8", "FP8", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS")


def make_tensorrt(version: str, device: str = "NVIDIA H100 80GB HBM3") -> SimpleNamespace:
    """A stand-in `tensorrt` module of `version` ("10.0.1", "10.16.0", "11.1.0", ...) on GPU `device`."""
    major, minor = (int(p) for p in version.split(".")[:2])
    calls: list[tuple] = []
    flags = ["DEBUG", "GPU_FALLBACK", "REFIT", "DISABLE_TIMING_CACHE", "TF32", "SPARSE_WEIGHTS"]
    if major == 10:
        flags += list(_WEAK_TYPING)
    BuilderFlag = enum.IntEnum("BuilderFlag", flags, start=0)  # noqa: N806 (TensorRT's names)
    creation = ["STRONGLY_TYPED"] if major >= 11 else ["EXPLICIT_BATCH", "STRONGLY_TYPED"]
    NetworkDefinitionCreationFlag = enum.IntEnum(  # noqa: N806
        "NetworkDefinitionCreationFlag", creation, start=0 if major == 10 else 1
    )

    class Severity(enum.IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    class ILogger:
        def __init__(self) -> None:
            pass

    ILogger.Severity = Severity

    class TimingCache:
        def __init__(self, origin: str, entries: int) -> None:
            self.origin, self.entries = origin, entries

        def serialize(self) -> bytes:
            return json.dumps({"origin": self.origin, "entries": self.entries}).encode()

    class Profile:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple] = {}

        def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:  # noqa: A002 (TensorRT's names)
            calls.append(("set_shape", input, tuple(min), tuple(opt), tuple(max)))
            if not len(min) == len(opt) == len(max) or any(
                not lo <= o <= hi for lo, o, hi in zip(min, opt, max, strict=True)
            ):
                raise RuntimeError("Shape provided for min is inconsistent with other shapes.")
            self.shapes[input] = (tuple(min), tuple(opt), tuple(max))

    class Config:
        def __init__(self) -> None:
            self.flags = {BuilderFlag.TF32}  # "Enabled by default" (BuilderFlag.TF32's documentation)
            self.profiles: list[Profile] = []
            self.timing_cache: TimingCache | None = None
            self.builder_optimization_level = 3

        def set_flag(self, flag) -> None:
            calls.append(("set_flag", flag.name))
            self.flags.add(flag)

        def clear_flag(self, flag) -> None:
            calls.append(("clear_flag", flag.name))
            self.flags.discard(flag)

        def get_flag(self, flag) -> bool:
            return flag in self.flags

        def set_memory_pool_limit(self, pool, pool_size: int) -> None:
            calls.append(("set_memory_pool_limit", pool, pool_size))

        def add_optimization_profile(self, profile: Profile) -> int:
            self.profiles.append(profile)
            return len(self.profiles) - 1

        @property
        def num_optimization_profiles(self) -> int:
            return len(self.profiles)

        def create_timing_cache(self, serialized_timing_cache) -> TimingCache | None:
            data = bytes(serialized_timing_cache)
            if not data:
                return TimingCache(device, 0)
            try:
                parsed = json.loads(data)
                return TimingCache(parsed["origin"], int(parsed["entries"]))
            except (ValueError, KeyError, TypeError):
                return None  # TensorRT logs an error and returns null for bytes it cannot read

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            calls.append(("set_timing_cache", cache.origin, cache.entries, ignore_mismatch))
            if cache.origin != device and not ignore_mismatch:
                return False  # "A failure will be reported if the CUDA device property ... is different"
            self.timing_cache = cache
            return True

    class Tensor:
        def __init__(self, name: str) -> None:
            self.name = name

    class Network:
        def __init__(self, flags: int) -> None:
            self.flags = flags
            self.inputs: list[Tensor] = []

        @property
        def strongly_typed(self) -> bool:
            return major >= 11 or bool(self.flags & (1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED)))

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        def get_input(self, index: int) -> Tensor:
            return self.inputs[index]

    class OnnxParser:
        def __init__(self, network: Network, logger) -> None:
            self.network, self.errors = network, []

        def parse_from_file(self, model: str) -> bool:
            calls.append(("parse_from_file", model))
            graph = onnx.load(model, load_external_data=False).graph
            initializers = {i.name for i in graph.initializer}
            self.network.inputs = [Tensor(i.name) for i in graph.input if i.name not in initializers]
            return True

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, index: int) -> str:
            return self.errors[index]

    class Builder:
        def __init__(self, logger) -> None:
            self.logger = logger

        def create_network(self, flags: int = 0) -> Network:
            calls.append(("create_network", flags))
            return Network(flags)

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config) -> bytes | None:
            weak = sorted(f.name for f in config.flags if f.name in _WEAK_TYPING)
            if network.strongly_typed and weak:
                self.logger.log(Severity.ERROR, f"flags {weak} are not allowed with a strongly typed network")
                return None
            calls.append(("build_serialized_network",))
            if config.timing_cache is not None:
                config.timing_cache.entries += 1  # kernels timed in this build
            description = {
                "strongly_typed": network.strongly_typed,
                "flags": sorted(f.name for f in config.flags),
                "profiles": [{k: [list(s) for s in v] for k, v in p.shapes.items()} for p in config.profiles],
                "optimization_level": config.builder_optimization_level,
            }
            return json.dumps(description).encode()

    class MemoryPoolType(enum.IntEnum):
        WORKSPACE = 0

    class ExecutionContext:
        """What sdrt's run-time checks see of IExecutionContext."""

        def __init__(self, profiles: int, accepts) -> None:
            self.profiles, self.accepts = profiles, accepts
            self.device_memory_calls: list[tuple] = []

        def set_optimization_profile_async(self, profile_index: int, stream_handle: int) -> bool:
            if not 0 <= profile_index < self.profiles:
                raise RuntimeError("Error in set optimization profile async.")
            return True

        def set_input_shape(self, name: str, shape) -> bool:
            return bool(self.accepts(name, tuple(shape)))

        def set_tensor_address(self, name: str, memory: int) -> bool:
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            return True

        def set_device_memory(self, memory: int, size: int) -> None:
            self.device_memory_calls.append(("set_device_memory", memory, size))

    if (major, minor) == (10, 0):  # set_device_memory came in 10.1; 10.0 has only the property
        del ExecutionContext.set_device_memory
        ExecutionContext.device_memory = property(
            None, lambda self, memory: self.device_memory_calls.append(("device_memory", memory))
        )

    class Engine:
        """What sdrt reads of ICudaEngine."""

        def __init__(self, size: int) -> None:
            self._size = size

    if major == 10:
        Engine.device_memory_size = property(lambda self: self._size)
    if (major, minor) != (10, 0):
        Engine.device_memory_size_v2 = property(lambda self: self._size)

    return SimpleNamespace(
        __version__=version,
        calls=calls,
        BuilderFlag=BuilderFlag,
        NetworkDefinitionCreationFlag=NetworkDefinitionCreationFlag,
        ILogger=ILogger,
        Builder=Builder,
        OnnxParser=OnnxParser,
        MemoryPoolType=MemoryPoolType,
        ExecutionContext=ExecutionContext,
        Engine=Engine,
    )
