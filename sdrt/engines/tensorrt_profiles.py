"""TensorRT optimization profiles, derived from a component's spec and the artifact's shape ranges.

A profile gives every input a (min, opt, max) shape: the spec's shape with each symbol at its
`DimRange` min, opt and max (`ShapeRanges.dims()`, the manifest's `dims` block). The UNet's batch
axis is `cfg_batch` (twice the image batch: unconditional and conditional rows in one call) and
its text axis `text_sequence` (77 to 77 x `max_text_chunks` tokens of a long prompt), so both come
out of the ranges with no special case here.

An engine holds a *static* profile (every symbol at opt: the fastest kernels, for the shapes most
calls use) and/or a *dynamic* one (the whole range); at run time a call whose shapes are all at
opt runs on the static profile, any other call on the dynamic one. Pure Python: no TensorRT needed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sdrt.spec import ComponentSpec, DimRange, ShapeRanges, parse_dim

PROFILE_MODES = ("static", "dynamic", "both")  # which profiles an engine is built with

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Profile:
    """One optimization profile: the range of every symbol the component's inputs use."""

    kind: str  # "static" (min = opt = max) or "dynamic"
    dims: Mapping[str, DimRange]  # symbol -> range, only the symbols of this component

    def accepts(self, values: Mapping[str, int]) -> bool:
        """True when every symbol's value lies inside this profile."""
        return all(r.min <= values[s] <= r.max for s, r in self.dims.items())

    def shapes(self, spec: ComponentSpec) -> dict[str, tuple[Shape, Shape, Shape]]:
        """Input name -> (min, opt, max) shape, as `IOptimizationProfile.set_shape` takes them."""
        pick = {which: {s: getattr(r, which) for s, r in self.dims.items()} for which in ("min", "opt", "max")}
        return {
            t.name: (t.concrete(pick["min"]), t.concrete(pick["opt"]), t.concrete(pick["max"])) for t in spec.inputs
        }

    def to_json(self) -> dict:
        return {"kind": self.kind, "dims": {s: [r.min, r.opt, r.max] for s, r in sorted(self.dims.items())}}


def input_symbols(spec: ComponentSpec) -> list[str]:
    """The symbols a component's inputs use, in order of first appearance."""
    seen: list[str] = []
    for tensor in spec.inputs:
        for dim in tensor.shape:
            symbol = parse_dim(dim)[1]
            if symbol is not None and symbol not in seen:
                seen.append(symbol)
    return seen


def build_profiles(spec: ComponentSpec, ranges: ShapeRanges, mode: str = "both") -> list[Profile]:
    """The profiles an engine for `spec` is built with: static first (when asked for), then dynamic."""
    if mode not in PROFILE_MODES:
        raise ValueError(f"profile {mode!r} is not one of {', '.join(PROFILE_MODES)}")
    all_dims = ranges.dims()
    dims = {s: all_dims[s] for s in input_symbols(spec)}
    static = Profile("static", {s: DimRange(r.opt, r.opt, r.opt) for s, r in dims.items()})
    dynamic = Profile("dynamic", dims)
    if mode == "static" or not any(r.min < r.max for r in dims.values()):
        return [static]  # nothing varies: a dynamic profile would be the static one again
    return [static, dynamic] if mode == "both" else [dynamic]


def select_profile(profiles: list[Profile], values: Mapping[str, int], component: str = "engine") -> int:
    """Index of the profile a call with these symbol values runs on: static when it fits, else dynamic.

    Raises ValueError (naming the values and what the engine accepts) when no profile fits, which
    happens for an engine built with only the static profile.
    """
    fitting = [i for i, p in enumerate(profiles) if p.accepts(values)]
    if not fitting:
        got = ", ".join(f"{s}={values[s]}" for s in profiles[0].dims)
        accepted = "; ".join(
            f"{p.kind}: " + ", ".join(f"{s} {r.min}..{r.max}" for s, r in p.dims.items()) for p in profiles
        )
        raise ValueError(
            f"{component}: shapes {got} fit none of the engine's profiles ({accepted}); "
            "rebuild with --profile both or dynamic to run other shapes"
        )
    static = [i for i in fitting if profiles[i].kind == "static"]
    return static[0] if static else fitting[0]
