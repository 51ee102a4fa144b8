"""The one protocol every backend speaks: named torch tensors in, named torch tensors out."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from sdrt.lazy import deferred
from sdrt.onnx_files import OnnxFile
from sdrt.spec import ComponentSpec, ShapeRanges

if TYPE_CHECKING:
    import torch
    from torch import nn
else:
    torch = deferred("torch")
    nn = deferred("torch.nn")


class Networks(Protocol):
    """What engines are built from: each network's spec and ONNX file, and the shapes they accept.

    An artifact's manifest is one; engines never read more of it (no family, no runtime facts).
    """

    components: Mapping[str, ComponentSpec]  # network name -> IO spec
    ranges: ShapeRanges  # batch and image sizes every engine accepts
    files: Mapping[str, OnnxFile]  # network name -> its ONNX file in the artifact (empty for a model directory)
    source_sha256: str  # the weights the graphs were exported from (keys weight maps)


@dataclass(frozen=True)
class NetworkSet:
    """A `Networks` of chosen networks: some of an artifact's, or a variant of their graphs (seamless tiling's)."""

    components: Mapping[str, ComponentSpec]
    ranges: ShapeRanges
    files: Mapping[str, OnnxFile]
    source_sha256: str = ""


@runtime_checkable
class Engine(Protocol):
    """A runnable component. Inputs and outputs are torch tensors on `device` (no host copies on a GPU)."""

    spec: ComponentSpec  # the IO spec it was built with
    ranges: ShapeRanges  # the shapes it accepts
    device: torch.device  # where its inputs must live and its outputs are returned

    def __call__(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...


@runtime_checkable
class ModuleEngine(Protocol):
    """An engine that computes with a torch module it holds (the torch backend): its weights are the module's."""

    module: nn.Module  # a module with the engine's spec IO; changing its parameters changes the engine


@runtime_checkable
class Circular(Protocol):
    """An engine that can run its network with every convolution padding circularly (seamless tiling) without graphs
    exported for it: it computes with a torch module (the torch backend)."""

    def circular(self) -> Engine:
        """The same network and weights, every Conv2d padding circularly."""


@runtime_checkable
class Refittable(Protocol):
    """An engine whose weights can be replaced, without a rebuild, by those of a torch module with its spec's IO."""

    @property
    def refittable(self) -> bool:
        """False when this engine was built without refit support."""

    def refit_from(self, module: nn.Module, changed: Collection[str] = ()) -> None:
        """Compute with `module`'s parameters from now on; `changed` names those that differ from the export's.

        ValueError when the engine cannot take them (built without refit, or a changed weight was folded away).
        """


class CheckedEngine:
    """Base for backends: checks feeds against the spec before running, so errors name the tensor and range."""

    def __init__(self, spec: ComponentSpec, ranges: ShapeRanges, device: torch.device) -> None:
        self.spec = spec
        self.ranges = ranges
        self.device = indexed(device)

    def __call__(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        dims = self.spec.resolve(feeds, self.ranges)
        for name, tensor in feeds.items():
            if tensor.device != self.device:
                raise ValueError(
                    f"{self.spec.name} input {name} is on {tensor.device}; this engine runs on {self.device}"
                )
        return self._run(feeds, dims)

    def _run(self, feeds: Mapping[str, torch.Tensor], dims: Mapping[str, int]) -> dict[str, torch.Tensor]:
        raise NotImplementedError


@contextmanager
def circular_padding(module: nn.Module) -> Iterator[nn.Module]:
    """`module` with every Conv2d padding circularly for the block, as the web UI's tiling and diffusers' seamless
    recipe set them: an image that wraps around at its edges (a texture that repeats without seams)."""
    convs = [layer for layer in module.modules() if isinstance(layer, nn.Conv2d)]
    saved = [conv.padding_mode for conv in convs]
    for conv in convs:
        conv.padding_mode = "circular"
    try:
        yield module
    finally:
        for conv, mode in zip(convs, saved, strict=True):
            conv.padding_mode = mode


def indexed(device: torch.device) -> torch.device:
    """`cuda` as `cuda:N` (the current device), so it compares equal to the device of tensors on it."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def max_batch(engine: Engine) -> int:
    """Largest batch the engine accepts on its batch axis."""
    return engine.ranges.dims()[engine.spec.batch_dim].max


def call_in_chunks(engine: Engine, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Run `engine` on feeds of any batch size, split along axis 0 into calls the engine accepts."""
    limit = max_batch(engine)
    total = next(iter(feeds.values())).shape[0]
    if total <= limit:
        return engine(feeds)
    parts = [engine({k: v[start : start + limit] for k, v in feeds.items()}) for start in range(0, total, limit)]
    return {name: torch.cat([p[name] for p in parts]) for name in parts[0]}


@dataclass(frozen=True)
class BuildRecord:
    """What `build` did for one component."""

    component: str  # component name
    key: str  # cache key of the engine
    path: str  # where the engine lies
    reused: bool  # True when an engine with the same key was already built
    seconds: float  # build time (0 when reused)
