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
