"""The machine a benchmark ran on: CPU, memory, GPU model, library versions."""

from __future__ import annotations

import os
import platform
import re
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from sdrt.versions import library_versions

_EXTRA_PACKAGES = ("onnxruntime-gpu", "openvino", "tensorrt", "numpy", "accelerate")


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo, or platform.processor() elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    import psutil

    return {
        "platform": platform.platform(),
        "arch": platform.machine(),
        "cpu": cpu_model(),
        "cpu_cores_logical": os.cpu_count(),
        "cpu_cores_physical": psutil.cpu_count(logical=False),
        "torch_threads": torch.get_num_threads(),
        "memory_bytes": psutil.virtual_memory().total,
        "python": platform.python_version(),
    }


def gpu_info(device: torch.device | str) -> dict[str, Any] | None:
    """Model, memory and CUDA versions of `device`; None for the CPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    props = torch.cuda.get_device_properties(device)
    return {
        "name": props.name,
        "memory_bytes": props.total_memory,
        "capability": f"{props.major}.{props.minor}",
        "count": torch.cuda.device_count(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
    }


def versions() -> dict[str, str]:
    found = library_versions()
    for name in _EXTRA_PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    found["python"] = platform.python_version()
    return found


def machine_slug(device: str = "auto") -> str:
    """A file name for this machine's results: the GPU model (e.g. nvidia-h100-80gb-hbm3) or cpu-<cores>core-<arch>."""
    use_gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_gpu and torch.cuda.is_available():
        name = torch.cuda.get_device_name(torch.device(device) if device != "auto" else None)
    else:
        name = f"cpu-{os.cpu_count()}core-{platform.machine()}"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
