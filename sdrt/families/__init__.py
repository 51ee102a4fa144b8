"""The model families sdrt runs, by name, and finding a model directory's family from its description alone."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sdrt.families.base import Family

_FAMILIES: dict[str, Family] = {}


class UnknownFamily(ValueError):
    """No family sdrt knows describes this model."""


def register(family: Family) -> Family:
    """Make `family` known by its name (families register themselves when their module is imported)."""
    if family.name in _FAMILIES and _FAMILIES[family.name] is not family:
        raise ValueError(f"a family named {family.name!r} is registered already")
    _FAMILIES[family.name] = family
    return family


def unregister(name: str) -> None:
    """Forget family `name` (for tests that register a throwaway family)."""
    _FAMILIES.pop(name, None)


_BUILTIN_ORDER = ("sd1", "sd2", "sdxl", "sdxl_refiner", "unclip", "upscaler_x4", "controlnet")


def families() -> dict[str, Family]:
    """Every known family by name: the built-in ones in a fixed order, then others as they were registered."""
    _load_builtin()
    order = {name: i for i, name in enumerate(_BUILTIN_ORDER)}
    names = sorted(_FAMILIES, key=lambda n: order.get(n, len(order)))  # a stable sort keeps registration order
    return {name: _FAMILIES[name] for name in names}


def family_named(name: str) -> Family:
    """The family called `name`; ValueError listing the known ones."""
    known = families()
    if name not in known:
        raise ValueError(f"unknown model family {name!r}; sdrt knows {', '.join(known)}")
    return known[name]


def family_for(index: Mapping[str, Any], configs: Mapping[str, Any], where: str = "model_index.json") -> Family:
    """The one family that claims a model with this model_index.json and part configs; ValueError otherwise."""
    claimed = [f for f in families().values() if f.claims(index, configs)]
    if len(claimed) == 1:
        return claimed[0]
    if claimed:
        raise ValueError(f"{where} fits several families ({', '.join(f.name for f in claimed)}); it is ambiguous")
    pipeline = index.get("_class_name")
    described = "; ".join(f"{f.name}: {f.description}" for f in families().values())
    raise UnknownFamily(f"{where}: pipeline {pipeline!r} is no model family sdrt runs (it runs {described})")


def _load_builtin() -> None:
    # imported here, not at the top: each module registers its families, and some import sdrt.runtime
    from sdrt.families import controlnet, sd, sdxl, unclip, upscaler_x4  # noqa: F401


__all__ = ["Family", "UnknownFamily", "families", "family_for", "family_named", "register", "unregister"]
