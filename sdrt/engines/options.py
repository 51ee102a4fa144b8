"""Turning keyword options into a backend's frozen options dataclass, with errors that list what is allowed."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def make_options(cls: type[T], backend: str, **options: Any) -> T:
    allowed = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"backend {backend} has no option {', '.join(unknown)}; its options: {', '.join(allowed)}")
    return cls(**options)
