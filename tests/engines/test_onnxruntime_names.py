"""The ONNX Runtime names sdrt passes, checked against the library: CUDA provider options, config keys, options' fields.

- CUDA provider options: against the table scripts/onnxruntime_names.py read from the onnxruntime-gpu wheel of
  the pinned version (this machine's onnxruntime is the CPU build, without the provider);
- session and run configuration keys: against the string table of the installed library, which defines them;
- SessionOptions / RunOptions fields and GraphOptimizationLevel members: against the installed Python API.
"""

from __future__ import annotations

import ast
from pathlib import Path

import onnxruntime as ort
import pytest

import sdrt
from sdrt.engines.onnxruntime_backend import OnnxRuntimeOptions
from tests.engines.tensorrt_tables import script

SDRT = Path(sdrt.__file__).parent
TABLES = Path(__file__).parent / "onnxruntime_names"


def _cuda_options_table() -> set[str]:
    path = TABLES / f"{ort.__version__}.txt"
    if not path.is_file():
        raise AssertionError(
            f"no CUDA option table for the installed onnxruntime {ort.__version__}: run scripts/onnxruntime_names.py"
        )
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    return {line.split(".", 1)[1] for line in lines if line.startswith("CUDAExecutionProvider.")}


def _library_strings() -> bytes:
    """The read-only data of the installed ONNX Runtime library (where its configuration keys are defined)."""
    capi = Path(ort.__file__).parent / "capi"
    (library,) = [p for p in capi.iterdir() if p.name.startswith("libonnxruntime.so")]
    return b"\0" + b"\0".join(script("tensorrt_names").rodata_strings(library.read_bytes()))


def _sdrt_cuda_options(monkeypatch) -> dict:
    """The CUDA provider options sdrt's onnxruntime backend passes, with CUDA graphs on (every option it has)."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    providers = OnnxRuntimeOptions(device="cuda:0", tf32=True, cuda_graphs=True).providers(cuda_graph=True)
    (cuda,) = [p for p in providers if isinstance(p, tuple) and p[0] == "CUDAExecutionProvider"]
    return cuda[1]


def _config_keys(method: str) -> set[str]:
    """First arguments of every `<x>.<method>("key", ...)` call in sdrt."""
    keys = set()
    for path in SDRT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == method
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                keys.add(node.args[0].value)
    return keys


def test_the_cuda_provider_options_sdrt_passes_exist(monkeypatch):
    options = _sdrt_cuda_options(monkeypatch)
    assert set(options) == {"device_id", "use_tf32", "enable_cuda_graph"}  # what this check covers
    table = _cuda_options_table()
    assert len(table) > 10
    assert set(options) <= table, sorted(set(options) - table)
    assert "enable_cuda_graphs" not in table and "tf32" not in table  # a near miss is not in the table


def test_the_session_and_run_config_keys_sdrt_passes_are_the_librarys():
    session, run = _config_keys("add_session_config_entry"), _config_keys("add_run_config_entry")
    assert "session.optimized_model_external_initializers_file_name" in session and run == {"gpu_graph_id"}
    strings = _library_strings()
    unknown = [key for key in sorted(session | run) if key.encode() + b"\0" not in strings]
    assert unknown == []
    planted = "session.optimized_model_external_initializer_file_name"  # one letter short
    assert planted.encode() + b"\0" not in strings


def _fields_used() -> dict[str, set[str]]:
    """Attributes sdrt's onnxruntime code reaches on SessionOptions, RunOptions and GraphOptimizationLevel."""
    makers = {"SessionOptions": "SessionOptions", "_session_options": "SessionOptions", "RunOptions": "RunOptions"}
    used: dict[str, set[str]] = {"SessionOptions": set(), "RunOptions": set(), "GraphOptimizationLevel": set()}
    tree = ast.parse((SDRT / "engines" / "onnxruntime_backend.py").read_text())
    for function in [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]:
        kinds = {}
        for node in ast.walk(function):
            if isinstance(node, ast.Assign) and isinstance(node.value, (ast.Call, ast.Attribute)):
                value = node.value.func if isinstance(node.value, ast.Call) else node.value
                name = value.attr if isinstance(value, ast.Attribute) else getattr(value, "id", None)
                kind = makers.get(name) if isinstance(node.value, ast.Call) else name
                for target in node.targets:
                    if isinstance(target, ast.Name) and kind in used:
                        kinds[target.id] = kind
        for node in ast.walk(function):
            if isinstance(node, ast.Attribute):
                if isinstance(node.value, ast.Name) and node.value.id in kinds:
                    used[kinds[node.value.id]].add(node.attr)
                elif isinstance(node.value, ast.Attribute) and node.value.attr == "GraphOptimizationLevel":
                    used["GraphOptimizationLevel"].add(node.attr)
    return used


def test_the_options_fields_sdrt_sets_exist_in_the_installed_onnxruntime():
    used = _fields_used()
    assert {"intra_op_num_threads", "graph_optimization_level", "add_session_config_entry"} <= used["SessionOptions"]
    assert "add_run_config_entry" in used["RunOptions"]
    assert {"ORT_DISABLE_ALL", "ORT_ENABLE_ALL"} <= used["GraphOptimizationLevel"]
    objects = {
        "SessionOptions": ort.SessionOptions(),
        "RunOptions": ort.RunOptions(),
        "GraphOptimizationLevel": ort.GraphOptimizationLevel,
    }
    missing = [f"{kind}.{n}" for kind, names in used.items() for n in sorted(names) if not hasattr(objects[kind], n)]
    assert missing == []


@pytest.mark.parametrize("name", ["intra_op_threads", "optimized_model_path"])
def test_a_misspelt_field_would_be_caught(name):
    assert not hasattr(ort.SessionOptions(), name)
