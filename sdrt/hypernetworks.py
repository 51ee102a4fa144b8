"""The web UI's hypernetworks: small MLPs that rewrite the context every attention layer of the UNet reads.

A hypernetwork file (`.pt`, the web UI's `Hypernetwork.save`) maps a context width to a pair of module state
dicts, one for the keys and one for the values, beside its settings: `layer_structure` (widths as multiples of
the context width, 1 first and last; default [1, 2, 1]), `activation_func` (a torch activation by lower-case
name, "linear" or None for none), `is_layer_norm`, `activate_output` (default True), `use_dropout`,
`dropout_structure`, `last_layer_dropout`. Each module is Linear layers of those widths, the activation after
each but the last (after the last too with `activate_output`), a LayerNorm after each with `is_layer_norm`, and
Dropout layers (identity at inference, but they hold places in the layer numbering); old files' `linear1` /
`linear2` keys are the first two Linear layers.

Applied as the web UI applies them: in every attention layer of the UNet, the context (the text states for
cross-attention, the layer's own input for self-attention) of a width the file has modules for becomes
`x + module(x) * multiplier` before the key projection (the first module) and, separately, before the value
projection (the second); several hypernetworks chain in order, each link taking the previous one's output.
Files are read with torch's weights-only loader only, and refused (naming the file and the reason) when they
are not what the format says, hold non-finite weights, or fit no context width of the model.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sdrt.weights_io import load_pickle_weights_only

log = logging.getLogger(__name__)

HYPERNETWORK_SUFFIX = ".pt"
# the web UI's activation names: its own few, and every torch activation by its lower-cased class name
ACTIVATIONS: dict[str, type[nn.Module]] = {
    name.lower(): cls
    for name, cls in inspect.getmembers(torch.nn.modules.activation, inspect.isclass)
    if cls.__module__ == "torch.nn.modules.activation"
}
ACTIVATIONS.update(
    {"linear": nn.Identity, "relu": nn.ReLU, "leakyrelu": nn.LeakyReLU, "elu": nn.ELU, "swish": nn.Hardswish,
     "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
)  # fmt: skip
_OLD_KEYS = {"linear1.bias": "linear.0.bias", "linear1.weight": "linear.0.weight",
             "linear2.bias": "linear.1.bias", "linear2.weight": "linear.1.weight"}  # fmt: skip
MAX_WIDTH = 1 << 16  # a context width or layer width past this is not a Stable Diffusion model's


class HypernetworkModule(nn.Module):
    """One side (keys or values) of a hypernetwork at one width: its `linear` stack, without the residual."""

    def __init__(self, dim: int, settings: HypernetworkSettings) -> None:
        super().__init__()
        structure = settings.layer_structure
        layers: list[nn.Module] = []
        for i in range(len(structure) - 1):
            layers.append(nn.Linear(int(dim * structure[i]), int(dim * structure[i + 1])))
            last = i >= len(structure) - 2
            if settings.activation not in (None, "linear") and (not last or settings.activate_output):
                layers.append(ACTIVATIONS[settings.activation]())
            if settings.layer_norm:
                layers.append(nn.LayerNorm(int(dim * structure[i + 1])))
            if settings.dropout[i + 1] > 0:
                layers.append(nn.Dropout(p=settings.dropout[i + 1]))  # identity in eval mode; it holds a place
        self.linear = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


@dataclass(frozen=True)
class HypernetworkSettings:
    """A file's architecture settings, with the web UI's defaults for the ones it lacks."""

    layer_structure: tuple[float, ...]  # widths of the stack as multiples of the context width, 1 first and last
    activation: str | None  # torch activation by lower-case name; None or "linear": none
    layer_norm: bool  # a LayerNorm after every Linear
    activate_output: bool  # the activation after the last Linear too
    dropout: tuple[float, ...]  # dropout probability after each layer width (0: none)

    @classmethod
    def read(cls, data: Mapping[Any, Any]) -> HypernetworkSettings:
        """The settings of a hypernetwork file's dictionary, as the web UI's `Hypernetwork.load` reads them."""
        structure = data.get("layer_structure") or [1, 2, 1]
        if (
            not isinstance(structure, (list, tuple))
            or len(structure) < 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 64 for v in structure)
        ):
            raise ValueError(f"its layer_structure {structure!r} is not a list of widths")
        if structure[0] != 1 or structure[-1] != 1:
            raise ValueError(f"its layer_structure {list(structure)} does not start and end with 1")
        activation = data.get("activation_func")
        if activation is not None and (not isinstance(activation, str) or activation not in ACTIVATIONS):
            raise ValueError(f"its activation_func {activation!r} is not one the web UI knows")
        dropout = data.get("dropout_structure")
        use_dropout = bool(data.get("use_dropout", False)) or bool(dropout and any(dropout))
        if dropout is None:  # the web UI's parse_dropout_structure: 0.3 after the inner layers
            last = bool(data.get("last_layer_dropout", False))
            dropout = (
                [0] * len(structure) if not use_dropout else [0, *[0.3] * (len(structure) - 3), 0.3 if last else 0, 0]
            )
        # the web UI reads dropout_structure[i + 1] for every layer: it must be at least as long as the structure
        if (
            not isinstance(dropout, (list, tuple))
            or len(dropout) < len(structure)
            or not all(isinstance(p, (int, float)) and 0 <= p < 1 for p in dropout)
        ):
            raise ValueError(f"its dropout_structure {dropout!r} does not fit its layer_structure {list(structure)}")
        return cls(
            layer_structure=tuple(float(v) for v in structure),
            activation=activation,
            layer_norm=bool(data.get("is_layer_norm", False)),
            activate_output=bool(data.get("activate_output", True)),
            dropout=tuple(float(p) for p in dropout),
        )


@dataclass(frozen=True)
class Hypernetwork:
    """A hypernetwork file read: its (key, value) modules by context width, and what the file says about itself."""

    path: Path
    settings: HypernetworkSettings
    layers: Mapping[int, tuple[HypernetworkModule, HypernetworkModule]]  # context width -> (key, value) modules
    step: int | None = None  # training step, as the file records it
    sd_checkpoint: str | None = None  # hash of the checkpoint it was trained on
    sd_checkpoint_name: str | None = None
    info: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(sorted(self.layers))

    def to(self, device: torch.device | str) -> Hypernetwork:
        for pair in self.layers.values():
            for module in pair:
                module.to(device)
        return self


def read_hypernetwork(path: str | os.PathLike) -> Hypernetwork:
    """A hypernetwork file, read as data; ValueError naming the file and what is wrong with it."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"hypernetwork file {file} does not exist")
    if file.suffix != HYPERNETWORK_SUFFIX:
        raise ValueError(f"hypernetwork file {file} is not a {HYPERNETWORK_SUFFIX} file (the web UI saves them so)")
    try:
        return _read(file)
    except ValueError as exc:
        raise ValueError(f"hypernetwork file {file}: {exc}") from None


def _read(file: Path) -> Hypernetwork:
    data = load_pickle_weights_only(file)
    if not isinstance(data, Mapping):
        raise ValueError(f"it holds a {type(data).__name__}, not the web UI's dictionary")
    settings = HypernetworkSettings.read(data)
    layers: dict[int, tuple[HypernetworkModule, HypernetworkModule]] = {}
    for width, pair in data.items():
        if isinstance(width, bool) or not isinstance(width, int):
            continue  # settings and notes are under string keys
        if not 0 < width <= MAX_WIDTH:
            raise ValueError(f"its context width {width} is not one a model has")
        if not isinstance(pair, (list, tuple)) or len(pair) != 2 or not all(isinstance(s, Mapping) for s in pair):
            raise ValueError(f"its entry for width {width} is not a pair of module state dicts (keys, values)")
        if max(settings.layer_structure) * width > MAX_WIDTH:
            raise ValueError(f"its layers at width {width} would be {max(settings.layer_structure) * width:g} wide")
        layers[width] = (_module(width, settings, pair[0], "keys"), _module(width, settings, pair[1], "values"))
    if not layers:
        raise ValueError("it holds no modules (no integer context widths)")

    def text(key: str) -> str | None:
        return data.get(key) if isinstance(data.get(key), str) else None

    step = data.get("step")
    info = data.get("optional_info")
    return Hypernetwork(
        path=file,
        settings=settings,
        layers=layers,
        step=step if isinstance(step, int) and not isinstance(step, bool) else None,
        sd_checkpoint=text("sd_checkpoint"),
        sd_checkpoint_name=text("sd_checkpoint_name"),
        info={"optional_info": info} if isinstance(info, str) else {},
    )


def _module(width: int, settings: HypernetworkSettings, state: Mapping[Any, Any], side: str) -> HypernetworkModule:
    module = HypernetworkModule(width, settings)
    state = {_OLD_KEYS.get(k, k): v for k, v in state.items()}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise ValueError(f"its {side} module at width {width} holds {key!r} = {type(value).__name__}, not weights")
        if not torch.isfinite(value).all():
            raise ValueError(f"its {side} module at width {width} has non-finite weights (NaN or infinity) in {key}")
    try:
        module.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ValueError(
            f"its {side} module at width {width} does not fit the architecture its settings describe: {first}"
        ) from None
    module.eval().requires_grad_(False)
    with torch.no_grad():  # a stack that does not map the width to itself (an activation that halves it) fails here
        out = module(torch.zeros(1, 1, width))
    if out.shape != (1, 1, width):
        raise ValueError(f"its {side} module at width {width} turns width {width} into {tuple(out.shape)[-1]}")
    return module


# --- applying a chain -----------------------------------------------------------------------------------------

HypernetworkChain = Sequence[tuple[Hypernetwork, float]]  # (hypernetwork, multiplier) per link, in order


def attention_layers(unet: nn.Module) -> list[nn.Module]:
    """The UNet's attention layers (diffusers' Attention: every transformer block's self- and cross-attention)."""
    from diffusers.models.attention_processor import Attention

    return [m for m in unet.modules() if isinstance(m, Attention)]


def context_widths(unet: nn.Module) -> set[int]:
    """The widths of the contexts a UNet's attention layers read (their key projections' input widths)."""
    return {int(m.to_k.in_features) for m in attention_layers(unet)}


def _rewrite(chain: HypernetworkChain, side: int) -> Callable:
    def hook(module: nn.Module, args: tuple) -> tuple:
        x, *rest = args
        for hypernetwork, multiplier in chain:
            pair = hypernetwork.layers.get(int(x.shape[-1]))
            if pair is not None:
                context = x.float()  # the web UI runs hypernetworks in float32 whatever the UNet's dtype
                x = (context + pair[side](context) * multiplier).to(x.dtype)
        return (x, *rest)

    return hook


class HypernetworkHooks:
    """A hypernetwork chain installed in a UNet's attention layers (forward pre-hooks on their key and value
    projections, which change no weight and no module); `remove()` leaves the UNet as it was."""

    def __init__(self, unet: nn.Module, chain: HypernetworkChain) -> None:
        self.chain = tuple(chain)
        self._handles = []
        try:
            device = next(unet.parameters()).device
            for hypernetwork, _ in self.chain:
                hypernetwork.to(device)
            for attention in attention_layers(unet):
                self._handles.append(attention.to_k.register_forward_pre_hook(_rewrite(self.chain, 0)))
                self._handles.append(attention.to_v.register_forward_pre_hook(_rewrite(self.chain, 1)))
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def check_fits(hypernetwork: Hypernetwork, widths: set[int]) -> None:
    """ValueError unless the hypernetwork has modules for some context width of the model."""
    if not widths & set(hypernetwork.layers):
        raise ValueError(
            f"hypernetwork file {hypernetwork.path} has modules for context widths "
            f"{', '.join(map(str, hypernetwork.widths))}, but this model's attention layers read widths "
            f"{', '.join(map(str, sorted(widths)))} (is it for another model family?)"
        )


class HypernetworkReader:
    """Reads hypernetwork files once per file version (their modules are kept for the next request)."""

    def __init__(self) -> None:
        self._files: dict[tuple[Path, int, int], Hypernetwork] = {}

    def read(self, path: Path) -> Hypernetwork:
        stat = path.stat() if path.is_file() else None
        key = (path.resolve(), stat.st_mtime_ns if stat else 0, stat.st_size if stat else 0)
        if key not in self._files:
            self._files = {k: v for k, v in self._files.items() if k[0] != key[0]}  # the file's older versions go
            self._files[key] = read_hypernetwork(path)
        return self._files[key]
