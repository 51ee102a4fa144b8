"""setup.py's extras: one ONNX Runtime build at a time, TensorRT pinned to the majors sdrt has code paths for."""

from __future__ import annotations

import ast
from pathlib import Path

from packaging.requirements import Requirement

from sdrt.engines.tensorrt_api import SUPPORTED_MAJORS

ROOT = Path(__file__).resolve().parents[1]


def _setup_kwargs() -> dict:
    tree = ast.parse((ROOT / "setup.py").read_text())
    (call,) = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "setup"]
    return {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg in ("install_requires", "extras_require")}


def test_onnxruntime_builds_are_alternatives_never_both():
    """onnxruntime and onnxruntime-gpu install the same module; a base requirement on one would break sdrt[gpu]."""
    setup = _setup_kwargs()
    base = {Requirement(r).name for r in setup["install_requires"]}
    assert not base & {"onnxruntime", "onnxruntime-gpu"}
    extras = {name: {Requirement(r).name for r in reqs} for name, reqs in setup["extras_require"].items()}
    assert extras["cpu"] == {"onnxruntime"} and extras["gpu"] == {"onnxruntime-gpu"}
    assert {"tensorrt", "openvino", "lora", "serve-ray"} <= set(extras)
    assert extras["lora"] == {"peft"}


def test_the_tensorrt_extra_admits_exactly_the_majors_sdrt_has_code_paths_for():
    (spec,) = [Requirement(r) for r in _setup_kwargs()["extras_require"]["tensorrt"]]
    for major in range(8, 14):
        for version in (f"{major}.0.0", f"{major}.16.1"):
            assert spec.specifier.contains(version) == (major in SUPPORTED_MAJORS), version


def test_pinned_development_versions_satisfy_the_extras():
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            pins[Requirement(name).name] = version
    for extra in ("cpu", "openvino", "lora"):
        for requirement in map(Requirement, _setup_kwargs()["extras_require"][extra]):
            assert requirement.specifier.contains(pins[requirement.name]), (extra, requirement, pins[requirement.name])


def test_the_package_data_ships_the_clip_vocabulary():
    """`pip install` alone makes single-file export work: the wheel carries the vocabulary its tokenizers need."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    (call,) = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "setup"]
    (data,) = [ast.literal_eval(k.value) for k in call.keywords if k.arg == "package_data"]
    shipped = {p for pattern in data["sdrt.single_file"] for p in (ROOT / "sdrt" / "single_file").glob(pattern)}
    assert ROOT / "sdrt" / "single_file" / "vocabulary" / "bpe_simple_vocab_16e6.txt.gz" in shipped
    assert ROOT / "sdrt" / "single_file" / "vocabulary" / "LICENSE" in shipped
