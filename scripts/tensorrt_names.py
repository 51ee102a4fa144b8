"""Write the Python API name tables of the TensorRT versions sdrt supports, for tests/engines/test_tensorrt_names.py.

TensorRT's libraries cannot be installed on sdrt's CI machines, but its binding wheels
(`tensorrt-cu12-bindings`, `tensorrt-cu13-bindings`) can be downloaded: their `tensorrt.so` cannot be
imported without the libraries, yet its read-only data holds every string the pybind11 bindings register
(class members, enum values, keyword names). Which class owns each name, what kind of member it is and
the C++ enumerator behind each enum value come from NVIDIA's sources at the release's tag
(`python/src/**/*.cpp`, `include/NvInfer*.h`, in a clone of https://github.com/NVIDIA/TensorRT); a name
is written only when the wheel's string table holds it too. Strings are looked up with the linker's tail
merging in mind: a name may exist only as the end of a longer string (`REFIT` inside `INCLUDE_REFIT`).
The module-level Python names (`nptype`, `__version__`) come from the wheel's own `__init__.py`.

    python scripts/tensorrt_names.py --tensorrt-repo ~/src/TensorRT [--wheels DIR] [--out tests/engines/tensorrt_names]

needs `pip download` access to the wheels and `git` for the clone (read with `git show TAG:PATH`). One
file per version, one line per name:

    class Logger : ILogger                       a class (and its bound base classes)
    enum BuilderFlag                             an enum
    BuilderFlag.REFIT = 6                        an enum value (the header's number; `?` when it is not a literal)
    IExecutionContext.set_device_memory(memory, size)   a method and its keyword names (`name=` has a default;
                                                 `(...)` when the binding names none); one line per overload
    IExecutionContext.device_memory [w]          a property or attribute: [r], [w] (write-only) or [rw]
    tensorrt.nptype(trt_type)                    a module-level name

Nothing of NVIDIA's is copied into the tables but names and numbers.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import re
import struct
import subprocess
import sys
import zipfile
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

# (version, wheel package, source tag in NVIDIA/TensorRT, note). The supported range is 10.0 .. 11.x (see
# sdrt.engines.tensorrt_api): its first two releases, the latest 10.x, the first and the latest 11.x.
VERSIONS = (
    ("10.0.1", "tensorrt-cu12-bindings", "v10.0.1", ""),
    ("10.1.0", "tensorrt-cu12-bindings", "v10.1.0", ""),
    ("10.16.1.11", "tensorrt-cu12-bindings", "5302b288c5603895508711bdf2df11dc29c8ad92", "the 10.16.1 update commit"),
    ("11.0.0.114", "tensorrt-cu12-bindings", "v11.0", ""),
    (
        "11.4.0.106",
        "tensorrt-cu12-bindings",
        "v11.1",
        "the NVIDIA/TensorRT sources end at 11.1: owners, kinds and enum values are 11.1's (each name still found "
        "in 11.4's .so); a name 11.2-11.4 added is missing",
    ),
)
ALSO_SAME = {"11.4.0.106": "tensorrt-cu13-bindings"}  # must hold the same names as the cu12 wheel of that version

DEF_KINDS = {
    "def": "method",
    "def_static": "method",
    "def_property": "rw",
    "def_property_readonly": "r",
    "def_property_static": "rw",
    "def_property_readonly_static": "r",
    "def_readwrite": "rw",
    "def_readonly": "r",
    "def_readwrite_static": "rw",
    "def_readonly_static": "r",
}


# --- the wheel: download, read tensorrt.so's strings and __init__.py ------------------------------------------


def download(package: str, version: str, directory: Path) -> Path:
    """The wheel of `package`==`version` in `directory`, fetched with pip when not there yet."""
    stem = package.replace("-", "_")
    found = sorted(directory.glob(f"{stem}-{version}-*.whl"))
    if not found:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", f"{package}=={version}", "-d", str(directory)],
            check=True,
        )
        found = sorted(directory.glob(f"{stem}-{version}-*.whl"))
    if not found:
        raise SystemExit(f"pip saved no wheel of {package}=={version} in {directory}")
    return found[0]


def rodata_strings(elf: bytes) -> list[bytes]:
    """The NUL-terminated strings of an ELF64 little-endian file's .rodata section."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF file")
    (shoff,) = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
    headers = [struct.unpack_from("<IIQQQQIIQQ", elf, shoff + i * shentsize) for i in range(shnum)]
    names = headers[shstrndx]
    for name, _, _, _, offset, size, *_ in headers:
        start = names[4] + name
        if elf[start : elf.index(b"\0", start)] == b".rodata":
            return elf[offset : offset + size].split(b"\0")
    raise ValueError("no .rodata section")


class StringTable:
    """What a shared object's string table holds: whole strings and, for the linker's tail merging, their tails."""

    def __init__(self, strings: Iterable[bytes]) -> None:
        # the identifier each string ends with ("DataType" may live only at the end of "nvinfer1::DataType")
        words = {m.group(0).decode("latin-1") for s in strings if (m := re.search(rb"[A-Za-z0-9_]+$", s))}
        self.tails = {w[i:] for w in words for i in range(len(w))}

    def __contains__(self, name: str) -> bool:
        return name in self.tails


def wheel_files(wheel: Path) -> tuple[bytes, str]:
    """(tensorrt.so bytes, __init__.py text) of a bindings wheel."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        so = next(n for n in names if n.endswith("/tensorrt.so") or n.endswith(".so") and "/tensorrt." in n)
        init = next(n for n in names if n.endswith("/__init__.py") and n.count("/") == 1)
        return archive.read(so), archive.read(init).decode()


# --- NVIDIA's sources: the pybind11 bindings and the headers' enums ----------------------------------------------

_TOKEN = re.compile(
    r"""(?P<skip>\s+|//[^\n]*|/\*.*?\*/|^[ \t]*\#(?:\\\n|[^\n])*)
      |(?P<raw>R"(?P<delim>[^(\s]*)\(.*?\)(?P=delim)")
      |(?P<str>"(?:\\.|[^"\\\n])*"(?:_a\b)?)
      |(?P<chr>'(?:\\.|[^'\\\n])*')
      |(?P<num>0[xX][0-9a-fA-F]+[uUlL]*|\d+[uUlL]*)
      |(?P<id>[A-Za-z_]\w*)
      |(?P<op>::|<<|->|.)""",
    re.X | re.S | re.M,
)


def tokens(text: str) -> list[str]:
    out = []
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup
        if kind == "delim":
            kind = "raw"
        if kind not in ("skip", None):
            out.append(match.group(0))
    return out


def _close(toks: list[str], start: int) -> int:
    """Index of the bracket closing the one at `start` (parentheses, braces, brackets)."""
    pairs = {"(": ")", "{": "}", "[": "]"}
    depth = 0
    for i in range(start, len(toks)):
        if toks[i] in pairs:
            depth += 1
        elif toks[i] in pairs.values():
            depth -= 1
            if depth == 0:
                return i
    raise ValueError(f"unbalanced bracket at token {start}")


def _split_args(toks: list[str]) -> list[list[str]]:
    """Top-level comma-separated arguments of a bracketed token list (without its brackets)."""
    args, current, depth = [], [], 0
    for t in toks:
        if t in "({[":
            depth += 1
        elif t in ")}]":
            depth -= 1
        if t == "," and depth == 0:
            args.append(current)
            current = []
        else:
            current.append(t)
    if current:
        args.append(current)
    return args


def _template_args(toks: list[str], start: int) -> tuple[list[str], int]:
    """The top-level arguments of the template list opening at toks[start] == '<', and the index after '>'."""
    depth, current, args = 0, [], []
    for i in range(start, len(toks)):
        t = toks[i]
        if t == "<":
            depth += 1
            if depth == 1:
                continue
        elif t == ">":
            depth -= 1
            if depth == 0:
                args.append("".join(current))
                return args, i + 1
        if t == "," and depth == 1:
            args.append("".join(current))
            current = []
        else:
            current.append(t)
    raise ValueError("unclosed template argument list")


def _string(tok: str) -> str | None:
    if tok.startswith('"') and tok.endswith('"'):
        return tok[1:-1]
    return None


@dataclass
class Member:
    owner: str
    name: str
    kind: str  # "method", "r", "w", "rw", "value"
    params: tuple[str, ...] | None = None  # keyword names of a method ("x=" with a default); None: not named
    enumerator: tuple[str, str] | None = None  # (C++ enum, enumerator) of a value
    cpp: str = ""  # the C++ expression of a value


@dataclass
class Bindings:
    classes: dict[str, list[str]] = field(default_factory=dict)  # python owner -> python base names
    enums: set[str] = field(default_factory=set)
    members: list[Member] = field(default_factory=list)
    cpp_names: dict[str, str] = field(default_factory=dict)  # C++ type -> python owner


def _params(call: list[str]) -> tuple[str, ...] | None:
    """Keyword names of a .def(...) call: "x"_a and py::arg("x"), "x=" when a default follows."""
    names = []
    for i, t in enumerate(call):
        name = None
        if t.endswith('"_a'):
            name, after = t[1:-3], i + 1
        elif t == "arg" and i >= 2 and call[i - 1] == "::" and call[i - 2] == "py" and call[i + 1] == "(":
            name = _string(call[i + 2])
            after = _close(call, i + 1) + 1
        if name is not None:
            default = after < len(call) and call[after] == "="
            names.append(name + ("=" if default else ""))
    return tuple(names) if names else None


def parse_bindings(sources: Iterable[str]) -> Bindings:
    """Every class, enum and member the pybind11 sources register, with its Python owner."""
    out = Bindings()
    pending_bases: dict[str, list[str]] = {}
    for text in sources:
        toks = tokens(text)
        variables: dict[str, str] = {"m": "tensorrt"}
        i = 0
        while i < len(toks):
            t = toks[i]
            if t == "py" and toks[i + 1 : i + 3] in (["::", "class_"], ["::", "enum_"]) and toks[i + 3] == "<":
                kind = toks[i + 2]
                targs, j = _template_args(toks, i + 3)
                var = None
                if toks[j] not in "({":
                    var, j = toks[j], j + 1
                elif i >= 2 and toks[i - 1] == "=" and toks[i - 3] == "auto":
                    var = toks[i - 2]
                if toks[j] not in "({":
                    i += 1
                    continue
                end = _close(toks, j)
                args = _split_args(toks[j + 1 : end])
                scope, name = "".join(args[0]), _string(args[1][0]) if len(args) > 1 and args[1] else None
                if name is None:
                    i = end + 1
                    continue
                owner = name if scope == "m" else f"{variables.get(scope, '?' + scope)}.{name}"
                out.cpp_names[targs[0].split("::")[-1]] = owner
                if kind == "enum_":
                    out.enums.add(owner)
                else:
                    out.classes.setdefault(owner, [])
                    pending_bases[owner] = [a.split("::")[-1] for a in targs[1:] if re.fullmatch(r"[\w:]+", a)]
                if var:
                    variables[var] = owner
                i = _chain(toks, end + 1, owner, out, kind == "enum_")
                continue
            if (
                re.fullmatch(r"[A-Za-z_]\w*", t)
                and t in variables
                and toks[i + 1 : i + 2] == ["."]
                and (i == 0 or toks[i - 1] in (";", "{", "}"))
            ):
                owner = variables[t]
                i = _chain(toks, i + 1, owner, out, owner in out.enums)
                continue
            i += 1
    for owner, bases in pending_bases.items():
        out.classes[owner] = [out.cpp_names[b] for b in bases if b in out.cpp_names and out.cpp_names[b] != owner]
    return out


def _chain(toks: list[str], i: int, owner: str, out: Bindings, is_enum: bool) -> int:
    """Read `.def(...)...` calls on `owner` from toks[i]; the index after the chain."""
    values: list[Member] = []
    while i + 2 < len(toks) and toks[i] == "." and toks[i + 2] == "(":
        method, start = toks[i + 1], i + 2
        end = _close(toks, start)
        call = toks[start + 1 : end]
        args = _split_args(call)
        first = args[0] if args else []
        if method in DEF_KINDS:
            name = _string(first[0]) if first else None
            if name is None and first[:3] == ["py", "::", "init"]:
                name = "__init__"
                if first[3:6] == ["<", ">", "("]:  # py::init<>(): no arguments
                    out.members.append(Member(owner, name, "method", ()))
                    i = end + 1
                    continue
            if name is not None:
                kind = DEF_KINDS[method]
                if kind == "rw" and method.startswith("def_property") and len(args) > 1 and args[1] == ["nullptr"]:
                    kind = "w"  # pybind11's write-only property: a null getter
                params = _params(call) if kind == "method" else None
                out.members.append(Member(owner, name, kind, params))
        elif method == "value" and first:
            name = _string(first[0])
            cpp = "".join(args[1]) if len(args) > 1 else ""
            parts = re.findall(r"\w+", cpp)
            enumerator = (parts[-2], parts[-1]) if len(parts) >= 2 else None
            if name is not None:
                member = Member(owner, name, "value", enumerator=enumerator, cpp=cpp)
                values.append(member)
                out.members.append(member)
        elif method == "export_values" and is_enum:
            scope = owner.rsplit(".", 1)[0] if "." in owner else "tensorrt"
            out.members.extend(Member(scope, v.name, "value", enumerator=v.enumerator, cpp=v.cpp) for v in values)
        elif method == "attr" and owner == "tensorrt" and first:
            name = _string(first[0])
            if name is not None:
                out.members.append(Member(owner, name, "rw"))
        i = end + 1
    return i


def parse_enums(headers: Iterable[str]) -> dict[str, list[dict[str, int | None]]]:
    """C++ enum name -> the enumerator values of each enum of that name in the headers."""
    found: dict[str, list[dict[str, int | None]]] = defaultdict(list)
    for text in headers:
        toks = tokens(text)
        for i, t in enumerate(toks):
            if t != "enum":
                continue
            j = i + 1
            if toks[j] in ("class", "struct"):
                j += 1
            name = toks[j]
            while j < len(toks) and toks[j] not in ("{", ";"):
                j += 1
            if j >= len(toks) or toks[j] != "{":
                continue
            body = toks[j + 1 : _close(toks, j)]
            values: dict[str, int | None] = {}
            last: int | None = -1
            for item in _split_args(body):
                item = [x for x in item if not re.fullmatch(r"TRT_\w*DEPRECATED\w*|TRT_NODISCARD", x)]
                if not item:
                    continue
                if "=" in item:
                    value = _evaluate(item[item.index("=") + 1 :], values)
                else:
                    value = None if last is None else last + 1
                values[item[0]] = value
                last = value
            found[name].append(values)
    return found


def _evaluate(expr: list[str], known: dict[str, int | None]) -> int | None:
    """The value of a simple constant expression of an enumerator (literals, shifts, ors, earlier enumerators)."""
    text = []
    i = 0
    while i < len(expr):
        t = expr[i]
        if t == "static_cast" and expr[i + 1] == "<":
            _, i = _template_args(expr, i + 1)
            continue
        if re.fullmatch(r"0[xX][0-9a-fA-F]+[uUlL]*|\d+[uUlL]*", t):
            text.append(str(int(t.rstrip("uUlL"), 0)))
        elif re.fullmatch(r"[A-Za-z_]\w*", t):
            if i + 1 < len(expr) and expr[i + 1] == "::":
                i += 2
                continue
            if known.get(t) is None:
                return None
            text.append(str(known[t]))
        elif t in ("<<", "|", "(", ")", "-", "~", "+", "&"):
            text.append(t)
        else:
            return None
        i += 1
    try:
        tree = ast.parse("".join(text), mode="eval")
    except SyntaxError:
        return None
    allowed = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Constant, ast.LShift, ast.BitOr, ast.BitAnd, ast.USub)
    allowed += (ast.Invert, ast.Add, ast.Sub)
    if not all(isinstance(node, allowed) for node in ast.walk(tree)):
        return None
    return int(eval(compile(tree, "<enum>", "eval")))  # only integer arithmetic nodes passed the check above


def resolve(enumerator: tuple[str, str] | None, enums: dict[str, list[dict[str, int | None]]]) -> int | None:
    if enumerator is None:
        return None
    enum, name = enumerator
    candidates = {v[name] for v in enums.get(enum, []) if name in v}
    return candidates.pop() if len(candidates) == 1 else None


def python_names(init: str) -> list[Member]:
    """Module-level names and class attributes the wheel's __init__.py defines (after `from .tensorrt import *`)."""
    out = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
                params = tuple(
                    a.arg + ("=" if i >= len(node.args.args) - len(node.args.defaults) else "")
                    for i, a in enumerate(node.args.args)
                )
                out.append(Member("tensorrt", node.name, "method", params))
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name) and (not target.id.startswith("_") or target.id == "__version__"):
                        out.append(Member("tensorrt", target.id, "rw"))
                    elif isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name):
                        prop = isinstance(node.value, ast.Call) and getattr(node.value.func, "id", "") == "property"
                        out.append(Member(target.value.id, target.attr, "r" if prop else "rw"))

    visit(ast.parse(init).body)
    return out


# --- one version's table --------------------------------------------------------------------------------------


def git_show(repo: Path, tag: str, path: str) -> str:
    shown = subprocess.run(["git", "-C", str(repo), "show", f"{tag}:{path}"], check=True, capture_output=True)
    return shown.stdout.decode()


def git_files(repo: Path, tag: str, *roots: str) -> list[str]:
    listing = subprocess.run(
        ["git", "-C", str(repo), "ls-tree", "-r", "--name-only", tag, *roots], check=True, capture_output=True
    )
    return listing.stdout.decode().split()


def table(version: str, package: str, tag: str, note: str, repo: Path, wheels: Path) -> tuple[str, set[str]]:
    """The text of one version's table, and the set of its lines' names (for comparing wheels)."""
    wheel = download(package, version, wheels)
    so, init = wheel_files(wheel)
    strings = StringTable(rodata_strings(so))
    sources = [git_show(repo, tag, p) for p in git_files(repo, tag, "python/src") if p.endswith(".cpp")]
    headers = [
        git_show(repo, tag, p)
        for p in git_files(repo, tag, "include")
        if re.search(r"include/Nv(Infer|Onnx)\w*\.h$", p)
    ]
    bindings = parse_bindings(sources)
    enums = parse_enums(headers)
    members = bindings.members + python_names(init)

    lines, dropped, seen = [], [], set()
    for owner in sorted(bindings.classes):
        if all(part in strings for part in owner.split(".")):
            bases = bindings.classes[owner]
            lines.append(f"class {owner}" + (f" : {' '.join(bases)}" if bases else ""))
        else:
            dropped.append(owner)
    for owner in sorted(bindings.enums):
        (lines if all(p in strings for p in owner.split(".")) else dropped).append(
            f"enum {owner}" if all(p in strings for p in owner.split(".")) else owner
        )
    python_side = {(m.owner, m.name) for m in python_names(init)}
    for m in members:
        # a name the __init__.py defines is Python source, not in the .so; pybind11's own names are always there
        present = (m.owner, m.name) in python_side or m.name in strings or m.name == "__init__"
        params_present = (
            m.params is None or all(p.rstrip("=") in strings for p in m.params) or ((m.owner, m.name) in python_side)
        )
        if not present or not params_present:
            dropped.append(f"{m.owner}.{m.name}")
            continue
        if m.kind == "value":
            value = resolve(m.enumerator, enums)
            line = f"{m.owner}.{m.name} = {'?' if value is None else value}"
        elif m.kind == "method":
            line = f"{m.owner}.{m.name}({'...' if m.params is None else ', '.join(m.params)})"
        else:
            line = f"{m.owner}.{m.name} [{m.kind}]"
        if line not in seen:
            seen.add(line)
            lines.append(line)
    digest = hashlib.sha256(so).hexdigest()
    header = [
        f"# TensorRT {version}: the Python API names its bindings expose (written by scripts/tensorrt_names.py).",
        f"# strings: {wheel.name}, tensorrt.so sha256 {digest}",
        f"# owners, kinds, keyword names: NVIDIA/TensorRT python/src at {tag}; enum values: its include/Nv*.h",
    ]
    if note:
        header.append(f"# note: {note}")
    if not dropped:
        header.append("# every name of the sources was found in this .so")
    else:
        header.append(f"# in the sources but not in this .so ({len(dropped)}): " + " ".join(sorted(set(dropped))))
    body = sorted(lines, key=lambda line: (not line.startswith(("class ", "enum ")), line))
    return "\n".join(header + body) + "\n", set(body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tensorrt-repo", type=Path, required=True, help="a git clone of NVIDIA/TensorRT with tags")
    wheels = Path.home() / ".cache" / "sdrt" / "tensorrt-wheels"
    parser.add_argument("--wheels", type=Path, default=wheels, help="where downloaded wheels are kept")
    parser.add_argument("--out", type=Path, default=Path("tests/engines/tensorrt_names"), help="where tables go")
    args = parser.parse_args(argv)
    args.wheels.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    for version, package, tag, note in VERSIONS:
        text, names = table(version, package, tag, note, args.tensorrt_repo, args.wheels)
        other = ALSO_SAME.get(version)
        if other:
            _, other_names = table(version, other, tag, note, args.tensorrt_repo, args.wheels)
            if other_names != names:
                raise SystemExit(f"{other} {version} differs from {package}: {sorted(other_names ^ names)[:10]}")
            text = text.replace("\n# owners", f"\n# {other} {version} holds the same names\n# owners", 1)
        path = args.out / f"{version}.txt"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)
        print(f"{path}: {len(names)} names")
    return 0


if __name__ == "__main__":
    sys.exit(main())
