"""Client errors as HTTP answers that name the field and what is allowed, in FastAPI's validation-error shape."""

from __future__ import annotations

import re
from collections.abc import Mapping

from sdrt.runtime.params import all_params

MAX_MESSAGE_CHARS = 2000  # longest error message an answer carries


class InputError(ValueError):
    """Input a server cannot serve: `status` (422 by default) with `field` and a message saying what is allowed."""

    def __init__(self, field: str | None, message: str, status: int = 422) -> None:
        if len(message) > MAX_MESSAGE_CHARS:  # a safety net: messages quote excerpts of bad values, never whole ones
            message = message[: MAX_MESSAGE_CHARS - 3] + "..."
        super().__init__(message)
        self.field = field
        self.message = message
        self.status = status

    def body(self) -> dict:
        loc = ["body"] if self.field is None else ["body", *self.field.split(".")]
        return {"detail": [{"loc": loc, "msg": self.message, "type": "value_error"}]}


def from_runtime(exc: ValueError, names: Mapping[str, str] | None = None) -> InputError:
    """An InputError for a ValueError of sdrt.runtime, its field renamed to the API's name through `names`."""
    message = str(exc)
    words = message.split(maxsplit=2)
    field = None
    if words[:1] == ["hires:"]:  # "hires: the second pass's width ... is outside the artifact's range"
        field = "hires"
    elif words[:1] == ["hires"] and len(words) > 1:  # "hires scale 0.5 is outside ..."
        field = f"hires.{words[1]}"
    elif words and words[0] in all_params():
        field = words[0]
    elif words and (unit := re.fullmatch(r"control\[(\d+)\]:", words[0])):  # "control[1]: ..." names the unit
        prefix = (names or {}).get("control", "control")
        return InputError(f"{prefix}.{unit.group(1)}", message)
    elif words[:2] == ["unknown", "scheduler"]:
        field = "scheduler"
    elif words[:1] == ["batch"]:  # "batch of N images ... is over the maximum"
        field = "num_images_per_prompt"
    elif "inpainting UNet" in message:
        field = "mask_image"
    if field is not None and names is not None:
        field = names.get(field, field)
    return InputError(field, message)


def error_body(message: str, field: str | None = None) -> dict:
    """The JSON body of an error that is not about one input field (429, 500, 503)."""
    return InputError(field, message).body()
