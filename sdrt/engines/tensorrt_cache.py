"""TensorRT engine cache keys: what a plan depends on.

A plan is only valid for the ONNX it was built from, the build settings and profiles, the TensorRT
version and the GPU model it was tuned on. The key hashes all of them, so a change to any gets a new
engine directory instead of a stale engine. The directory itself (the plan, its `build.json` with the
plan's size and sha256, the checks before a load) is `sdrt.engines.cache`'s. Pure Python: no TensorRT needed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sdrt.engines.tensorrt_profiles import Profile
from sdrt.hashing import json_sha256

BACKEND = "tensorrt"
PLAN_FILE = "model.plan"
# bump when the way engines are built changes, so older plans are rebuilt rather than trusted
BUILD_RECIPE = 2  # 2: records with file digests (sdrt.engines.cache)


@dataclass(frozen=True)
class GpuInfo:
    """The GPU model a plan is tuned for (TensorRT plans do not move between GPU models)."""

    name: str  # e.g. "NVIDIA H100 80GB HBM3"
    compute_capability: str  # e.g. "9.0"


def cache_key(
    onnx_sha256: str,
    external_data_sha256: str | None,
    settings: Mapping[str, Any],
    profiles: Sequence[Profile],
    tensorrt_version: str,
    gpu: GpuInfo,
) -> str:
    """Hash of everything a plan depends on: ONNX bytes, build settings, profiles, TensorRT version, GPU model."""
    return json_sha256(
        {
            "recipe": BUILD_RECIPE,
            "onnx": onnx_sha256,
            "external_data": external_data_sha256,
            "settings": dict(settings),
            "profiles": [p.to_json() for p in profiles],
            "tensorrt": tensorrt_version,
            "gpu": asdict(gpu),
        }
    )
