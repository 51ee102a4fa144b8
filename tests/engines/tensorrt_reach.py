"""Every TensorRT name sdrt's code reaches, found by reading its source (no TensorRT needed), per TensorRT version.

A small type inference over the AST of every module of the `sdrt` package:

- the tensorrt module is what `tensorrt()` (sdrt.engines.tensorrt_build) and `import tensorrt` give, and any
  parameter named `trt`;
- a TensorRT object is what an annotation names (`context: trt.IExecutionContext`), what a class call makes
  (`trt.Runtime(logger)`), or what a method returns, as RETURNS says; sdrt's own classes carry the types of
  their fields and `self.x = ...` assignments, and sdrt's functions the types of their annotations;
- an attribute taken on the module, a TensorRT class or object is a `Use`: owner, name, how (load, store,
  call with its arity and keywords, hasattr) and the TensorRT versions that can reach it. A branch behind a
  version check (`path.major == 10`, `hasattr(engine, "device_memory_size_v2")`) counts only for the versions
  that pass it, a `return` or `raise` in it removes those versions from what follows.

What it cannot follow is a `Problem`, never a silent pass: an attribute on the result of a TensorRT call whose
type RETURNS does not give, a TensorRT object passed to a parameter not annotated with its TensorRT class, an
annotation naming a class no version has.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tests.engines.tensorrt_tables import ENUM_BUILTINS, MODULE, Table

# What the TensorRT calls sdrt uses as receivers return (the C++ return types in NvInfer*.h behind each binding in
# python/src/infer/pyCore.cpp, pyGraph.cpp, pyFoundationalTypes.cpp and parsers/pyOnnx.cpp; the same in 10.x and 11.x).
RETURNS = {
    ("Builder", "create_network"): "INetworkDefinition",
    ("Builder", "create_builder_config"): "IBuilderConfig",
    ("Builder", "create_optimization_profile"): "IOptimizationProfile",
    ("Builder", "build_serialized_network"): "IHostMemory",
    ("INetworkDefinition", "get_input"): "ITensor",
    ("INetworkDefinition", "get_output"): "ITensor",
    ("OnnxParser", "get_error"): "ParserError",
    ("IBuilderConfig", "create_timing_cache"): "ITimingCache",
    ("ITimingCache", "serialize"): "IHostMemory",
    ("Runtime", "deserialize_cuda_engine"): "ICudaEngine",
    ("ICudaEngine", "create_execution_context"): "IExecutionContext",
    ("ICudaEngine", "get_tensor_dtype"): "DataType",
    ("ICudaEngine", "get_tensor_mode"): "TensorIOMode",
    ("ICudaEngine", "get_tensor_shape"): "Dims",
    ("IExecutionContext", "get_tensor_shape"): "Dims",
    ("Refitter", "get_weights_prototype"): "Weights",
    ("Weights", "dtype"): "DataType",
    ("IHostMemory", "dtype"): "DataType",
}
MODULE_FUNCTIONS = {"sdrt.engines.tensorrt_build.tensorrt"}  # sdrt functions that return the tensorrt module
TYPE_ATTRIBUTES = ("major",)  # TensorRTPath.major: the version's major number, for version checks


@dataclass(frozen=True)
class Use:
    """One TensorRT name reached by sdrt."""

    owner: str  # "tensorrt" for module-level names, else the class or enum ("ILogger.Severity")
    name: str
    how: str  # "load", "store", "call", "hasattr" (a version check: may be missing)
    versions: frozenset[str]  # the TensorRT versions that can reach it
    where: str  # "sdrt/engines/tensorrt_backend.py:123"
    positional: int = 0  # a call's positional arguments (without self)
    keywords: tuple[str, ...] = ()


@dataclass(frozen=True)
class Problem:
    where: str
    what: str


# abstract values: ("module",), ("class", owner), ("object", owner), ("sdrt", class name), ("unknown", how made),
# ("path",) for a TensorRTPath (its .major is the version's), ("func", qualified name)
Value = tuple


@dataclass
class _Symbol:
    module: str
    node: ast.AST  # FunctionDef, ClassDef, or the value of a module-level assignment


@dataclass
class Reach:
    """The uses and problems found in a set of modules, for the versions of `tables`."""

    tables: dict[str, Table]
    uses: list[Use] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    symbols: dict[str, dict[str, _Symbol]] = field(default_factory=dict)  # module -> name -> symbol
    files: dict[str, str] = field(default_factory=dict)  # module -> file shown in `where`
    _visited: set[int] = field(default_factory=set)

    # --- set-up ----------------------------------------------------------------------------------------------

    def read(self, root: Path, package: str = "sdrt") -> Reach:
        """Read every module under `root` (the `package` directory), then follow each function and class."""
        trees = {}
        for path in sorted(root.rglob("*.py")):
            parts = path.relative_to(root.parent).with_suffix("").parts
            module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            trees[module] = ast.parse(path.read_text(), str(path))
            self.files[module] = str(path.relative_to(root.parent))
        for module, tree in trees.items():
            self.symbols[module] = {}
            for node in tree.body:
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    self.symbols[module][node.name] = _Symbol(module, node)
                elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                    self.symbols[module][node.targets[0].id] = _Symbol(module, node.value)
        for module, tree in trees.items():
            for node in tree.body:
                if isinstance(node, ast.ImportFrom) and node.module in trees:
                    for alias in node.names:
                        target = self.symbols[node.module].get(alias.name)
                        if target is not None:
                            self.symbols[module].setdefault(alias.asname or alias.name, target)
        everything = frozenset(self.tables)
        for module, tree in trees.items():
            scope = _Scope(self, module, everything, {}, None)
            for node in tree.body:
                scope.statement(node)
        return self

    # --- what the tables say ---------------------------------------------------------------------------------

    def known_type(self, owner: str) -> bool:
        return any(t.is_type(owner) for t in self.tables.values())

    def member_type(self, owner: str, name: str) -> Value | None:
        """The value of `owner.name` taken on an object: a nested type, an enum value, or what RETURNS says."""
        if self.known_type(f"{owner}.{name}"):
            return ("class", f"{owner}.{name}")
        if name in ENUM_BUILTINS and any(owner in t.enums for t in self.tables.values()):
            return ("py",)  # a pybind11 enum's name (str) or value (int)
        for table in self.tables.values():
            if owner in table.enums and any(e.kind == "value" for e in table.lookup(owner, name)):
                return ("object", owner)
        if (owner, name) in RETURNS:
            return ("object", RETURNS[(owner, name)])
        return None

    def use(self, owner: str, name: str, how: str, versions: frozenset[str], where: str, **call) -> None:
        if versions:
            self.uses.append(Use(owner, name, how, versions, where, **call))

    def problem(self, where: str, what: str) -> None:
        self.problems.append(Problem(where, what))


class _Scope:
    """One function body (or module body) being followed, with the types of its names."""

    def __init__(self, reach: Reach, module: str, versions: frozenset[str], names: dict, cls: ast.ClassDef | None):
        self.reach, self.module, self.versions, self.names, self.cls = reach, module, versions, names, cls

    def where(self, node: ast.AST) -> str:
        return f"{self.reach.files[self.module]}:{getattr(node, 'lineno', 0)}"

    # --- statements ------------------------------------------------------------------------------------------

    def block(self, body: Iterable[ast.stmt]) -> bool:
        """Follow statements; True when the block always leaves (return / raise) for the versions left."""
        for node in body:
            if not self.versions:
                return True
            if self.statement(node):
                return True
        return False

    def statement(self, node: ast.stmt) -> bool:
        if isinstance(node, (ast.Return, ast.Raise)):
            for child in ast.iter_child_nodes(node):
                self.value(child)
            return True
        if isinstance(node, ast.If):
            return self.branch(node)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            self.function(node, dict(self.names), self.cls if self.cls and node in self.cls.body else None)
            return False
        if isinstance(node, ast.ClassDef):
            for base in node.bases:
                self.value(base)
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    self.function(item, dict(self.names), node)
                elif isinstance(item, ast.AnnAssign) and item.value is not None:
                    self.value(item.value)
            return False
        if isinstance(node, ast.Assign):
            value = self.value(node.value)
            for target in node.targets:
                self.assign(target, value, node.value)
            return False
        if isinstance(node, ast.AnnAssign):
            value = self.value(node.value) if node.value is not None else None
            annotated = self.annotation(node.annotation, node)
            self.assign(node.target, annotated or value, node.value)
            return False
        if isinstance(node, ast.AugAssign):
            self.value(node.value)
            self.value(node.target)
            return False
        if isinstance(node, (ast.For, ast.AsyncFor)):
            self.value(node.iter)
            self.assign(node.target, None, None)
            self.block(node.body)
            self.block(node.orelse)
            return False
        if isinstance(node, ast.While):
            self.value(node.test)
            self.block(node.body)
            self.block(node.orelse)
            return False
        if isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                self.value(item.context_expr)
                if item.optional_vars is not None:
                    self.assign(item.optional_vars, None, None)
            return self.block(node.body)
        if isinstance(node, ast.Try):
            self.block(node.body)
            for handler in node.handlers:
                self.block(handler.body)
            self.block(node.orelse)
            self.block(node.finalbody)
            return False
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if isinstance(node, ast.Import) and alias.name == "tensorrt":
                    self.names[alias.asname or alias.name] = ("module",)
            return False
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr):
                self.value(child)
        return False

    def branch(self, node: ast.If) -> bool:
        passing, failing = self.condition(node.test)
        saved = self.versions
        self.versions = saved & passing
        body_leaves = self.block(node.body) if self.versions else True
        self.versions = saved & failing
        else_leaves = self.block(node.orelse) if self.versions else True
        after = saved
        if body_leaves:
            after = after - (passing - failing)  # versions that surely took the body have left
        if else_leaves:
            after = after - (failing - passing)
        if body_leaves and else_leaves:
            after = frozenset()
        self.versions = after
        return not after

    def assign(self, target: ast.expr, value: Value | None, source: ast.expr | None) -> None:
        if isinstance(target, ast.Name):
            self.names[target.id] = value
        elif isinstance(target, (ast.Tuple, ast.List)):
            parts = value[1] if value and value[0] == "tuple" else [None] * len(target.elts)
            for element, part in zip(target.elts, parts, strict=False):
                self.assign(element, part, None)
        elif isinstance(target, ast.Attribute):
            owner = self.value(target.value)
            self.attribute(owner, target.attr, "store", target)
        elif isinstance(target, ast.Subscript):
            self.value(target.value)
            self.value(target.slice)

    # --- functions and classes -------------------------------------------------------------------------------

    def function(self, node: ast.FunctionDef, names: dict, cls: ast.ClassDef | None) -> None:
        if id(node) in self.reach._visited:
            return
        self.reach._visited.add(id(node))
        for default in node.args.defaults + [d for d in node.args.kw_defaults if d is not None]:
            self.value(default)
        args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
        for i, arg in enumerate(args):
            if i == 0 and cls is not None and not _is_static(node):
                names[arg.arg] = _sdrt_value(cls.name, self.module)
            elif arg.arg == "trt":
                names[arg.arg] = ("module",)
            else:
                names[arg.arg] = self.annotation(arg.annotation, node) if arg.annotation is not None else None
        scope = _Scope(self.reach, self.module, self.versions, names, cls)
        scope.block(node.body)

    def annotation(self, node: ast.expr | None, where: ast.AST) -> Value | None:
        """The value an annotation describes: trt.X (or "trt.X"), X | None, tuple[...], an sdrt class."""
        if node is None:
            return None
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return self.annotation(ast.parse(node.value, mode="eval").body, where)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            left, right = self.annotation(node.left, where), self.annotation(node.right, where)
            return left or right
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "tuple":
            elements = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
            return ("tuple", [self.annotation(e, where) for e in elements])
        dotted = _dotted(node)
        if dotted and dotted.startswith("trt."):
            owner = dotted[4:]
            if not self.reach.known_type(owner):
                self.reach.problem(self.where(where), f"annotation {dotted}: no TensorRT version has a class {owner}")
                return ("unknown", dotted)
            return ("object", owner)
        if dotted and dotted in self.reach.symbols.get(self.module, {}):
            symbol = self.reach.symbols[self.module][dotted]
            if isinstance(symbol.node, ast.ClassDef):
                return _sdrt_value(dotted, symbol.module)
        return None

    def sdrt_attribute(self, cls_name: str, module: str, attr: str, node: ast.AST) -> Value | None:
        """The type of attribute `attr` of an sdrt class: a method, a field's annotation, `self.attr =` in __init__."""
        symbol = self.reach.symbols.get(module, {}).get(cls_name)
        if symbol is None or not isinstance(symbol.node, ast.ClassDef):
            return None
        cls = symbol.node
        for item in cls.body:
            if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name == attr:
                return ("method", item, module, cls)
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) and item.target.id == attr:
                return _Scope(self.reach, module, self.versions, {}, cls).annotation(item.annotation, item)
        if cls_name == "TensorRTPath" and attr in TYPE_ATTRIBUTES:
            return None
        for item in cls.body:
            if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                params = {a.arg: a.annotation for a in item.args.args[1:]}
                for stmt in ast.walk(item):
                    if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
                        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                        for t in targets:
                            if _is_self_attribute(t, attr):
                                if isinstance(stmt, ast.AnnAssign):
                                    return self.annotation(stmt.annotation, stmt)
                                if isinstance(stmt.value, ast.Name) and params.get(stmt.value.id) is not None:
                                    return _Scope(self.reach, module, self.versions, {}, cls).annotation(
                                        params[stmt.value.id], stmt
                                    )
        for base in cls.bases:
            dotted = _dotted(base)
            if dotted and dotted.startswith("trt."):
                owner = dotted[4:]
                self.attribute(("object", owner), attr, "load", node)
                return self.reach.member_type(owner, attr)
        return None

    # --- expressions -----------------------------------------------------------------------------------------

    def value(self, node: ast.expr | None) -> Value | None:
        if node is None:
            return None
        if isinstance(node, ast.Name):
            if node.id in self.names:
                return self.names[node.id]
            symbol = self.reach.symbols.get(self.module, {}).get(node.id)
            if symbol is not None:
                if isinstance(symbol.node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    return ("func", symbol.node, symbol.module)
                if isinstance(symbol.node, ast.ClassDef):
                    return ("sdrtclass", symbol.node.name, symbol.module)
                if isinstance(symbol.node, ast.Call) and _dotted(symbol.node.func) == "TensorRTPath":
                    return ("path",)
            return None
        if isinstance(node, ast.Attribute):
            return self.attribute(self.value(node.value), node.attr, "load", node)
        if isinstance(node, ast.Call):
            return self.call(node)
        if isinstance(node, ast.Lambda):
            names = dict(self.names)
            for arg in node.args.args:
                names[arg.arg] = None
            for default in node.args.defaults:
                self.value(default)
            _Scope(self.reach, self.module, self.versions, names, self.cls).value(node.body)
            return None
        if isinstance(node, ast.IfExp):
            passing, failing = self.condition(node.test)
            saved = self.versions
            self.versions = saved & passing
            body = self.value(node.body) if self.versions else None
            self.versions = saved & failing
            orelse = self.value(node.orelse) if self.versions else None
            self.versions = saved
            return body or orelse
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
            inner = _Scope(self.reach, self.module, self.versions, dict(self.names), self.cls)
            for generator in node.generators:
                inner.value(generator.iter)
                inner.assign(generator.target, None, None)
                for test in generator.ifs:
                    inner.value(test)
            parts = [node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt]
            for part in parts:
                inner.value(part)
            return None
        if isinstance(node, ast.Tuple):
            return ("tuple", [self.value(e) for e in node.elts])
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr):
                self.value(child)
            elif isinstance(child, ast.comprehension):
                self.value(child.iter)
        return None

    def attribute(self, owner: Value | None, attr: str, how: str, node: ast.AST, **call) -> Value | None:
        if owner is None:
            return None
        kind = owner[0]
        where = self.where(node)
        if kind == "module":
            self.reach.use(MODULE, attr, how, self.versions, where, **call)
            if self.reach.known_type(attr):
                return ("class", attr)
            return ("modulefunc", attr) if how == "load" else None
        if kind in ("class", "object"):
            self.reach.use(owner[1], attr, how, self.versions, where, **call)
            if how != "load":
                return None
            if kind == "class" and self.reach.known_type(f"{owner[1]}.{attr}"):
                return ("class", f"{owner[1]}.{attr}")
            member = self.reach.member_type(owner[1], attr)
            return member if member is not None else ("member", owner[1], attr, kind == "class")
        if kind in ("member", "result"):
            self.reach.problem(
                where, f"{attr} is taken on what {owner[1]}.{owner[2]} gives; RETURNS does not say what that is"
            )
            return None
        if kind == "unknown":
            self.reach.problem(where, f"{attr} is taken on {owner[1]}, whose TensorRT type is unknown")
            return None
        if kind == "sdrt":
            if how == "store":
                return None
            return self.sdrt_attribute(owner[1], owner[2], attr, node)
        if kind == "path" and attr in TYPE_ATTRIBUTES:
            return ("major",)
        if kind == "path":
            return self.sdrt_attribute("TensorRTPath", "sdrt.engines.tensorrt_api", attr, node)
        return None

    def call(self, node: ast.Call) -> Value | None:
        func = node.func
        positional = len(node.args)
        keywords = tuple(k.arg for k in node.keywords if k.arg is not None)
        name = _dotted(func)
        if name in ("hasattr", "getattr") and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant):
            target = self.value(node.args[0])
            how = "hasattr" if name == "hasattr" or len(node.args) == 3 else "load"
            if target is not None and target[0] in ("module", "class", "object"):
                owner = MODULE if target[0] == "module" else target[1]
                self.reach.use(owner, node.args[1].value, how, self.versions, self.where(node))
            for arg in node.args[2:]:
                self.value(arg)
            return None
        if name == "importlib.import_module" and node.args and getattr(node.args[0], "value", None) == "tensorrt":
            return ("module",)
        if isinstance(func, ast.Attribute):
            receiver = self.value(func.value)
            if receiver is not None and receiver[0] in ("module", "class", "object"):
                on_class = receiver[0] == "class"
                self_passed = on_class and node.args and self._is_self(node.args[0])
                shown = positional - 1 if self_passed else positional
                self.arguments(node)
                if receiver[0] == "module" and self.reach.known_type(func.attr):
                    self.reach.use(MODULE, func.attr, "load", self.versions, self.where(node))
                    self.reach.use(func.attr, "__init__", "call", self.versions, self.where(node), positional=shown,
                                   keywords=keywords)  # fmt: skip
                    return ("object", func.attr)
                owner = MODULE if receiver[0] == "module" else receiver[1]
                self.reach.use(owner, func.attr, "call", self.versions, self.where(node), positional=shown,
                               keywords=keywords)  # fmt: skip
                if owner == MODULE:
                    return None
                returned = RETURNS.get((owner, func.attr))
                if returned is not None:
                    return ("object", returned)
                return ("result", owner, func.attr)
            callee = self.attribute(receiver, func.attr, "load", func) if receiver is not None else None
            return self.call_sdrt(callee, node, bound=True)
        callee = self.value(func)
        if callee is not None and callee[0] == "class":
            self.reach.use(callee[1], "__init__", "call", self.versions, self.where(node), positional=positional,
                           keywords=keywords)  # fmt: skip
            self.arguments(node)
            return ("object", callee[1])
        return self.call_sdrt(callee, node, bound=False)

    def call_sdrt(self, callee: Value | None, node: ast.Call, bound: bool) -> Value | None:
        """A call of an sdrt function or method: check what TensorRT values go into its parameters; its result."""
        values = [self.value(a) for a in node.args]
        keyword_values = {k.arg: self.value(k.value) for k in node.keywords}
        if callee is None:
            return None
        if callee[0] == "sdrtclass":
            symbol = self.reach.symbols[callee[2]][callee[1]]
            init = next((i for i in symbol.node.body if isinstance(i, ast.FunctionDef) and i.name == "__init__"), None)
            if init is not None:
                self.check_parameters(init, callee[2], values, keyword_values, skip_self=True, node=node)
            else:
                fields = [i for i in symbol.node.body if isinstance(i, ast.AnnAssign)]
                self.check_fields(fields, callee[2], symbol.node, values, keyword_values, node)
            return _sdrt_value(callee[1], callee[2])
        if callee[0] == "method":
            _, function, module, _cls = callee
            skip_self = not _is_static(function)
            self.check_parameters(function, module, values, keyword_values, skip_self=skip_self, node=node)
            return self.returned(function, module)
        if callee[0] == "func":
            _, function, module = callee
            if f"{module}.{function.name}" in MODULE_FUNCTIONS:
                return ("module",)
            self.check_parameters(function, module, values, keyword_values, skip_self=False, node=node)
            return self.returned(function, module)
        return None

    def returned(self, function: ast.FunctionDef, module: str) -> Value | None:
        scope = _Scope(self.reach, module, self.versions, {}, None)
        return scope.annotation(function.returns, function) if function.returns is not None else None

    def check_parameters(self, function, module, values, keyword_values, skip_self: bool, node: ast.AST) -> None:
        params = function.args.posonlyargs + function.args.args
        if skip_self:
            params = params[1:]
        by_name = {a.arg: a for a in params + function.args.kwonlyargs}
        pairs = list(zip(params, values, strict=False)) + [
            (by_name[k], v) for k, v in keyword_values.items() if k in by_name
        ]
        if function.args.kwarg is not None:
            pairs += [(function.args.kwarg, v) for k, v in keyword_values.items() if k not in by_name]
        for param, value in pairs:
            self.check_parameter(param.arg, param.annotation, function.name, module, value, node)

    def check_fields(self, fields, module, cls, values, keyword_values, node) -> None:
        by_name = {f.target.id: f for f in fields if isinstance(f.target, ast.Name)}
        pairs = list(zip(by_name.values(), values, strict=False)) + [
            (by_name[k], v) for k, v in keyword_values.items() if k in by_name
        ]
        for f, value in pairs:
            self.check_parameter(f.target.id, f.annotation, cls.name, module, value, node)

    def check_parameter(self, name, annotation, function: str, module: str, value, node) -> None:
        if value is None or value[0] not in ("object", "result", "unknown"):
            return
        if name == "trt":
            return
        declared = _Scope(self.reach, module, self.versions, {}, None).annotation(annotation, node)
        described = value[1] if value[0] == "object" else ".".join(str(v) for v in value[1:3])
        if declared is None or declared[0] not in ("object", "unknown"):
            self.reach.problem(
                self.where(node),
                f"a TensorRT {described} goes into parameter {name} of {function}, which is not annotated "
                "with its TensorRT class (trt.X), so what is reached through it is not checked",
            )
        elif value[0] == "object" and declared[0] == "object" and declared[1] != value[1]:
            self.reach.problem(
                self.where(node), f"a TensorRT {value[1]} goes into {function}'s {name}, annotated trt.{declared[1]}"
            )

    def arguments(self, node: ast.Call) -> None:
        for arg in node.args:
            self.value(arg)
        for keyword in node.keywords:
            self.value(keyword.value)

    def _is_self(self, node: ast.expr) -> bool:
        return isinstance(node, ast.Name) and self.names.get(node.id) is not None and self.names[node.id][0] == "sdrt"

    # --- version checks --------------------------------------------------------------------------------------

    def condition(self, node: ast.expr) -> tuple[frozenset[str], frozenset[str]]:
        """(versions for which `node` may be true, versions for which it may be false)."""
        everything = self.versions
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            passing, failing = self.condition(node.operand)
            return failing, passing
        if isinstance(node, ast.BoolOp):
            parts = [self.condition(v) for v in node.values]
            if isinstance(node.op, ast.And):
                passing = frozenset.intersection(*(p for p, _ in parts))
                failing = frozenset.union(*(f for _, f in parts))
            else:
                passing = frozenset.union(*(p for p, _ in parts))
                failing = frozenset.intersection(*(f for _, f in parts))
            return passing & everything, failing & everything
        if isinstance(node, ast.Call) and _dotted(node.func) == "hasattr" and len(node.args) == 2:
            self.value(node)
            target = self.value(node.args[0])
            attr = getattr(node.args[1], "value", None)
            if target is not None and target[0] in ("module", "class", "object") and isinstance(attr, str):
                owner = MODULE if target[0] == "module" else target[1]
                has = frozenset(v for v, t in self.reach.tables.items() if t.lookup(owner, attr))
                return everything & has, everything - has
            return everything, everything
        if (
            isinstance(node, ast.Compare)
            and len(node.ops) == 1
            and isinstance(node.comparators[0], ast.Constant)
            and isinstance(node.comparators[0].value, int)
        ):
            left = self.value(node.left)
            if left == ("major",):
                number = node.comparators[0].value
                test = _COMPARE.get(type(node.ops[0]))
                if test is not None:
                    passing = frozenset(v for v in everything if test(self.reach.tables[v].major, number))
                    return passing, everything - passing
        self.value(node)
        return everything, everything


_COMPARE = {
    ast.Eq: lambda a, b: a == b,
    ast.NotEq: lambda a, b: a != b,
    ast.Lt: lambda a, b: a < b,
    ast.LtE: lambda a, b: a <= b,
    ast.Gt: lambda a, b: a > b,
    ast.GtE: lambda a, b: a >= b,
}


def _sdrt_value(cls: str, module: str) -> Value:
    """An instance of sdrt class `cls`; a TensorRTPath is a `path`, whose `major` is the version's."""
    return ("path",) if cls == "TensorRTPath" else ("sdrt", cls, module)


def _dotted(node: ast.expr | None) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def _is_static(node: ast.FunctionDef) -> bool:
    return any(_dotted(d) in ("staticmethod", "classmethod") for d in node.decorator_list)


def _is_self_attribute(node: ast.expr, attr: str) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == attr and isinstance(node.value, ast.Name)


def reach(root: Path, tables: dict[str, Table]) -> Reach:
    """The TensorRT names the package at `root` reaches, for the versions of `tables`."""
    return Reach(tables).read(root)


def failures(found: Reach) -> list[str]:
    """One line per name a version that reaches it lacks (or has as another kind), and per problem."""
    out = [f"{p.where}: {p.what}" for p in found.problems]
    for use in found.uses:
        if use.how == "hasattr":
            if not any(t.lookup(use.owner, use.name) for t in found.tables.values()):
                out.append(f"{use.where}: {use.owner}.{use.name} is in no TensorRT version (a misspelt version check?)")
            continue
        bad = [f"{v}: {why}" for v in sorted(use.versions) if (why := _unfit(found.tables[v], use))]
        if bad:
            out.append(f"{use.where}: {use.owner}.{use.name} ({use.how}) " + "; ".join(bad))
    return out


def _unfit(table: Table, use: Use) -> str | None:
    """Why `use` would fail on `table`'s version; None when it would not."""
    entries = table.lookup(use.owner, use.name)
    if not entries:
        return "no such name" if use.name != "__init__" else "cannot be constructed from Python"
    kinds = {e.kind for e in entries}
    if use.how == "load" and kinds == {"w"}:
        return "a write-only property"
    if use.how == "store" and not kinds & {"w", "rw"}:
        return f"not writable ({', '.join(sorted(kinds))})"
    if use.how == "call":
        methods = [e for e in entries if e.kind == "method"]
        if not methods:
            return f"not a method ({', '.join(sorted(kinds))})"
        if not any(m.accepts(use.positional, use.keywords) for m in methods):
            overloads = " or ".join(m.describe() for m in methods)
            return f"no overload takes {use.positional} positional and keywords {list(use.keywords)}: {overloads}"
    return None
