"""Request parameters, declared once next to the feature that owns them.

A `Param` says a parameter's name, type, range, default and help. `Pipeline.generate` takes the parameters of
the runtime, its features and its model families as keyword arguments; the CLI's flags (`sdrt generate`) and
the native HTTP API's fields (`POST /v1/generate`) are derived from the same declarations, so a parameter is
written once and every front end takes it (as diffusers' modular pipelines declare `InputParam`s per block).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sdrt.excerpt import excerpt

# what a value may be; front ends map each type to their own form (a CLI flag reads a path for an image, the
# HTTP API base64)
TYPES = (
    "int",  # an integer (booleans refused)
    "float",  # a finite number
    "str",  # text
    "bool",  # true or false
    "texts",  # one string, or a list of strings (one per prompt)
    "floats",  # one number, or a list of numbers (one per prompt)
    "image",  # a PIL image, a path, or bytes (HTTP: base64)
    "vector",  # a tensor of floats (HTTP: a list of numbers)
    "object",  # a structured value the owning feature parses (hires fix, ControlNet units)
)


@dataclass(frozen=True)
class Param:
    """One request parameter: `Pipeline.generate(name=...)`, a CLI flag and an HTTP field, from one declaration."""

    name: str  # keyword of Pipeline.generate / request, e.g. "noise_level"
    type: str  # one of TYPES
    help: str  # one line, shown by the CLI and in the HTTP API's schema
    default: Any = None  # the value when not given (None: the pipeline decides, e.g. the family's steps)
    minimum: float | None = None  # smallest value allowed (inclusive)
    maximum: float | None = None  # largest value allowed (inclusive)
    choices: tuple[str, ...] = ()  # the values allowed, for a "str"
    flag: str | None = ""  # CLI flag; "" derives --name-with-dashes, None leaves it off the command line
    field: str | None = ""  # HTTP field of the native API; "" is the name itself, None leaves it out
    webui: str | None = None  # the web UI API's field for it, which its errors name
    owner: str = "runtime"  # who declares it: "runtime", a feature, or a family name
    # an "object": its fields (each a Param) and what makes the value from them (a frozen dataclass, say)
    fields: tuple[Param, ...] = ()
    make: Callable[..., Any] | None = None
    many: bool = False  # an "object" given as a list of them (ControlNet units)
    # the CLI reads the value from text its own way (a repeatable flag for `many`); None: one flag per field
    parse: Callable[[str], Any] | None = None

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise ValueError(f"parameter {self.name}: type {self.type!r} is not one of {', '.join(TYPES)}")
        if not self.name.isidentifier():
            raise ValueError(f"parameter name {self.name!r} is not a Python identifier")

    @property
    def cli_flag(self) -> str | None:
        return f"--{self.name.replace('_', '-')}" if self.flag == "" else self.flag

    @property
    def http_field(self) -> str | None:
        return self.name if self.field == "" else self.field

    def build(self, value: Any, field: str | None = None) -> Any:
        """An "object" parameter's value from a mapping of its fields (a list of them when `many`), checked."""
        if self.type != "object" or self.make is None or value is None:
            return value
        if self.many:
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"{field or self.name} must be a list of {self.name} entries")
            return tuple(self._one(v, f"{field or self.name}[{i}]") for i, v in enumerate(value))
        return self._one(value, field or self.name)

    def _one(self, value: Any, where: str) -> Any:
        if not isinstance(value, Mapping):
            return value  # already made (a Hires, a Control), checked by its own class
        known = {p.name for p in self.fields}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"{where} has no field {unknown[0]!r}; its fields: {', '.join(sorted(known))}")
        assert self.make is not None  # build() checks
        return self.make(**{k: v for k, v in value.items() if v is not None})

    def check(self, value: Any, field: str | None = None) -> Any:
        """`value` if it is of the declared type and inside the range; ValueError naming field, value and range."""
        name = field or self.name
        if value is None:
            return value
        if self.type == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} {excerpt(value)} is not an integer")
            self._check_range(name, value)
        elif self.type == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} {excerpt(value)} is not a finite number")
            self._check_range(name, value)
        elif self.type == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"{name} {excerpt(value)} is not true or false")
        elif self.type == "str":
            if not isinstance(value, str):
                raise ValueError(f"{name} {excerpt(value)} is not a string")
            if self.choices and value not in self.choices:
                raise ValueError(f"{name} {excerpt(value)} is not one of {', '.join(self.choices)}")
        return value

    def _check_range(self, name: str, value: float) -> None:
        low, high = self.minimum, self.maximum
        if low is not None and high is not None and not low <= value <= high:
            raise ValueError(f"{name} {value} is outside {_number(low)}..{_number(high)}")
        if low is not None and high is None and value < low:
            raise ValueError(f"{name} {value} must be at least {_number(low)}")
        if high is not None and low is None and value > high:
            raise ValueError(f"{name} {value} must be at most {_number(high)}")


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class ParamSet:
    """The parameters one pipeline (or front end) takes, by name; names are unique."""

    params: tuple[Param, ...] = ()
    by_name: Mapping[str, Param] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name: dict[str, Param] = {}
        for param in self.params:
            if param.name in by_name and by_name[param.name] != param:
                raise ValueError(
                    f"parameter {param.name} is declared twice ({by_name[param.name].owner} and {param.owner}) "
                    "with different meanings"
                )
            by_name[param.name] = param
        object.__setattr__(self, "params", tuple(by_name.values()))
        object.__setattr__(self, "by_name", by_name)

    @classmethod
    def of(cls, *groups: Iterable[Param]) -> ParamSet:
        return cls(tuple(p for group in groups for p in group))

    def __iter__(self):
        return iter(self.params)

    def __contains__(self, name: object) -> bool:
        return name in self.by_name

    def __getitem__(self, name: str) -> Param:
        return self.by_name[name]

    def unknown(self, names: Iterable[str], what: str = "generate()") -> None:
        """TypeError for names that are no parameter, listing those there are (as Python does for a keyword)."""
        extra = [n for n in names if n not in self.by_name]
        if extra:
            raise TypeError(
                f"{what} got an unexpected keyword argument {extra[0]!r}; it takes {', '.join(self.by_name)}"
            )

    def defaults(self, owners: Sequence[str]) -> dict[str, Any]:
        """The defaults of the parameters `owners` declare."""
        return {p.name: p.default for p in self.params if p.owner in owners}


def declare(default: Any, type: str, help: str, **options: Any) -> Any:
    """A dataclass field that is a request parameter: its default, and the rest of its declaration as metadata.

    `declared(cls)` reads the declarations back as `Param`s named after the fields, so a feature's dataclass
    (the hires fix, a ControlNet unit) is the one place its parameters are written.
    """
    return dataclasses.field(default=default, metadata={"param": {"type": type, "help": help, **options}})


def declared(cls: type, owner: str = "runtime") -> tuple[Param, ...]:
    """The `Param`s of a dataclass's `declare`d fields, in field order."""
    return tuple(
        Param(f.name, default=f.default, owner=owner, **f.metadata["param"])
        for f in dataclasses.fields(cls)
        if "param" in f.metadata
    )


def check_declared(value: Any, prefix: str = "") -> None:
    """Check every declared field of a dataclass instance against its declaration (type and range)."""
    for param in declared(type(value)):
        param.check(getattr(value, param.name), field=f"{prefix}{param.name}")
