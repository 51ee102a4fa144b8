"""Refit weight maps (which ONNX initializer holds which torch weight), and refitting built engines from torch weights.

The exporter keeps most parameters as initializers under their own names (`unet.conv_in.weight`),
but constant folding stores others under generated names: nn.Linear weights transposed for MatMul
(`onnx::MatMul_3642`), GroupNorm weights reshaped to (C, 1, 1), and parameters with identical values
merged into one initializer. As the TensorRT diffusion demo's refit tools do, the map is found by
value: every initializer is compared bit for bit with every parameter as stored, reshaped and
transposed (for an fp16 ONNX, with the parameters cast to fp16). An initializer that matches no
parameter is a constant of the graph (shapes, frequency tables) and stays unmapped; a parameter
found in no initializer was folded into something else and cannot be refit; both are reported.

`WeightMap.refit_weights(params)` turns torch parameters (a LoRA fused in, say) into the arrays the
initializers would hold after a re-export, without re-exporting. `WeightSource` ties it together
for one engine: the runtime fuses a LoRA into the torch modules (`sdrt.lora`) and the engine refits
every mapped weight through the map, changed or not, so switching LoRA A -> B -> A gives exactly A's
engine again. The map is computed once per ONNX and source model and cached as JSON under
`engines/refit/`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import defaultdict
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sdrt.engines.base import Networks
from sdrt.engines.cache import EngineCache, onnx_digests
from sdrt.files import atomic_file, read_json_object
from sdrt.hashing import json_sha256

log = logging.getLogger(__name__)

MAP_VERSION = 1
TRANSFORMS = ("same", "reshape", "transpose")  # initializer = param, param.reshape(shape), param.T
# an fp16 converter may clamp tiny magnitudes (onnxconverter-common: below 1e-7); anything else must match exactly
_FP16_ATOL = 1e-7


@dataclass(frozen=True)
class MappedWeight:
    """One initializer that holds a torch weight."""

    initializer: str  # ONNX initializer name (= TensorRT's refit weight name)
    params: tuple[str, ...]  # torch parameter names; several when the export merged equal parameters
    transform: str  # one of TRANSFORMS
    shape: tuple[int, ...]  # the initializer's shape
    dtype: str  # the initializer's numpy dtype, e.g. "float32"


@dataclass(frozen=True)
class WeightMap:
    """Which initializers of one ONNX graph hold which parameters of its torch module."""

    weights: tuple[MappedWeight, ...]  # in initializer order
    unmapped_initializers: tuple[str, ...]  # graph constants that are no torch weight
    unmapped_params: tuple[str, ...]  # torch parameters found in no initializer (folded or unused)

    def params(self) -> set[str]:
        """Every torch parameter the map covers."""
        return {p for w in self.weights for p in w.params}

    def refit_weights(self, params: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """Initializer name -> the array it holds for these parameter values (as a re-export would write it).

        Raises ValueError when parameters the export merged into one initializer now differ.
        """
        out = {}
        for w in self.weights:
            first = params[w.params[0]]
            for other in w.params[1:]:
                if not torch.equal(params[other], first):
                    raise ValueError(
                        f"{other} and {w.params[0]} now differ, but the export merged them into one initializer "
                        f"({w.initializer}) because they were equal; they cannot be refit separately"
                    )
            value = first.detach().to("cpu", torch.float32)
            if w.transform == "transpose":
                value = value.t()
            out[w.initializer] = np.ascontiguousarray(value.contiguous().numpy().astype(w.dtype).reshape(w.shape))
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "version": MAP_VERSION,
            "weights": [{**vars(w), "params": list(w.params), "shape": list(w.shape)} for w in self.weights],
            "unmapped_initializers": list(self.unmapped_initializers),
            "unmapped_params": list(self.unmapped_params),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WeightMap:
        if data.get("version") != MAP_VERSION:
            raise ValueError(f"weight map version {data.get('version')!r} is not {MAP_VERSION}")
        weights = tuple(
            MappedWeight(w["initializer"], tuple(w["params"]), w["transform"], tuple(w["shape"]), w["dtype"])
            for w in data["weights"]
        )
        return cls(weights, tuple(data["unmapped_initializers"]), tuple(data["unmapped_params"]))


def build_weight_map(onnx_path: str | os.PathLike, module: nn.Module) -> WeightMap:
    """Match the initializers of the ONNX at `onnx_path` to the parameters of `module`, the module it was traced from.

    Names are `module`'s parameter names (the first name of a parameter reachable under several).
    Raises ValueError when an initializer named after a parameter holds other values (the ONNX was
    exported from other weights).
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    initializers = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    params, aliases = _parameters(module)
    float_dtypes = {a.dtype for a in initializers.values() if a.dtype.kind == "f"}
    same, transposed, by_size = _index(params, float_dtypes)

    weights, unmapped = [], []
    for name, array in initializers.items():
        if array.dtype.kind != "f" or array.size < 2:
            unmapped.append(name)  # integer shapes and scalars: graph constants
            continue
        if name in aliases:
            canonical = aliases[name]
            if not _equal(
                array, params[canonical].reshape(array.shape) if params[canonical].size == array.size else None
            ):
                raise ValueError(
                    f"initializer {name} of {onnx_path} differs from the torch weight of that name: "
                    "the ONNX was exported from other weights"
                )
            transform = "same" if params[canonical].shape == array.shape else "reshape"
            weights.append(MappedWeight(name, (canonical,), transform, array.shape, array.dtype.name))
            continue
        digest = _digest(array)
        group, transform = same.get((array.dtype.name, digest), []), None
        if group:
            transform = "same" if params[group[0]].shape == array.shape else "reshape"
        elif array.ndim == 2 and transposed.get((array.dtype.name, digest)):
            group, transform = transposed[(array.dtype.name, digest)], "transpose"
        elif array.dtype == np.float16:
            group, transform = _close_fp16(array, params, by_size)
        if group:
            weights.append(MappedWeight(name, tuple(group), transform, array.shape, array.dtype.name))
        else:
            unmapped.append(name)
    weights = _add_merged(weights, initializers, params, same, transposed)
    found = {p for w in weights for p in w.params}
    return WeightMap(tuple(weights), tuple(unmapped), tuple(n for n in params if n not in found))


def _add_merged(weights: list[MappedWeight], initializers, params, same, transposed) -> list[MappedWeight]:
    """Give parameters found nowhere else to the named initializer that holds their exact values.

    The exporter merges equal constants into one initializer, which may keep the name of one of them.
    """
    found = {p for w in weights for p in w.params}
    out = []
    for w in weights:
        array = initializers[w.initializer]
        index = transposed if w.transform == "transpose" else same
        extra = [p for p in index.get((array.dtype.name, _digest(array)), []) if p not in found]
        found.update(extra)
        out.append(MappedWeight(w.initializer, w.params + tuple(extra), w.transform, w.shape, w.dtype) if extra else w)
    return out


def _parameters(module: nn.Module) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Canonical name -> float32 values, and every name (aliases of shared parameters too) -> canonical name."""
    params, aliases, first = {}, {}, {}
    for name, p in module.named_parameters(remove_duplicate=False):
        canonical = first.setdefault(id(p), name)
        aliases[name] = canonical
        if canonical == name:
            params[name] = p.detach().to("cpu", torch.float32).numpy()
    return params, aliases


def _index(params: Mapping[str, np.ndarray], dtypes: set[np.dtype]):
    """Parameters by (dtype, digest of their bytes) as stored and, for matrices, transposed; and by size."""
    same, transposed, by_size = defaultdict(list), defaultdict(list), defaultdict(list)
    for name, value in params.items():
        by_size[value.size].append(name)
        for dtype in dtypes:
            cast = np.ascontiguousarray(value.astype(dtype))
            same[(dtype.name, _digest(cast))].append(name)
            if cast.ndim == 2:
                transposed[(dtype.name, _digest(np.ascontiguousarray(cast.T)))].append(name)
    return same, transposed, by_size


def _close_fp16(array: np.ndarray, params: Mapping[str, np.ndarray], by_size) -> tuple[list[str], str | None]:
    """Parameters an fp16 initializer holds up to the converter's clamping of tiny values."""
    for transform in ("same", "transpose"):
        group = []
        for name in by_size.get(array.size, []):
            value = params[name].T if transform == "transpose" else params[name]
            if transform == "transpose" and value.shape != array.shape:
                continue
            cast = value.astype(np.float16).reshape(array.shape).astype(np.float32)
            if np.allclose(cast, array.astype(np.float32), rtol=0, atol=_FP16_ATOL):
                group.append(name)
        if group:
            if transform == "same" and params[group[0]].shape != array.shape:
                transform = "reshape"
            return group, transform
    return [], None


def _digest(array: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(array).tobytes(), digest_size=16).digest()


def _equal(array: np.ndarray, value: np.ndarray | None) -> bool:
    if value is None:
        return False
    if array.dtype == np.float16:
        return np.allclose(
            value.astype(np.float16).astype(np.float32), array.astype(np.float32), rtol=0, atol=_FP16_ATOL
        )
    return np.array_equal(value.astype(array.dtype), array)


def weight_map_for(
    artifact: Path, manifest: Networks, component: str, module: nn.Module, cache_dir: str | os.PathLike | None = None
) -> WeightMap:
    """The weight map of one component, from the engine cache (engines/refit/) or built and cached there."""
    onnx_file = manifest.files[component]
    key = json_sha256(
        {"version": MAP_VERSION, **onnx_digests(artifact, component, onnx_file), "source": manifest.source_sha256}
    )
    path = EngineCache.for_artifact(artifact, cache_dir).backend_dir("refit") / f"{component}-{key[:16]}.json"
    if path.is_file():
        try:
            return WeightMap.from_json(read_json_object(path))
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("rebuilding the weight map %s: %s", path, exc)
    log.info("mapping the %s ONNX initializers to torch weights", component)
    weight_map = build_weight_map(artifact / onnx_file.path, module)
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(weight_map.to_json()) + "\n")
    return weight_map


class WeightSource:
    """Where a refittable engine's weights come from: its component's ONNX graph, whose initializers the weight map
    links to the parameters of the torch module the engine was exported from.

    `refit(engine, module)` refits an engine to the module's current parameters (a LoRA fused in, say): every
    mapped weight, changed or not, so switching A -> B -> A gives exactly A's engine again. The map is computed
    once per ONNX graph and source model and cached as JSON under `engines/refit/`.
    """

    def __init__(
        self,
        artifact: str | os.PathLike,
        networks: Networks,
        component: str,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        self.artifact = Path(artifact)
        self.networks = networks
        self.component = component
        self.cache_dir = cache_dir
        self._map: WeightMap | None = None

    def weight_map(self, module: nn.Module) -> WeightMap:
        """The component's weight map for `module` (its spec's IO), built or read once."""
        if self._map is None:
            self._map = weight_map_for(self.artifact, self.networks, self.component, module, self.cache_dir)
        return self._map

    def refit(self, engine: Any, module: nn.Module, changed: Collection[str] = ()) -> None:
        """Refit `engine` to `module`'s parameters; `changed` names those a LoRA changed (checked reachable)."""
        if not getattr(engine, "refittable", False):
            raise ValueError(f"the {self.component} engine cannot be refit; build the engines with --refit")
        weight_map = self.weight_map(module)
        lost = sorted(set(changed) - weight_map.params())
        if lost:
            raise ValueError(
                f"the LoRA changes {self.component} weights the export folded into other constants, so a refit cannot "
                f"reach them: {', '.join(lost[:5])}{' ...' if len(lost) > 5 else ''}"
            )
        engine.refit(weight_map.refit_weights(dict(module.named_parameters())))
