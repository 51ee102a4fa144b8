"""`sdrt doctor`: reports the machine and, for every backend and device, whether it runs and why not."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace

import pytest
import torch

from sdrt.cli import main
from sdrt.doctor import Gpu, Library, _backend_status, _tensorrt_path, diagnose, format_report
from sdrt.engines import BACKENDS, DEVICES


@pytest.fixture(scope="module")
def report():
    return diagnose()


def _status(report, backend, device):
    (status,) = [s for s in report.backends if (s.backend, s.device) == (backend, device)]
    return status


def test_every_backend_and_device_is_reported(report):
    assert [(s.backend, s.device) for s in report.backends] == [(b, d) for b in BACKENDS for d in DEVICES]
    assert all(s.reason for s in report.backends), "every row says what it runs on or what is missing"
    assert _status(report, "torch", "cpu").ok and _status(report, "onnxruntime", "cpu").ok
    assert report.torch == torch.__version__ and report.torch_cuda == torch.version.cuda
    assert "CPUExecutionProvider" in report.onnxruntime_providers


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU; the check is for machines without")
def test_no_gpu_is_reported_with_the_reason(report):
    assert report.gpus == [] and report.gpu_reason
    for backend in ("torch", "onnxruntime"):
        status = _status(report, backend, "cuda")
        assert not status.ok and "no CUDA GPU for torch" in status.reason
    if torch.version.cuda is None:
        assert "CPU build" in report.gpu_reason


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT's Python package is installed")
def test_missing_tensorrt_is_reported(report):
    assert report.tensorrt == Library("tensorrt", None, "no Python package 'tensorrt' is installed")


def test_a_broken_tensorrt_install_reports_its_import_error(monkeypatch):
    """The pip stub without its libraries imports with an error; doctor says which instead of failing."""
    import sdrt.doctor as doctor

    def fail(name):
        raise OSError("libnvinfer.so.10: cannot open shared object file")

    monkeypatch.setattr(doctor.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(doctor.importlib, "import_module", fail)
    lib = doctor._tensorrt()
    assert (
        lib.version is None and lib.reason == "import failed: OSError: libnvinfer.so.10: cannot open shared object file"
    )


def test_gpu_machine_rows(report):
    """The same logic on a made-up GPU machine: which rows turn to yes, and what still blocks the others."""
    gpu = Gpu(0, "NVIDIA H100 80GB HBM3", 79.1, "9.0")
    machine = replace(report, gpus=[gpu], gpu_reason=None, onnxruntime_providers=["CPUExecutionProvider"])
    assert _backend_status(machine, "torch", "cuda").ok
    ort_cuda = _backend_status(machine, "onnxruntime", "cuda")
    assert not ort_cuda.ok and ort_cuda.reason.endswith("install onnxruntime-gpu")
    with_provider = replace(machine, onnxruntime_providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert _backend_status(with_provider, "onnxruntime", "cuda").ok
    trt = replace(
        machine, tensorrt=Library("tensorrt", "10.13.0"), tensorrt_path=_tensorrt_path(Library("t", "10.13.0"))
    )
    assert _backend_status(trt, "tensorrt", "cuda").ok
    assert _backend_status(trt, "tensorrt", "cuda").reason == "TensorRT 10.13.0, code path 10.x"
    too_new = replace(
        machine, tensorrt=Library("tensorrt", "12.0.0"), tensorrt_path=_tensorrt_path(Library("t", "12.0.0"))
    )
    assert "newer than the 10.x and 11.x" in _backend_status(too_new, "tensorrt", "cuda").reason
    assert _backend_status(trt, "tensorrt", "cpu").reason == "TensorRT runs on NVIDIA GPUs only"
    assert not _backend_status(machine, "tensorrt", "cuda").ok
    assert "H100" in format_report(replace(trt, backends=[_backend_status(trt, "tensorrt", "cuda")]))


def test_cli_text_and_json(capsys):
    assert main(["doctor"]) == 0
    text = capsys.readouterr().out
    assert "onnxruntime" in text and "can run" in text and "tensorrt" in text
    assert main(["doctor", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"gpus", "gpu_reason", "torch_cuda", "onnxruntime_providers", "tensorrt", "backends"} <= set(data)
    assert {"backend", "device", "ok", "reason"} == set(data["backends"][0])


def test_tensorrt_code_path_is_named(monkeypatch):
    """doctor says which TensorRT code path a machine takes: from the imported module, else the installed package."""
    import sdrt.doctor as doctor

    assert _tensorrt_path(Library("tensorrt", "11.1.0")).startswith("11.x (TensorRT 11.x: always strongly typed")
    assert _tensorrt_path(Library("tensorrt", "10.16.1")).startswith("10.x (TensorRT 10.x: strongly typed by")
    assert (
        _tensorrt_path(Library("tensorrt", "9.3.0"))
        == "none: TensorRT 9.3.0 is too old: sdrt needs TensorRT 10.x or 11.x"
    )
    monkeypatch.setattr(doctor.metadata, "version", lambda name: "11.0.0")  # the pip stub, libraries missing
    stub = _tensorrt_path(Library("tensorrt", None, "import failed: OSError: libnvinfer.so.11"))
    assert stub.startswith("11.x once the tensorrt 11.0.0 package imports")

    def missing(name):
        raise doctor.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(doctor.metadata, "version", missing)
    assert _tensorrt_path(Library("tensorrt", None, "no Python package")) == "none: TensorRT is not installed"


def test_openvino_rows(report):
    if report.openvino.version is None:
        pytest.skip(f"openvino is not installed here: {report.openvino.reason}")
    assert _status(report, "openvino", "cpu").ok and "OpenVINO" in _status(report, "openvino", "cpu").reason
    assert _status(report, "openvino", "cuda").reason.startswith("sdrt runs OpenVINO on the CPU only")
