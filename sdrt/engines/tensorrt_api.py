"""The parts of TensorRT's Python API that differ between 10.x and 11.x, one code path per major version.

Read from TensorRT's own bindings (`python/src/infer/pyCore.cpp` at the 10.0, 10.1, 10.16 and 11.0
releases) and its 10.x -> 11.x migration guide, and checked against the name tables of the real binding
wheels of 10.0.1, 10.1.0, 10.16.1, 11.0.0 and 11.4.0 (tests/engines/test_tensorrt_names.py):

- strong typing: opt-in on 10.x (`1 << NetworkDefinitionCreationFlag.STRONGLY_TYPED`, whose value is 1);
  always on in 11.x, where the flag is deprecated, ignored, and renumbered 0;
- weak typing (`BuilderFlag.FP16`, `PREFER_PRECISION_CONSTRAINTS`, `ILayer.precision`): present in 10.x,
  deprecated in 10.12, removed in 11.x;
- activation memory size: `ICudaEngine.device_memory_size` in 10.0, `device_memory_size_v2` from 10.1,
  `device_memory_size` removed in 11.x;
- user-managed activation memory: `IExecutionContext.device_memory = ptr` (a write-only property, still
  there in 11.x) in 10.0, `set_device_memory(ptr, size)` from 10.1 on.

Everything else sdrt calls is common to both: `BuilderFlag.TF32` / `REFIT` (`clear_flag`, `set_flag`),
`set_memory_pool_limit`, `builder_optimization_level`, `IOptimizationProfile.set_shape` (raises
RuntimeError on inconsistent shapes), `set_timing_cache(cache, ignore_mismatch)` (returns False for a
cache from another device), `set_input_shape` (returns False), `set_optimization_profile_async`
(raises RuntimeError), `execute_async_v3` (returns False). sdrt builds every network strongly typed on
both versions, so weak typing is never used. Pure Python: no TensorRT needed to import this.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tensorrt as trt

SUPPORTED_MAJORS = (10, 11)  # the code paths below; setup.py's tensorrt extra pins the same range


@dataclass(frozen=True)
class TensorRTPath:
    """How sdrt calls one TensorRT major version."""

    major: int  # 10 or 11
    summary: str  # one line for `sdrt doctor`

    def network_flags(self, trt) -> int:
        """`Builder.create_network` flags for a strongly typed network."""
        if self.major == 10:
            return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        return 0  # 11.x: every network is strongly typed; STRONGLY_TYPED is deprecated there

    def device_memory_size(self, engine: trt.ICudaEngine) -> int:
        """Activation memory an execution context of `engine` needs, in bytes."""
        if self.major == 10 and not hasattr(engine, "device_memory_size_v2"):
            return int(engine.device_memory_size)  # 10.0 only: the _v2 property came in 10.1
        return int(engine.device_memory_size_v2)

    def attach_memory(self, context: trt.IExecutionContext, address: int, size: int) -> None:
        """Give a context created with USER_MANAGED allocation `size` bytes of device memory at `address`."""
        if self.major == 10 and not hasattr(context, "set_device_memory"):
            context.device_memory = address  # 10.0 only
        else:
            context.set_device_memory(address, size)


TENSORRT_10 = TensorRTPath(10, "TensorRT 10.x: strongly typed by creation flag, device_memory_size_v2 (10.1+)")
TENSORRT_11 = TensorRTPath(11, "TensorRT 11.x: always strongly typed, weak-typing APIs absent")


def major_version(version: str) -> int:
    match = re.match(r"^\s*(\d+)\.", f"{version}.")
    if match is None:
        raise ValueError(f"cannot read a TensorRT version from {version!r}")
    return int(match.group(1))


def api_path(version: str) -> TensorRTPath:
    """The code path for TensorRT `version`; ValueError for versions outside 10.x and 11.x."""
    major = major_version(version)
    if major < SUPPORTED_MAJORS[0]:
        raise ValueError(f"TensorRT {version} is too old: sdrt needs TensorRT 10.x or 11.x")
    if major > SUPPORTED_MAJORS[-1]:
        raise ValueError(
            f"TensorRT {version} is newer than the 10.x and 11.x this sdrt is written for; "
            "install tensorrt<12 (pip install 'sdrt[tensorrt]') or an sdrt that knows it"
        )
    return TENSORRT_10 if major == 10 else TENSORRT_11
