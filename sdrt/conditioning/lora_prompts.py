"""The web UI's LoRA syntax in prompts: `<lora:name:weight>`, read and removed before emphasis parsing.

`<lora:name>` is weight 1; a name written twice adds its weights, and different LoRAs add up. The tags
of a prompt and of its negative prompt name one set for the whole image (a LoRA changes the model, not
one text), so every prompt of a request must name the same set. Other extra networks of the web UI
(`<hypernet:...>`) are refused rather than read as text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

# the web UI's extra-network pattern: <type:arguments>
_TAG = re.compile(r"<(\w+):([^>]+)>")
LoraTags = tuple[tuple[str, float], ...]  # (name, weight), sorted by name


def strip_loras(text: str) -> str:
    """`text` without its extra-network tags (what the text encoder reads)."""
    return _TAG.sub("", text)


def parse_loras(text: str) -> LoraTags:
    """The LoRAs `text` names, weights added per name; ValueError for a malformed or unsupported tag."""
    weights: dict[str, float] = {}
    for match in _TAG.finditer(text):
        kind, args = match.group(1), match.group(2).split(":")
        if kind != "lora":
            raise ValueError(
                f"{match.group(0)} is a web UI extra network sdrt does not run; it runs <lora:name:weight>"
            )
        name = args[0].strip()
        if not name or len(args) > 2 or "=" in match.group(2):
            raise ValueError(
                f"{match.group(0)}: sdrt reads <lora:name> and <lora:name:weight> (one weight for the text "
                "encoders and the UNet alike)"
            )
        try:
            weight = float(args[1]) if len(args) == 2 else 1.0
        except ValueError:
            raise ValueError(f"{match.group(0)}: weight {args[1]!r} is not a number") from None
        if not math.isfinite(weight):
            raise ValueError(f"{match.group(0)}: weight {args[1]!r} is not finite")
        weights[name] = weights.get(name, 0.0) + weight
    return tuple(sorted((n, w) for n, w in weights.items() if w != 0.0))


def request_loras(prompts: Sequence[str], negatives: Sequence[str]) -> LoraTags:
    """The one LoRA set of a request's prompts and negative prompts; ValueError when its prompts name different ones."""
    sets = []
    for prompt, negative in zip(prompts, negatives, strict=True):
        merged: dict[str, float] = {}
        for name, weight in (*parse_loras(prompt), *parse_loras(negative)):
            merged[name] = merged.get(name, 0.0) + weight
        sets.append(tuple(sorted((n, w) for n, w in merged.items() if w != 0.0)))
    if len(set(sets)) > 1:
        raise ValueError(
            "the prompts of one request name different LoRA sets "
            f"({'; '.join(', '.join(f'{n}:{w:g}' for n, w in s) or 'none' for s in dict.fromkeys(sets))}); "
            "a LoRA changes the model for every image of a request, so send them as separate requests"
        )
    return sets[0] if sets else ()
