"""Names a package offers but imports only when first used, so that importing the package stays cheap.

`sdrt --help` must not wait seconds for torch: a package whose public names live in modules that import torch
offers them through a module `__getattr__` made here (PEP 562), and `from package import name` still works.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_names(package: str, names: Mapping[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` for `package`: each of `names` (name -> module) imported from its module on first use."""

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(names[name]), name)
        setattr(sys.modules[package], name, value)  # the next use finds it without asking again
        return value

    return __getattr__


class DeferredModule:
    """A module imported when one of its attributes is first read.

    A module on the path of `sdrt --help` and `sdrt generate --help` (the families and the features whose
    parameters the CLI lists) writes `torch = deferred("torch")` under `if not TYPE_CHECKING` and uses `torch`
    as usual inside its functions: torch loads on the first call that needs it, not at import. Nothing is put in
    `sys.modules` until the real import runs.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._module: Any = None

    def __getattr__(self, attribute: str) -> Any:
        # called only for names not on the proxy itself: the first read of each of the real module's names, which is
        # then kept on the proxy, so later reads (the denoising loop's) are plain attribute reads. A name the module
        # rebinds after that first read is not seen again: torch's public names are not rebound.
        if self._module is None:
            self._module = importlib.import_module(self._name)
        value = getattr(self._module, attribute)
        self.__dict__[attribute] = value
        return value

    def __repr__(self) -> str:
        state = "imported" if self._module is not None else "not imported yet"
        return f"<deferred module {self._name!r}, {state}>"


def deferred(name: str) -> Any:
    """The module `name`, imported on first attribute access (see `DeferredModule`)."""
    return DeferredModule(name)
