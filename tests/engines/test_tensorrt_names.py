"""sdrt's TensorRT code and the TensorRT stand-in, checked against the real Python API of every supported version.

The tables (tests/engines/tensorrt_names/, written by scripts/tensorrt_names.py from the binding wheels'
string tables and NVIDIA's sources at each release) list every class, member, keyword name and enum value
of TensorRT 10.0.1, 10.1.0, 10.16.1, 11.0.0 and 11.4.0. Every name sdrt reaches must exist, as the kind sdrt
uses it as, in every version that can reach it; the stand-in may hold only names of its version.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

import sdrt
from sdrt.engines.tensorrt_api import SUPPORTED_MAJORS
from tests.engines.tensorrt_reach import failures, reach
from tests.engines.tensorrt_standin import make_tensorrt
from tests.engines.tensorrt_tables import MODULE, script, tables

SDRT = Path(sdrt.__file__).parent


def _script():
    return script("tensorrt_names")


@pytest.fixture(scope="module")
def found():
    return reach(SDRT, tables())


# --- the tables --------------------------------------------------------------------------------------------


def test_the_tables_are_the_supported_versions():
    """10.0, 10.1, the latest 10.x, 11.0, the latest 11.x: each from its wheel, none left out."""
    versions = list(tables())
    assert versions == [v for v, *_ in _script().VERSIONS]
    majors = sorted({int(v.split(".")[0]) for v in versions})
    assert tuple(majors) == SUPPORTED_MAJORS
    assert [v for v in versions if v.startswith("10.")][:2] == ["10.0.1", "10.1.0"]
    assert [v for v in versions if v.startswith("11.")][0].startswith("11.0.")
    for version, table in tables().items():
        assert any(f"bindings-{version}-" in line and "sha256" in line for line in table.sources), version
        assert len(table.members) > 1000, version


def test_the_tables_hold_what_the_headers_and_wheels_say():
    for version, table in tables().items():
        flag = table.enum_values("NetworkDefinitionCreationFlag")
        assert flag["STRONGLY_TYPED"] == (1 if table.major == 10 else 0), version
        assert ("EXPLICIT_BATCH" in flag) == (table.major == 10)
        assert table.enum_values("BuilderFlag")["REFIT"] == 4
        assert bool(table.lookup("ICudaEngine", "device_memory_size")) == (table.major == 10)
        assert bool(table.lookup("ICudaEngine", "device_memory_size_v2")) == (version != "10.0.1")
        assert bool(table.lookup("IExecutionContext", "set_device_memory")) == (version != "10.0.1")
        assert [e.kind for e in table.lookup("IExecutionContext", "device_memory")] == ["w"]
        assert not table.lookup("INetworkDefinition", "strongly_typed")
        assert not table.is_type("ExecutionContext") and not table.is_type("Engine")
        assert table.lookup("Logger", "log"), "members of bound base classes are found"


def test_names_are_looked_up_with_the_linkers_tail_merging():
    """`REFIT` may exist only as the end of `INCLUDE_REFIT`, `DataType` only as the end of `nvinfer1::DataType`."""
    script = _script()
    strings = script.StringTable([b"INCLUDE_REFIT", b"nvinfer1::DataType", b"a docstring.", b""])
    assert "REFIT" in strings and "INCLUDE_REFIT" in strings and "DataType" in strings
    assert "FP16" not in strings and "docstring" not in strings


def test_the_bindings_parser_reads_owners_kinds_and_keywords():
    source = """
    py::class_<IFoo>(m, "Foo", FooDoc::descr)
        .def("run", &IFoo::run, "stream"_a, py::arg("sync") = false, FooDoc::run)
        .def_property("memory", nullptr, &setMemory)
        .def_property_readonly("size", &IFoo::size)
        .def(py::init<>());
    py::enum_<Kind>(m, "Kind", py::arithmetic{}).value("A", Kind::kA).value("B", Kind::kB);
    """
    script = _script()
    parsed = script.parse_bindings([source])
    assert parsed.classes == {"Foo": []} and parsed.enums == {"Kind"}
    members = {(m.owner, m.name): m for m in parsed.members}
    assert members[("Foo", "run")].params == ("stream", "sync=")
    assert members[("Foo", "memory")].kind == "w" and members[("Foo", "size")].kind == "r"
    assert members[("Foo", "__init__")].params == ()
    enums = script.parse_enums(["enum class Kind : int32_t { kA TRT_DEPRECATED_ENUM = 0, kB = 1 << 2, kC };"])
    assert enums["Kind"] == [{"kA": 0, "kB": 4, "kC": 5}]


# --- sdrt's code -------------------------------------------------------------------------------------------


def test_every_tensorrt_name_sdrt_reaches_exists_in_every_version_that_reaches_it(found):
    assert failures(found) == []


def test_the_check_sees_the_whole_path_and_its_version_checks(found):
    """Not vacuous: the run, load and refit calls are among the names checked, each for the right versions."""
    reached = {(u.owner, u.name): u for u in found.uses}
    for name in [
        ("IExecutionContext", "set_tensor_address"),
        ("IExecutionContext", "execute_async_v3"),
        ("IExecutionContext", "get_tensor_shape"),
        ("ICudaEngine", "create_execution_context"),
        ("ICudaEngine", "get_tensor_mode"),
        ("Runtime", "deserialize_cuda_engine"),
        ("IBuilderConfig", "add_optimization_profile"),
        ("Refitter", "set_named_weights"),
        ("Weights", "dtype"),
        (MODULE, "nptype"),
        ("Logger", "__init__"),
    ]:
        assert name in reached, name
    everything = frozenset(tables())
    assert reached[("ICudaEngine", "device_memory_size")].versions == {"10.0.1"}
    assert reached[("IExecutionContext", "device_memory")].versions == {"10.0.1"}
    assert reached[("NetworkDefinitionCreationFlag", "STRONGLY_TYPED")].versions == {
        v for v in everything if v.startswith("10.")
    }
    assert reached[("IExecutionContext", "set_device_memory")].how in ("call", "hasattr")


PLANTS = {
    "engine.device_memory_size": r"ICudaEngine\.device_memory_size \(load\) 11\.0\.0\.114: no such name",
    "trt.ExecutionContext": r"tensorrt\.ExecutionContext \(load\) 10\.0\.1: no such name",
    "context.set_device_memory(0)": r"set_device_memory \(call\) 10\.0\.1: no such name; 10\.1\.0: no overload",
    "context.device_memory": r"IExecutionContext\.device_memory \(load\) 10\.0\.1: a write-only property",
    "engine.refittable = True": r"ICudaEngine\.refittable \(store\) 10\.0\.1: not writable",
    "hasattr(engine, 'device_memory_size_v3')": r"device_memory_size_v3 is in no TensorRT version",
    "trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH": r"EXPLICIT_BATCH \(load\) 11\.0\.0\.114: no such name",
    "context.execute_async_v3(stream=0)": r"execute_async_v3 \(call\) 10\.0\.1: no overload takes 0 positional",
    "trt.ICudaEngine()": r"ICudaEngine\.__init__ \(call\) 10\.0\.1: cannot be constructed",
    "helper(engine)": r"a TensorRT ICudaEngine goes into parameter x of helper, which is not annotated",
    "engine.get_tensor_profile_shape('x', 0).foo": r"foo is taken on what ICudaEngine\.get_tensor_profile_shape gives",
}
GOOD = [
    "engine.device_memory_size_v2 if hasattr(engine, 'device_memory_size_v2') else engine.device_memory_size",
    "context.set_device_memory(0, 1) if hasattr(context, 'set_device_memory') else None",
]


def _plant(tmp_path: Path, line: str) -> list[str]:
    package = tmp_path / "sdrt"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "planted.py").write_text(
        "from __future__ import annotations\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    import tensorrt as trt\n\n\n"
        "def helper(x):\n"
        "    return x\n\n\n"
        "def planted(trt, engine: trt.ICudaEngine, context: trt.IExecutionContext) -> None:\n"
        f"    {line}\n"
    )
    return failures(reach(package, tables()))


@pytest.mark.parametrize("line", list(PLANTS))
def test_a_planted_name_a_version_lacks_fails(line, tmp_path):
    found = _plant(tmp_path, line)
    assert found, f"{line} passed the check"
    assert any(re.search(PLANTS[line], f) for f in found), found


@pytest.mark.parametrize("line", GOOD)
def test_a_name_behind_its_version_check_passes(line, tmp_path):
    assert _plant(tmp_path, line) == []


# --- the stand-in ------------------------------------------------------------------------------------------


def _kind(value) -> str:
    if isinstance(value, property):
        readable, writable = value.fget is not None, value.fset is not None
        return {(True, False): "r", (False, True): "w", (True, True): "rw"}[(readable, writable)]
    return "method" if callable(value) else "value"


def _standin_differences(trt, table) -> list[str]:
    """Every name of stand-in `trt` its version lacks, every enum number it gets wrong."""
    wrong = []
    for name, value in vars(trt).items():
        if name.startswith("_") and name != "__version__":
            continue  # the stand-in's own records (calls, printed)
        if not table.lookup(MODULE, name):
            wrong.append(f"tensorrt.{name} does not exist in TensorRT {table.version}")
        if isinstance(value, type) and issubclass(value, int):  # an enum: the header's numbers
            values = table.enum_values(name)
            mine = {k: int(m) for k, m in value.__members__.items()}  # aliases too (WEIGHTLESS = STRIP_PLAN)
            if mine != {k: v for k, v in values.items() if v is not None}:
                wrong.append(f"{name} values {mine} are not {values}")
        elif isinstance(value, type):
            wrong.extend(_class_differences(table, name, value))
    severity = {k: int(m) for k, m in trt.ILogger.Severity.__members__.items()}
    if severity != table.enum_values("ILogger.Severity"):
        wrong.append(f"ILogger.Severity values {severity}")
    return wrong


@pytest.mark.parametrize("version", list(tables()))
def test_the_standin_has_only_names_its_version_has(version):
    assert _standin_differences(make_tensorrt(version), tables()[version]) == []


def test_the_standin_check_catches_what_the_old_standin_invented(monkeypatch):
    """The mistakes of sdrt's first stand-in, planted back: invented classes and members, 11.x's flag numbers."""
    trt = make_tensorrt("11.4.0")
    monkeypatch.setattr(trt.INetworkDefinition, "strongly_typed", property(lambda self: True), raising=False)
    monkeypatch.setattr(trt, "ExecutionContext", trt.IExecutionContext, raising=False)
    monkeypatch.setattr(trt, "NetworkDefinitionCreationFlag", __import__("enum").IntEnum("F", {"STRONGLY_TYPED": 1}))
    monkeypatch.setattr(trt.IExecutionContext, "set_device_memory", lambda self, memory: None)
    wrong = "\n".join(_standin_differences(trt, tables()["11.4.0.106"]))
    assert "INetworkDefinition.strongly_typed does not exist" in wrong
    assert "tensorrt.ExecutionContext does not exist" in wrong
    assert "NetworkDefinitionCreationFlag values {'STRONGLY_TYPED': 1}" in wrong
    assert "IExecutionContext.set_device_memory(self, memory) matches none of" in wrong


def _class_differences(table, name: str, cls: type) -> list[str]:
    out = []
    for attr, value in vars(cls).items():
        if (attr.startswith("_") and attr != "__init__") or attr in ("Severity",):
            continue
        entries = table.lookup(name, attr)
        if attr == "__init__" and not entries:
            continue  # a class Python cannot construct: only the stand-in itself makes them
        if not entries:
            out.append(f"{name}.{attr} does not exist in TensorRT {table.version}")
            continue
        kind = _kind(value)
        kinds = {e.kind for e in entries}
        if kind in ("r", "w", "rw") and not (set(kind) <= set("".join(kinds)) and kinds - {"method", "value"}):
            out.append(f"{name}.{attr} is a [{kind}] property, TensorRT's is {sorted(kinds)}")
        elif kind == "method":
            params = list(inspect.signature(value).parameters.values())[1:]
            if not any(_same_parameters(params, e.params) for e in entries if e.kind == "method"):
                shown = [e.describe() for e in entries]
                out.append(f"{name}.{attr}{inspect.signature(value)} matches none of TensorRT's {shown}")
    return out


def _same_parameters(params, real) -> bool:
    """The stand-in's parameters are a prefix of a real overload's, with defaults only where it has them."""
    if real is None:
        return True
    if len(params) > len(real):
        return False
    for mine, theirs in zip(params, real, strict=False):
        defaulted = mine.default is not inspect.Parameter.empty
        if mine.name != theirs.rstrip("=") or (defaulted and not theirs.endswith("=")):
            return False
    return all(r.endswith("=") for r in real[len(params) :])
