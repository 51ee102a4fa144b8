"""Field types the APIs share: numbers that refuse booleans (JSON true is not 1) and non-finite values."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, create_model

from sdrt.params import Param, ParamSet


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


def _annotation(param: Param, prefix: str) -> Any:
    """The JSON type of a parameter: numbers refuse booleans, images are base64, objects are nested models."""
    if param.type == "object":
        model = create_model(
            f"{prefix}{param.name.title().replace('_', '')}",
            __config__=ConfigDict(extra="forbid"),
            **{f.name: (_annotation(f, prefix) | None, Field(None, description=f.help)) for f in param.fields},
        )
        return list[model] if param.many else model
    return {
        "int": Int,
        "float": Float,
        "str": str,
        "bool": bool,
        # unions of plain types: the runtime names the field of a bad entry (a union's own error names its members)
        "texts": str | list[str],
        "floats": float | list[float],
        "image": str,
        "vector": list[Float],
    }[param.type]


def body_model(name: str, params: ParamSet, doc: str, **more: Any) -> type[BaseModel]:
    """A request body with a field per declared parameter that has one (`Param.http_field`), all optional.

    `more` are the API's own fields (name=(annotation, Field(...))). Defaults are the pipeline's: a field left
    out (or null) is not passed on.
    """
    fields = {
        p.http_field: (_annotation(p, name) | None, Field(None, description=p.help))
        for p in params
        if p.http_field is not None
    }
    model = create_model(name, __config__=ConfigDict(extra="forbid"), __doc__=doc, **fields, **more)
    return model


def body_params(
    body: BaseModel, params: ParamSet, image: Callable[[str, str], Any], vector: Callable[[list], Any]
) -> dict[str, Any]:
    """`Pipeline.request` keywords from a `body_model` body: images decoded (`image(b64, field)`), objects as
    mappings of their fields (the pipeline builds them), fields left out left out."""
    values: dict[str, Any] = {}
    for p in params:
        if p.http_field is None:
            continue
        value = getattr(body, p.http_field, None)
        if value is None:
            continue
        if p.type == "image":
            value = image(value, p.http_field)
        elif p.type == "vector":
            value = vector(value)
        elif p.type == "object":
            items = [_fields(v, p, image, f"{p.http_field}.{i}") for i, v in enumerate(value)] if p.many else None
            value = items if p.many else _fields(value, p, image, p.http_field)
        values[p.name] = value
    return values


def _fields(body: BaseModel, param: Param, image: Callable[[str, str], Any], where: str) -> dict[str, Any]:
    """An object's given fields, its images decoded."""
    values = body.model_dump(exclude_none=True)
    for field in param.fields:
        if field.type == "image" and field.name in values:
            values[field.name] = image(values[field.name], f"{where}.{field.name}")
    return values


def api_names(params: ParamSet) -> Mapping[str, str]:
    """sdrt's parameter names -> the native API's field names, where they differ (errors name the API's)."""
    return {p.name: p.http_field for p in params if p.http_field is not None and p.http_field != p.name}
