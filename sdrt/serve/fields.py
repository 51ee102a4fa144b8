"""Field types the APIs share: numbers that refuse booleans (JSON true is not 1) and non-finite values."""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError(f"{str(value).lower()} is a boolean; give a number")
    return value


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{value} is not a finite number")
    return value


Int = Annotated[int, BeforeValidator(_not_bool)]  # an integer; true/false are refused, not read as 1/0
Float = Annotated[float, BeforeValidator(_not_bool), AfterValidator(_finite)]  # a finite number, not a boolean
