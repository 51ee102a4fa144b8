"""The web UI's extra-network tags in prompts, read and removed before emphasis parsing.

`<lora:name:weight>` (`<lyco:...>` is the same): `<lora:name>` is weight 1; `<lora:name:te:unet>` (or
`<lora:name:te=0.5:unet=1>`) weights the text encoders and the UNet apart, the UNet taking the text
encoders' weight when it is not given, as the web UI's Lora extension reads them. A name written twice adds
its weights, and different LoRAs add up. `<hypernet:name:multiplier>` (`<hypernet:name>` = 1) names a
hypernetwork; several chain in the order they are written, each tag one link. The tags of a prompt and of
its negative prompt name one set for the whole image (a network changes the model, not one text), so every
prompt of a request must name the same set.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import NamedTuple

# the web UI's extra-network pattern: <type:arguments>
_TAG = re.compile(r"<(\w+):([^>]+)>")
LORA_KINDS = ("lora", "lyco")  # the web UI reads <lyco:...> as <lora:...>
HYPERNET = "hypernet"


class LoraTag(NamedTuple):
    """One LoRA a request names, with its text-encoder and UNet weights."""

    name: str
    te: float  # weight of its text-encoder layers
    unet: float  # weight of its UNet layers


class HypernetTag(NamedTuple):
    """One link of a request's hypernetwork chain."""

    name: str
    multiplier: float


LoraTags = tuple[LoraTag, ...]  # sorted by name
HypernetTags = tuple[HypernetTag, ...]  # in the order written: prompt, then negative prompt


def strip_loras(text: str) -> str:
    """`text` without its extra-network tags (what the text encoder reads)."""
    return _TAG.sub("", text)


def _number(tag: str, what: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{tag}: {what} {value!r} is not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"{tag}: {what} {value!r} is not finite")
    return number


def _lora(tag: str, items: list[str]) -> LoraTag:
    positional = [item for item in items if "=" not in item]
    named = dict(item.split("=", 1) for item in items if "=" in item)
    name = positional[0].strip() if positional else ""
    if not name:
        raise ValueError(f"{tag}: a LoRA tag names a file: <lora:name>, <lora:name:weight>, <lora:name:te:unet>")
    unknown = sorted(set(named) - {"te", "unet"})
    if "dyn" in named or len(positional) > 3:
        raise ValueError(f"{tag}: sdrt does not cut LoRAs to a lower rank (dyn); give <lora:name:te:unet>")
    if unknown:
        raise ValueError(f"{tag}: {', '.join(unknown)} is not a LoRA setting sdrt reads (it reads te= and unet=)")
    te = _number(tag, "weight", positional[1]) if len(positional) > 1 else 1.0
    te = _number(tag, "te weight", named["te"]) if "te" in named else te
    unet = _number(tag, "unet weight", positional[2]) if len(positional) > 2 else te
    unet = _number(tag, "unet weight", named["unet"]) if "unet" in named else unet
    return LoraTag(name, te, unet)


def _hypernet(tag: str, items: list[str]) -> HypernetTag:
    name = items[0].strip()
    if not name or len(items) > 2 or any("=" in item for item in items):
        raise ValueError(f"{tag}: sdrt reads <hypernet:name> and <hypernet:name:multiplier>")
    return HypernetTag(name, _number(tag, "multiplier", items[1]) if len(items) == 2 else 1.0)


def _tags(text: str) -> tuple[list[LoraTag], list[HypernetTag]]:
    loras, hypernets = [], []
    for match in _TAG.finditer(text):
        kind, items = match.group(1), match.group(2).split(":")
        if kind in LORA_KINDS:
            loras.append(_lora(match.group(0), items))
        elif kind == HYPERNET:
            hypernets.append(_hypernet(match.group(0), items))
        else:
            raise ValueError(
                f"{match.group(0)} is a web UI extra network sdrt does not run; it runs <lora:name:weight> "
                "and <hypernet:name:multiplier>"
            )
    return loras, hypernets


def _summed(tags: Sequence[LoraTag]) -> LoraTags:
    weights: dict[str, tuple[float, float]] = {}
    for name, te, unet in tags:
        old_te, old_unet = weights.get(name, (0.0, 0.0))
        weights[name] = (old_te + te, old_unet + unet)
    return tuple(sorted(LoraTag(n, te, unet) for n, (te, unet) in weights.items() if te != 0.0 or unet != 0.0))


def parse_loras(text: str) -> LoraTags:
    """The LoRAs `text` names, weights added per name; ValueError for a malformed or unsupported tag."""
    return _summed(_tags(text)[0])


def parse_hypernetworks(text: str) -> HypernetTags:
    """The hypernetwork chain `text` names, in order; ValueError for a malformed or unsupported tag."""
    return tuple(tag for tag in _tags(text)[1] if tag.multiplier != 0.0)


def _one(kind: str, sets: list, show) -> tuple:
    if len(set(sets)) > 1:
        shown = "; ".join(show(s) or "none" for s in dict.fromkeys(sets))
        raise ValueError(
            f"the prompts of one request name different {kind} ({shown}); "
            f"a {kind.rstrip('s')} changes the model for every image of a request, so send them as separate requests"
        )
    return sets[0] if sets else ()


def request_loras(prompts: Sequence[str], negatives: Sequence[str]) -> LoraTags:
    """The one LoRA set of a request's prompts and negative prompts; ValueError when its prompts name different ones."""
    sets = [_summed((*_tags(p)[0], *_tags(n)[0])) for p, n in zip(prompts, negatives, strict=True)]
    return _one("LoRA sets", sets, lambda s: ", ".join(_shown(t) for t in s))


def request_hypernetworks(prompts: Sequence[str], negatives: Sequence[str]) -> HypernetTags:
    """The one hypernetwork chain of a request's prompts and negative prompts, in order (prompt, then negative)."""
    chains = [
        tuple(t for t in (*_tags(p)[1], *_tags(n)[1]) if t.multiplier != 0.0)
        for p, n in zip(prompts, negatives, strict=True)
    ]
    return _one("hypernetwork chains", chains, lambda c: ", ".join(f"{n}:{m:g}" for n, m in c))


def _shown(tag: LoraTag) -> str:
    return f"{tag.name}:{tag.te:g}" if tag.te == tag.unet else f"{tag.name}:{tag.te:g}:{tag.unet:g}"
