"""The TensorRT Python API name tables (tests/engines/tensorrt_names/, written by scripts/tensorrt_names.py), read back.

One `Table` per TensorRT version: its classes (with bound base classes), enums, and every member by owner with
its kind (method with keyword names, readable / writable property, enum value with its number). Lookups follow
the bound base classes and the members pybind11 gives every enum, as the real module would.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import ModuleType

TABLES = Path(__file__).parent / "tensorrt_names"
MODULE = "tensorrt"  # the owner of module-level names
ENUM_BUILTINS = ("name", "value", "__members__", "__int__", "__index__", "__eq__", "__ne__", "__hash__")


@dataclass(frozen=True)
class Entry:
    """One line of a table: a method overload, a property or an enum value."""

    kind: str  # "method", "r", "w", "rw" or "value"
    params: tuple[str, ...] | None = None  # a method's keyword names, "x=" with a default; None: not named
    value: int | None = None  # an enum value's number (None: not a literal in the header)

    def accepts(self, positional: int, keywords: tuple[str, ...]) -> bool:
        """Whether a call with `positional` arguments and these keywords fits this overload."""
        if self.params is None:
            return True
        names = [p.rstrip("=") for p in self.params]
        if positional > len(names) or set(keywords) - set(names[positional:]):
            return False
        required = [p.rstrip("=") for p in self.params if not p.endswith("=")]
        return all(i < positional or name in keywords for i, name in enumerate(names) if name in required)

    def describe(self) -> str:
        if self.kind == "method":
            return f"({'...' if self.params is None else ', '.join(self.params)})"
        return f" = {self.value}" if self.kind == "value" else f" [{self.kind}]"


@dataclass
class Table:
    """The Python API of one TensorRT version."""

    version: str
    classes: dict[str, tuple[str, ...]] = field(default_factory=dict)  # owner -> bound base classes
    enums: set[str] = field(default_factory=set)
    members: dict[tuple[str, str], list[Entry]] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)  # the header's comment lines: where the names came from

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    def is_type(self, owner: str) -> bool:
        return owner in self.classes or owner in self.enums

    def lookup(self, owner: str, name: str) -> list[Entry]:
        """Every entry of `owner.name`, through the base classes; [] when the version lacks it."""
        seen, queue = set(), [owner]
        while queue:
            current = queue.pop(0)
            if current in seen:
                continue
            seen.add(current)
            if (current, name) in self.members:
                return self.members[(current, name)]
            if f"{current}.{name}" in self.classes or f"{current}.{name}" in self.enums:
                return [Entry("r")]  # a nested class or enum
            queue.extend(self.classes.get(current, ()))
        if owner in self.enums and name in ENUM_BUILTINS:
            return [Entry("r")]
        if owner in self.enums and name == "__init__":
            return [Entry("method", ("value",))]  # pybind11 enums are made from their number
        if owner == MODULE and self.is_type(name):
            return [Entry("r")]
        return []

    def enum_values(self, owner: str) -> dict[str, int | None]:
        """NAME -> number of every value of enum `owner`."""
        if owner not in self.enums:
            raise KeyError(f"TensorRT {self.version} has no enum {owner}")
        return {name: e[0].value for (o, name), e in self.members.items() if o == owner and e[0].kind == "value"}

    def names(self, owner: str) -> set[str]:
        """The members `owner` itself defines (not its bases')."""
        return {name for (o, name) in self.members if o == owner}


_LINE = re.compile(
    r"^(?P<owner>[\w.]+?)\.(?P<name>\w+)"
    r"(?:\((?P<params>[^)]*)\)|\s\[(?P<kind>r|w|rw)\]|\s=\s(?P<value>-?\d+|\?))$"
)


def parse(text: str, version: str) -> Table:
    table = Table(version)
    for line in text.splitlines():
        if line.startswith("#"):
            table.sources.append(line[1:].strip())
            continue
        if line.startswith("class "):
            owner, _, bases = line[6:].partition(" : ")
            table.classes[owner] = tuple(bases.split())
            continue
        if line.startswith("enum "):
            table.enums.add(line[5:])
            continue
        match = _LINE.match(line)
        if match is None:
            raise ValueError(f"{version}: cannot read the table line {line!r}")
        if match["params"] is not None:
            params = None if match["params"] == "..." else tuple(p for p in match["params"].split(", ") if p)
            entry = Entry("method", params)
        elif match["kind"]:
            entry = Entry(match["kind"])
        else:
            entry = Entry("value", value=None if match["value"] == "?" else int(match["value"]))
        table.members.setdefault((match["owner"], match["name"]), []).append(entry)
    return table


@cache
def tables() -> dict[str, Table]:
    """Every version's table, oldest first."""
    found = {p.stem: p for p in TABLES.glob("*.txt")}
    ordered = sorted(found, key=lambda v: tuple(int(x) for x in v.split(".")))
    return {v: parse(found[v].read_text(), v) for v in ordered}


def table_for(version: str) -> Table:
    """The table of the tabulated version `version` names ("10.16.1" for 10.16.1.11)."""
    matches = [v for v in tables() if v == version or v.startswith(version + ".")]
    if len(matches) != 1:
        raise KeyError(f"no single name table for TensorRT {version}; tables: {', '.join(tables())}")
    return tables()[matches[0]]


@cache
def script(name: str) -> ModuleType:
    """scripts/<name>.py of the repository, imported (its dataclasses need it in sys.modules)."""
    path = Path(__file__).parents[2] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"sdrt_scripts_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    sys.path.insert(0, str(path.parent))  # the scripts import each other
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module
