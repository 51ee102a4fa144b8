"""The TensorRT engine cache: keys, plan records, and the check that decides whether a plan may be loaded.

A plan is only valid for the ONNX it was built from, the build settings and profiles, the TensorRT
version and the GPU model it was tuned on. The key hashes all of them, so a change to any gets a new
engine directory instead of a stale engine. Each directory holds the plan and a `build.json` record
(key, TensorRT version, GPU, plan size and sha256); a plan whose record is missing, names another
key, TensorRT or GPU, or whose bytes do not match the record (a truncated or damaged file) is
rebuilt rather than loaded. Pure Python: no TensorRT needed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sdrt.engines.tensorrt_profiles import Profile
from sdrt.files import atomic_directory, read_json_object
from sdrt.hashing import file_sha256, json_sha256

BACKEND = "tensorrt"
PLAN_FILE = "model.plan"
RECORD_FILE = "build.json"
# bump when the way engines are built changes, so older plans are rebuilt rather than trusted
BUILD_RECIPE = 1


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


def engine_dir(artifact: Path, component: str, key: str) -> Path:
    return artifact / "engines" / BACKEND / component / key[:16]


def write_plan(target: Path, plan: bytes, record: Mapping[str, Any]) -> dict[str, Any]:
    """Write the plan and its record into `target` atomically; return the record as written."""
    import hashlib

    full = {**record, "plan_bytes": len(plan), "plan_sha256": hashlib.sha256(plan).hexdigest()}
    with atomic_directory(target) as tmp:
        (tmp / PLAN_FILE).write_bytes(plan)
        (tmp / RECORD_FILE).write_text(json.dumps(full, indent=2) + "\n")
    return full


def plan_problem(directory: Path, key: str, tensorrt_version: str, gpu: GpuInfo) -> str | None:
    """Why the plan in `directory` must not be loaded (None when it may be).

    Checks the record exists and parses, names this key, TensorRT version and GPU, and that the plan
    file has the recorded size and sha256. Deserialization can still fail afterwards (the caller
    treats a None engine the same way).
    """
    record_path = directory / RECORD_FILE
    if not directory.is_dir():
        return "not built yet"
    try:
        record = read_json_object(record_path)
    except ValueError as exc:
        return f"its record is unusable ({exc})"
    expected = {
        "key": key,
        "tensorrt": tensorrt_version,
        "gpu": gpu.name,
        "compute_capability": gpu.compute_capability,
    }
    for field, value in expected.items():
        if record.get(field) != value:
            return f"it was built for {field} {record.get(field)!r}, not {value!r}"
    plan = directory / PLAN_FILE
    if not plan.is_file():
        return f"{PLAN_FILE} is missing"
    size = plan.stat().st_size
    if size != record.get("plan_bytes"):
        return f"{PLAN_FILE} has {size} bytes, the record says {record.get('plan_bytes')} (truncated or replaced)"
    if file_sha256(plan) != record.get("plan_sha256"):
        return f"{PLAN_FILE} does not match the sha256 in its record (damaged or replaced)"
    return None
