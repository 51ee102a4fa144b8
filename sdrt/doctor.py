"""`sdrt doctor`: what this machine has (GPU, CUDA, TensorRT, ONNX Runtime, OpenVINO) and which backends can run."""

from __future__ import annotations

import importlib
import importlib.util
import platform
import shutil
import subprocess
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata
from typing import Any

from sdrt.engines import BACKENDS, DEVICES


@dataclass(frozen=True)
class Gpu:
    """One CUDA device as torch sees it."""

    index: int  # CUDA device index
    name: str  # e.g. "NVIDIA H100 80GB HBM3"
    memory_gib: float  # total memory
    compute_capability: str  # e.g. "9.0"


@dataclass(frozen=True)
class Library:
    """An optional library: its version, or why it cannot be used."""

    name: str  # import name
    version: str | None  # None when it cannot be imported
    reason: str | None = None  # why it cannot be used; None when it can


@dataclass(frozen=True)
class BackendStatus:
    """Whether one backend can run on one device here, and why not."""

    backend: str  # a name sdrt.engines.BACKENDS knows
    device: str  # "cpu" or "cuda"
    ok: bool  # True when it can run
    reason: str  # what it runs on, or what is missing


@dataclass(frozen=True)
class Report:
    """Everything `sdrt doctor` prints."""

    python: str  # interpreter version
    platform: str  # OS and machine
    torch: str  # torch version
    torch_cuda: str | None  # CUDA version torch was built with; None for a CPU build
    cudnn: str | None  # cuDNN version torch loads, when it has CUDA
    gpus: list[Gpu]  # CUDA devices torch sees
    gpu_reason: str | None  # why there are none, when there are none
    nvidia_smi: str | None  # GPUs and driver as nvidia-smi lists them, when it is installed
    onnxruntime: Library  # ONNX Runtime
    onnxruntime_providers: list[str]  # its available execution providers
    tensorrt: Library  # TensorRT's Python bindings
    tensorrt_path: str  # which of sdrt's TensorRT code paths (10.x or 11.x) this TensorRT takes, or why none
    openvino: Library  # OpenVINO's Python package
    backends: list[BackendStatus] = field(default_factory=list)  # every backend on every device


def diagnose() -> Report:
    """Inspect this machine. Never raises for a missing library or device: it reports why."""
    import torch

    gpus, gpu_reason = _gpus(torch)
    ort, providers = _onnxruntime()
    trt = _tensorrt()
    report = Report(
        python=platform.python_version(),
        platform=_platform(),
        torch=torch.__version__,
        torch_cuda=torch.version.cuda,
        cudnn=_cudnn(torch),
        gpus=gpus,
        gpu_reason=gpu_reason,
        nvidia_smi=_nvidia_smi(),
        onnxruntime=ort,
        onnxruntime_providers=providers,
        tensorrt=trt,
        tensorrt_path=_tensorrt_path(trt),
        openvino=_openvino(),
    )
    backends = [_backend_status(report, b, d) for b in BACKENDS for d in DEVICES]
    return replace(report, backends=backends)


def to_json(report: Report) -> dict[str, Any]:
    return asdict(report)


def header() -> str:
    """The report's first line, which needs no import: `sdrt doctor` prints it before torch loads (seconds)."""
    from sdrt import __version__

    return f"{'sdrt':<14}{__version__}, python {platform.python_version()} on {_platform()}"


def _platform() -> str:
    return f"{platform.system()} {platform.release()} {platform.machine()}"


def format_report(report: Report, header_line: bool = True) -> str:
    """The report as aligned text lines (`header_line`: the first, `header()`, which the CLI prints early)."""
    gpus = [f"{g.index}: {g.name}, {g.memory_gib:.1f} GiB, sm {g.compute_capability}" for g in report.gpus]
    rows = [
        ("torch", f"{report.torch} (CUDA {report.torch_cuda or 'none: a CPU build'})"),
        ("cuDNN", report.cudnn or "none"),
        ("GPU", "; ".join(gpus) if gpus else f"none ({report.gpu_reason})"),
        ("nvidia-smi", report.nvidia_smi or "not found"),
        ("onnxruntime", _library_line(report.onnxruntime)),
        ("  providers", ", ".join(report.onnxruntime_providers) or "none"),
        ("tensorrt", _library_line(report.tensorrt)),
        ("  code path", report.tensorrt_path),
        ("openvino", _library_line(report.openvino)),
    ]
    lines = [header()] if header_line else []
    lines += [f"{name:<14}{value}" for name, value in rows]
    lines += ["", "backend       device  can run"]
    for s in report.backends:
        lines.append(f"{s.backend:<14}{s.device:<8}{'yes' if s.ok else 'no '}  {s.reason}")
    return "\n".join(lines)


def _library_line(lib: Library) -> str:
    if lib.version is None:
        return f"not usable ({lib.reason})"
    return lib.version if lib.reason is None else f"{lib.version} (not usable: {lib.reason})"


def _gpus(torch) -> tuple[list[Gpu], str | None]:
    if torch.version.cuda is None:
        return [], f"torch {torch.__version__} is a CPU build, without CUDA"
    try:
        count = torch.cuda.device_count()
        if count == 0 or not torch.cuda.is_available():
            return [], "torch has CUDA but sees no GPU (driver missing, or CUDA_VISIBLE_DEVICES hides them)"
        gpus = []
        for i in range(count):
            p = torch.cuda.get_device_properties(i)
            gpus.append(Gpu(i, p.name, round(p.total_memory / 2**30, 1), f"{p.major}.{p.minor}"))
        return gpus, None
    except RuntimeError as exc:  # e.g. a driver too old for this torch's CUDA
        return [], f"CUDA initialization failed: {exc}"


def _cudnn(torch) -> str | None:
    if torch.version.cuda is None or not torch.backends.cudnn.is_available():
        return None
    return str(torch.backends.cudnn.version())


def _nvidia_smi() -> str | None:
    """GPU names and driver version from nvidia-smi: tells 'no GPU' from 'a GPU torch cannot use'."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"failed: {exc}"
    return "; ".join(line.strip() for line in out.splitlines() if line.strip()) or "lists no GPU"


def _onnxruntime() -> tuple[Library, list[str]]:
    try:
        import onnxruntime as ort
    except Exception as exc:  # an optional library may fail to import in any way
        return Library("onnxruntime", None, f"import failed: {type(exc).__name__}: {exc}"), []
    return Library("onnxruntime", ort.__version__), list(ort.get_available_providers())


def _tensorrt() -> Library:
    """TensorRT's Python bindings: a failed import of an installed package is reported with its error."""
    if importlib.util.find_spec("tensorrt") is None:
        return Library("tensorrt", None, "no Python package 'tensorrt' is installed")
    try:
        trt = importlib.import_module("tensorrt")
    except Exception as exc:  # e.g. the pip stub without its libraries: OSError / ImportError
        return Library("tensorrt", None, f"import failed: {type(exc).__name__}: {exc}")
    return Library("tensorrt", str(getattr(trt, "__version__", "unknown version")))


def _tensorrt_path(lib: Library) -> str:
    """The TensorRT code path sdrt takes here: from the imported version, else the installed package's."""
    from sdrt.engines.tensorrt_api import api_path

    version, installed_only = lib.version, False
    if version is None:
        try:
            version, installed_only = metadata.version("tensorrt"), True
        except metadata.PackageNotFoundError:
            return "none: TensorRT is not installed"
    try:
        path = api_path(version)
    except ValueError as exc:
        return f"none: {exc}"
    if installed_only:
        return f"{path.major}.x once the tensorrt {version} package imports ({path.summary})"
    return f"{path.major}.x ({path.summary})"


def _openvino() -> Library:
    """OpenVINO's Python package and the devices it sees."""
    try:
        ov = importlib.import_module("openvino")
    except Exception as exc:  # an optional library may fail to import in any way
        return Library("openvino", None, f"import failed: {type(exc).__name__}: {exc}")
    version = str(getattr(ov, "__version__", "unknown version")).split("-")[0]
    try:
        devices = ov.Core().available_devices
    except Exception as exc:  # noqa: BLE001 (a plugin failing to load is reported, never raised)
        return Library("openvino", version, f"its runtime failed to start: {exc}")
    return Library("openvino", version, None if "CPU" in devices else f"no CPU device (it sees {devices})")


def _backend_status(report: Report, backend: str, device: str) -> BackendStatus:
    """Can `backend` run on `device`: what it would run on, or everything that is missing."""
    missing: list[str] = []
    if device == "cuda" and not report.gpus:
        missing.append(f"no CUDA GPU for torch ({report.gpu_reason})")  # every backend's tensors are torch's
    providers = report.onnxruntime_providers
    if backend == "torch":
        runs_on = f"torch {report.torch}"
    elif backend == "onnxruntime":
        provider = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
        runs_on = f"onnxruntime {report.onnxruntime.version} ({provider})"
        if report.onnxruntime.version is None:
            missing.append(f"onnxruntime: {report.onnxruntime.reason}")
        elif provider not in providers:
            hint = ": install onnxruntime-gpu" if device == "cuda" else ""
            missing.append(f"this onnxruntime has no {provider} (only {', '.join(providers)}){hint}")
    elif backend == "tensorrt":
        runs_on = f"TensorRT {report.tensorrt.version}, code path {report.tensorrt_path.split(' ')[0]}"
        if device == "cpu":
            missing = ["TensorRT runs on NVIDIA GPUs only"]
        elif report.tensorrt.version is None:
            missing.append(f"tensorrt: {report.tensorrt.reason}")
        elif report.tensorrt_path.startswith("none"):
            missing.append(report.tensorrt_path.removeprefix("none: "))
    elif backend == "openvino":
        runs_on = f"OpenVINO {report.openvino.version} (CPU plugin)"
        if device == "cuda":
            missing = ["sdrt runs OpenVINO on the CPU only (use --device cpu)"]
        elif report.openvino.version is None or report.openvino.reason is not None:
            missing.append(f"openvino: {report.openvino.reason}; pip install 'sdrt[openvino]'")
    else:
        missing.append("sdrt doctor does not know what this backend needs")
        runs_on = ""
    return BackendStatus(backend, device, not missing, "; ".join(missing) or runs_on)
