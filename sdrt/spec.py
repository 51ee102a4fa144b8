"""Data descriptions of networks: tensor specs, component specs and the shape ranges an artifact supports.

One `ComponentSpec` per network is read by the exporter (names, dynamic axes, sample inputs),
the engines (input checks, output shapes, profiles) and the runtime, so a tensor name or a
range can never drift between export and run.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where tensors are made: the CLI reads specs' neighbours without it
    import torch

DTYPES = ("float32", "float16", "int32", "int64")  # the dtypes a tensor may have, by torch's names

_DIM_EXPR = re.compile(r"^(?:(\d+)\*)?([a-z_][a-z0-9_]*)(?:/(\d+))?$")


@dataclass(frozen=True)
class Dim:
    """One axis of a tensor spec: `factor`, or `factor * ceil(symbol / divisor)` for a symbolic one.

    "8*latent_height" is an image 8 times the latents' height; "latent_height/4" a feature map after two stride-2
    downsamplings of the latents (ceil: a stride-2 convolution with padding 1 rounds up, so 65 -> 33 -> 17).
    """

    factor: int  # the whole size of a fixed axis, or what the symbol's (divided) value is multiplied by
    symbol: str | None = None  # e.g. "latent_height"; None for a fixed axis
    divisor: int = 1  # the symbol's value is divided by this, rounding up

    def size(self, values: Mapping[str, int]) -> int:
        if self.symbol is None:
            return self.factor
        return self.factor * -(-values[self.symbol] // self.divisor)


def dim_of(dim: int | str) -> Dim:
    """A spec dimension as a Dim: 3, "latent_height", "8*latent_height", "latent_height/2"."""
    if isinstance(dim, int):
        return Dim(dim)
    match = _DIM_EXPR.match(dim)
    if match is None:
        raise ValueError(f"dimension {dim!r} is not an int, a symbol, 'N*symbol' or 'symbol/N'")
    divisor = int(match.group(3) or 1)
    if divisor < 1:
        raise ValueError(f"dimension {dim!r} divides by {divisor}")
    return Dim(int(match.group(1) or 1), match.group(2), divisor)


def parse_dim(dim: int | str) -> tuple[int, str | None]:
    """Split a dimension into (factor, symbol): 3 -> (3, None), "8*latent_height" -> (8, "latent_height")."""
    parsed = dim_of(dim)
    return parsed.factor, parsed.symbol


@dataclass(frozen=True)
class DimRange:
    """Inclusive range of one symbolic dimension, with the value engines optimize for."""

    min: int  # smallest supported value
    opt: int  # value engines are tuned for
    max: int  # largest supported value

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(f"dimension range needs 1 <= min <= opt <= max, got {self.min}, {self.opt}, {self.max}")


@dataclass(frozen=True)
class ShapeRanges:
    """Shapes an artifact supports: images per engine call and image size in pixels."""

    max_batch: int = 4  # most images in one engine call (the UNet sees twice this with guidance)
    min_size: int = 256  # smallest height/width in pixels
    max_size: int = 1024  # largest height/width in pixels
    opt_size: int = 512  # height/width engines are tuned for
    opt_batch: int = 1  # images per call engines are tuned for
    text_length: int = 77  # tokens per text-encoder call: begin token, 75 prompt tokens, end token
    max_text_chunks: int = 4  # most text-encoder chunks one prompt may use (the UNet's text axis is up to this x 77)
    latent_factor: int = 8  # pixels per latent cell (the VAE's downsampling)

    def __post_init__(self) -> None:
        f = self.latent_factor
        if self.max_batch < 1:
            raise ValueError(f"max_batch {self.max_batch} must be at least 1")
        if self.max_text_chunks < 1:
            raise ValueError(f"max_text_chunks {self.max_text_chunks} must be at least 1")
        if not 1 <= self.opt_batch <= self.max_batch:
            raise ValueError(f"opt_batch {self.opt_batch} is outside 1..max_batch ({self.max_batch})")
        for name in ("min_size", "max_size", "opt_size"):
            value = getattr(self, name)
            if value < f or value % f:
                raise ValueError(f"{name} {value} is not a positive multiple of {f}")
        if not self.min_size <= self.opt_size <= self.max_size:
            raise ValueError(
                f"sizes need min_size <= opt_size <= max_size, got {self.min_size}, {self.opt_size}, {self.max_size}"
            )

    def dims(self) -> dict[str, DimRange]:
        """Range of every symbolic dimension used by the component specs."""
        f = self.latent_factor
        latent = DimRange(self.min_size // f, self.opt_size // f, self.max_size // f)
        return {
            "batch": DimRange(1, self.opt_batch, self.max_batch),
            "cfg_batch": DimRange(1, 2 * self.opt_batch, 2 * self.max_batch),
            "latent_height": latent,
            "latent_width": latent,
            "text_length": DimRange(self.text_length, self.text_length, self.text_length),
            "text_sequence": DimRange(self.text_length, self.text_length, self.text_length * self.max_text_chunks),
        }

    def check_size(self, height: int, width: int) -> None:
        """Raise ValueError unless height and width are supported image sizes in pixels."""
        for name, value in (("height", height), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} {value!r} is not an integer")
            if value % self.latent_factor:
                raise ValueError(f"{name} {value} is not a multiple of {self.latent_factor}")
            if not self.min_size <= value <= self.max_size:
                raise ValueError(
                    f"{name} {value} is outside the artifact's range {self.min_size}..{self.max_size}; "
                    f"re-export with --min-size/--max-size to cover it"
                )

    def to_json(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ShapeRanges:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"ranges name unknown fields {sorted(unknown)}; known: {list(cls.__dataclass_fields__)}")
        return cls(**{k: int(v) for k, v in data.items()})


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output: dtype and shape, where a dimension is an int, a symbol or 'N*symbol'."""

    name: str  # tensor name in the ONNX graph and in engine feeds
    dtype: str  # one of DTYPES
    shape: tuple[int | str, ...]  # e.g. ("batch", 4, "latent_height", "latent_width")

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} of {self.name} is not one of {sorted(DTYPES)}")
        for dim in self.shape:
            dim_of(dim)

    @property
    def torch_dtype(self) -> torch.dtype:
        import torch

        return getattr(torch, self.dtype)

    def symbols(self) -> dict[int, str]:
        """Axis index -> symbolic name, for ONNX dynamic axes."""
        return {i: str(d) for i, d in enumerate(self.shape) if isinstance(d, str)}

    def concrete(self, values: Mapping[str, int]) -> tuple[int, ...]:
        """Shape with every symbol replaced from `values`."""
        return tuple(dim_of(dim).size(values) for dim in self.shape)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TensorSpec:
        return cls(name=data["name"], dtype=data["dtype"], shape=tuple(data["shape"]))


# What a network does in a generation; backends and the exporter decide by role, never by a network's name.
# ("upscaler": a GAN upscaler, images in, larger images out; its "latent" axes are pixels, at latent factor 1)
ROLES = ("text_encoder", "image_encoder", "denoiser", "controlnet", "vae_decoder", "vae_encoder", "upscaler")


@dataclass(frozen=True)
class ComponentSpec:
    """Everything every stage needs to know about one network: its named inputs and outputs.

    Attributes every stage may read: `precision` (set at export), `fp32_inputs` (inputs whose embedding stays
    float32 in a lower-precision build: a sinusoidal embedding of large values), `upcast_attention`
    (attention scores and softmax in float32), `<input>_max` (exclusive bound of an input's values).
    """

    name: str  # network name, e.g. "text_encoder_2", "unet", "vae_decoder"
    inputs: tuple[TensorSpec, ...]  # in call order
    outputs: tuple[TensorSpec, ...]  # in return order
    batch_dim: str = "batch"  # symbol of axis 0 of every input and output
    attributes: Mapping[str, Any] = field(default_factory=dict)  # e.g. {"in_channels": 9}
    role: str = "denoiser"  # one of ROLES

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"component {self.name}: role {self.role!r} is not one of {', '.join(ROLES)}")
        names = [t.name for t in (*self.inputs, *self.outputs)]
        if len(set(names)) != len(names):
            raise ValueError(f"component {self.name} names a tensor twice: {names}")

    @property
    def fp32_inputs(self) -> frozenset[str]:
        """Inputs that stay float32 in a lower-precision build (their sinusoidal embeddings are computed in fp32)."""
        return frozenset(self.attributes.get("fp32_inputs", ()))

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {t.name: t.symbols() for t in (*self.inputs, *self.outputs) if t.symbols()}

    def resolve(self, feeds: Mapping[str, torch.Tensor], ranges: ShapeRanges) -> dict[str, int]:
        """Check feeds against the spec and the ranges; return the value of every symbol.

        Raises ValueError naming the tensor, the axis, the value and what is allowed.
        """
        missing = set(self.input_names) - set(feeds)
        extra = set(feeds) - set(self.input_names)
        if missing or extra:
            raise ValueError(
                f"{self.name} takes inputs {self.input_names}; missing {sorted(missing)}, unexpected {sorted(extra)}"
            )
        dims = ranges.dims()
        values: dict[str, int] = {}
        divided: list[tuple[TensorSpec, int, Dim, int]] = []  # checked once the full-size symbols are known
        for spec in self.inputs:
            tensor = feeds[spec.name]
            if tensor.dtype != spec.torch_dtype:
                raise ValueError(f"{self.name} input {spec.name} must be {spec.dtype}, got {tensor.dtype}")
            if tensor.dim() != len(spec.shape):
                raise ValueError(
                    f"{self.name} input {spec.name} must have shape {list(spec.shape)}, got {list(tensor.shape)}"
                )
            for axis, (dim, size) in enumerate(zip(spec.shape, tensor.shape, strict=True)):
                parsed = dim_of(dim)
                if parsed.symbol is None:
                    if size != parsed.factor:
                        raise ValueError(
                            f"{self.name} input {spec.name} axis {axis} must be {parsed.factor}, got {size}"
                        )
                    continue
                if parsed.divisor != 1:
                    divided.append((spec, axis, parsed, size))
                    continue
                factor, symbol = parsed.factor, parsed.symbol
                if size % factor:
                    raise ValueError(f"{self.name} input {spec.name} axis {axis} is {size}, not a multiple of {factor}")
                value = size // factor
                if values.setdefault(symbol, value) != value:
                    raise ValueError(
                        f"{self.name} input {spec.name} axis {axis} gives {symbol}={value}, "
                        f"but another input gives {values[symbol]}"
                    )
                allowed = dims[symbol]
                if not allowed.min <= value <= allowed.max:
                    hint = "; rebuild with a larger --max-batch" if "batch" in symbol else ""
                    raise ValueError(
                        f"{self.name} input {spec.name}: {symbol} {value} is outside the engine's profile "
                        f"{allowed.min}..{allowed.max}{hint}"
                    )
        for spec, axis, parsed, size in divided:
            if parsed.symbol not in values:
                raise ValueError(f"{self.name}: no input gives {parsed.symbol} whole, which {spec.name} divides")
            expected = parsed.size(values)
            if size != expected:
                raise ValueError(
                    f"{self.name} input {spec.name} axis {axis} must be {expected} "
                    f"({parsed.factor}*ceil({parsed.symbol}/{parsed.divisor})), got {size}"
                )
        return values

    def output_shapes(self, values: Mapping[str, int]) -> dict[str, tuple[int, ...]]:
        return {t.name: t.concrete(values) for t in self.outputs}

    def sample_inputs(
        self, values: Mapping[str, int], generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Random inputs with the given symbol values (never zeros, which hide indexing bugs)."""
        import torch

        feeds = {}
        for spec in self.inputs:
            shape = spec.concrete(values)
            if spec.torch_dtype.is_floating_point:
                high = self.attributes.get(f"{spec.name}_max")
                if high is None:
                    tensor = torch.randn(shape, generator=generator)
                else:  # a bounded input, e.g. a timestep in [0, num_train_timesteps)
                    tensor = torch.rand(shape, generator=generator) * float(high)
                feeds[spec.name] = tensor.to(spec.torch_dtype)
            else:
                high = int(self.attributes.get(f"{spec.name}_max", 2))
                feeds[spec.name] = torch.randint(0, high, shape, generator=generator, dtype=spec.torch_dtype)
        return feeds

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
            "batch_dim": self.batch_dim,
            "role": self.role,
            "attributes": dict(self.attributes),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ComponentSpec:
        return cls(
            name=data["name"],
            inputs=tuple(TensorSpec.from_json(t) for t in data["inputs"]),
            outputs=tuple(TensorSpec.from_json(t) for t in data["outputs"]),
            batch_dim=data.get("batch_dim", "batch"),
            attributes=dict(data.get("attributes", {})),
            role=data["role"],
        )
