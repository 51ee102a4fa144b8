"""The reference backend: the diffusers/transformers modules themselves, run by torch.

On a GPU it is also a fast backend: fp16 weights, SDPA attention, channels_last convolutions, and
optionally `torch.compile` and CUDA graphs for the UNet, the one network called every step (from the
device's shared graph pool, at most `max_cuda_graphs` shapes, least recently used dropped; a shape
whose capture fails runs eagerly). Engines take and return float32 tensors whatever their compute
dtype (they cast at the boundary), so the runtime is the same for every setting. On CUDA, float32
math is IEEE float32 unless `tf32=True`: cuDNN's convolutions default to TF32, which is not float32.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sdrt.engines.base import BuildRecord, CheckedEngine, Networks, circular_padding, indexed
from sdrt.engines.cuda_graphs import DEFAULT_MAX_GRAPHS, GraphCache, GraphCaptureError, capture, shape_key
from sdrt.engines.options import make_options
from sdrt.spec import ComponentSpec, ShapeRanges

log = logging.getLogger(__name__)

BACKEND = "torch"
RUNS_MODULES = True  # the loader hands this backend the networks' torch modules
COMPUTE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# torch.compile modes. Without cuda_graphs, "max-autotune-no-cudagraphs" is the default: autotuned
# Triton kernels with no CUDA-graph machinery of torch's own, so `cuda_graphs` (ours: one explicit
# graph per input shape, static buffers we own) is the only capture. "reduce-overhead" and
# "max-autotune" capture with torch's CUDA-graph trees instead; they exclude cuda_graphs=True.
COMPILE_MODES = ("max-autotune-no-cudagraphs", "default", "reduce-overhead", "max-autotune")
_CUDA_GRAPH_COMPILE_MODES = ("reduce-overhead", "max-autotune")


@dataclass(frozen=True)
class TorchOptions:
    """Options of the torch backend."""

    device: str = "cpu"  # "cpu" or "cuda[:N]"
    dtype: str | None = None  # text encoder and UNet: float32, float16 or bfloat16; None: float16 on CUDA, else float32
    vae_dtype: str = "float32"  # VAE compute dtype: float32 by default, as fp16 VAEs can overflow (SDXL's does)
    channels_last: bool | None = None  # UNet and VAE weights and 4-D inputs in NHWC layout; None: on for CUDA
    compile: bool = False  # torch.compile the UNet (the first call at each shape compiles: minutes at full size)
    compile_mode: str = "max-autotune-no-cudagraphs"  # torch.compile mode, one of COMPILE_MODES
    cuda_graphs: bool = False  # capture the UNet call as one CUDA graph per input shape, replayed (CUDA only)
    max_cuda_graphs: int = DEFAULT_MAX_GRAPHS  # graphs kept, least recently used dropped first
    tf32: bool = False  # CUDA only: let float32 convolutions and matmuls use TF32 (faster, not float32-exact)

    def __post_init__(self) -> None:
        for name in ("dtype", "vae_dtype"):
            value = getattr(self, name)
            if value is not None and value not in COMPUTE_DTYPES:
                raise ValueError(f"{name} {value!r} is not one of {', '.join(COMPUTE_DTYPES)}")
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode {self.compile_mode!r} is not one of {', '.join(COMPILE_MODES)}")
        if self.cuda_graphs and not self.on_cuda:
            raise ValueError(f"cuda_graphs needs a CUDA device, not {self.device!r}")
        if self.max_cuda_graphs < 1:
            raise ValueError(f"max_cuda_graphs {self.max_cuda_graphs} must be at least 1")
        if self.cuda_graphs and self.compile and self.compile_mode in _CUDA_GRAPH_COMPILE_MODES:
            raise ValueError(
                f"compile_mode {self.compile_mode} captures CUDA graphs itself; with cuda_graphs=True use "
                "compile_mode max-autotune-no-cudagraphs (or default)"
            )

    @property
    def on_cuda(self) -> bool:
        return self.device.split(":")[0] == "cuda"

    @property
    def torch_device(self) -> torch.device:
        return indexed(torch.device(self.device))

    @property
    def compute_dtype(self) -> torch.dtype:
        """Dtype of the text encoder and UNet: `dtype`, or float16 on CUDA and float32 on the CPU."""
        if self.dtype is not None:
            return COMPUTE_DTYPES[self.dtype]
        return torch.float16 if self.on_cuda else torch.float32

    @property
    def vae_compute_dtype(self) -> torch.dtype:
        return COMPUTE_DTYPES[self.vae_dtype]

    @property
    def use_channels_last(self) -> bool:
        return self.on_cuda if self.channels_last is None else self.channels_last


def options(**kwargs) -> TorchOptions:
    return make_options(TorchOptions, BACKEND, **kwargs)


class TorchEngine(CheckedEngine):
    """One component's torch module behind the engine protocol: float32 tensors in and out, any compute dtype."""

    def __init__(
        self,
        module: nn.Module,
        spec: ComponentSpec,
        ranges: ShapeRanges,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
        compile_mode: str | None = None,
        cuda_graphs: bool = False,
        max_cuda_graphs: int = DEFAULT_MAX_GRAPHS,
        tf32: bool = False,
    ) -> None:
        super().__init__(spec, ranges, device)
        self.dtype = dtype
        self.channels_last = channels_last
        self.tf32 = tf32
        self.module = module.to(self.device, dtype)
        if channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
        self._forward: Callable[..., torch.Tensor] = self.module
        if compile_mode is not None:
            self._forward = torch.compile(self.module, mode=compile_mode, dynamic=False)
        self._compute: Callable[[Mapping[str, torch.Tensor]], dict[str, torch.Tensor]] = self._run_module
        # runs the module's forward as Python each call, so hooks added later (hypernetworks) take effect
        self.eager = compile_mode is None and not cuda_graphs
        if cuda_graphs:
            self._compute = CudaGraphRunner(self._run_module, self.device, max_graphs=max_cuda_graphs, owner=spec.name)

    def _run(self, feeds: Mapping[str, torch.Tensor], dims: Mapping[str, int]) -> dict[str, torch.Tensor]:
        with torch.inference_mode(), float32_math(self.device, self.tf32):
            return self._compute(feeds)

    def _run_module(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Cast inputs to the compute dtype and layout, run the module, return float32 contiguous outputs."""
        inputs = {name: self._prepare(name, tensor) for name, tensor in feeds.items()}
        out = self._forward(**inputs)
        outputs = out if isinstance(out, tuple) else (out,)
        return {
            name: o.to(dtype=torch.float32, memory_format=torch.contiguous_format)
            for name, o in zip(self.spec.output_names, outputs, strict=True)
        }

    def _prepare(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        # a spec's fp32 inputs (the timestep: a float16 timestep near 999 is off by up to 0.5) stay float32;
        # diffusers computes their sinusoidal embeddings in float32 whatever the module's dtype
        if tensor.is_floating_point() and name not in self.spec.fp32_inputs:
            tensor = tensor.to(self.dtype)
        if self.channels_last and tensor.dim() == 4:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        return tensor

    def sibling(self, module: nn.Module, spec: ComponentSpec) -> TorchEngine:
        """Another network on this engine's device, dtype and layout (e.g. DeepCache's, on the UNet's own module)."""
        return TorchEngine(module, spec, self.ranges, self.device, self.dtype, self.channels_last, tf32=self.tf32)

    def circular(self) -> TorchEngine:
        """This network with every Conv2d padding circularly (seamless tiling), sharing this engine's module: each
        call switches the padding for its duration and back (eagerly: no torch.compile, no CUDA graphs). Calls of the
        two engines must not overlap (the runtime runs one batch at a time)."""
        return _CircularTorchEngine(
            self.module, self.spec, self.ranges, self.device, self.dtype, self.channels_last, tf32=self.tf32
        )

    def float32_copy(self) -> TorchEngine:
        """This engine's network computing in float32 on the same device: the fallback when a float16 run overflows.

        Its weights are this engine's, upcast (as diffusers' upcast_vae does): an overflow is in the
        activations, and the weights' fp16 rounding moves a VAE's pixels by well under one 8-bit level.
        """
        if self.dtype == torch.float32:
            return self
        module = copy.deepcopy(self.module).float()
        return TorchEngine(
            module, self.spec, self.ranges, self.device, torch.float32, self.channels_last, tf32=self.tf32
        )


class _CircularTorchEngine(TorchEngine):
    """A TorchEngine whose calls run its (shared) module with circular padding."""

    def _run_module(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with circular_padding(self.module):
            return super()._run_module(feeds)

    def circular(self) -> TorchEngine:
        return self

    def float32_copy(self) -> TorchEngine:
        return super().float32_copy().circular()


@contextmanager
def float32_math(device: torch.device, tf32: bool) -> Iterator[None]:
    """On CUDA, float32 convolutions and matmuls in IEEE float32 (or TF32 when `tf32`), restored afterwards.

    cuDNN's convolutions use TF32 by default (torch's `cudnn.allow_tf32`), so a float32 engine would not
    compute in float32; the setting is process-wide, hence set around each call, not once.
    """
    if device.type != "cuda":
        yield
        return
    conv, matmul = getattr(torch.backends.cudnn, "conv", None), torch.backends.cuda.matmul
    if hasattr(conv, "fp32_precision"):  # torch >= 2.9; mixing it with the legacy allow_tf32 flags is an error
        settings, value = [(conv, "fp32_precision"), (matmul, "fp32_precision")], "tf32" if tf32 else "ieee"
    else:
        settings, value = [(torch.backends.cudnn, "allow_tf32"), (matmul, "allow_tf32")], tf32
    saved = [getattr(obj, name) for obj, name in settings]
    for obj, name in settings:
        setattr(obj, name, value)
    try:
        yield
    finally:
        for (obj, name), old in zip(settings, saved, strict=True):
            setattr(obj, name, old)


class CudaGraphRunner:
    """Replays one CUDA graph per distinct set of input shapes, captured lazily on first use.

    A graph reads and writes fixed addresses, so each one owns static input buffers: a call copies its
    inputs into them, replays, and returns copies of the outputs (the next replay overwrites them, and
    multistep schedulers keep model outputs across steps). Follows torch's documented recipe: warm-up
    calls on a side stream (which also trigger torch.compile for the shape), then capture, into the
    device's shared pool. At most `max_graphs` are kept (least recently used dropped); a shape whose
    capture fails runs eagerly from then on, with a warning naming the cause.
    """

    def __init__(
        self,
        fn: Callable[[Mapping[str, torch.Tensor]], dict[str, torch.Tensor]],
        device: torch.device,
        warmup_calls: int = 3,
        max_graphs: int = DEFAULT_MAX_GRAPHS,
        owner: str = "engine",
    ) -> None:
        self.fn = fn
        self.device = device
        self.warmup_calls = warmup_calls
        self.graphs: GraphCache[tuple] = GraphCache(max_graphs, owner)

    def __call__(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        key = shape_key(dict(feeds))
        if key in self.graphs.failed:
            return self.fn(feeds)
        entry = self.graphs.get(key)
        if entry is None:
            try:
                entry = self._capture(feeds)
            except GraphCaptureError as exc:
                self.graphs.fail(key, exc)
                return self.fn(feeds)
            self.graphs.put(key, entry)
        graph, inputs, outputs = entry
        for name, tensor in feeds.items():
            inputs[name].copy_(tensor)
        graph.replay()
        return {name: tensor.clone() for name, tensor in outputs.items()}

    def _capture(self, feeds: Mapping[str, torch.Tensor]):
        log.info("capturing a CUDA graph for input shapes %s", {n: tuple(t.shape) for n, t in feeds.items()})
        inputs = {name: tensor.clone() for name, tensor in feeds.items()}
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup_calls):
                self.fn(inputs)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph, outputs = capture(lambda: self.fn(inputs), self.device)
        return graph, inputs, outputs


def build(path: str | os.PathLike, networks: Networks, opts: TorchOptions) -> list[BuildRecord]:
    """The torch backend runs the modules as they are: nothing to build."""
    _check_model_dir(path)
    return []


def load(
    path: str | os.PathLike,
    networks: Networks,
    opts: TorchOptions,
    modules: Callable[[], Mapping[str, nn.Module]] | None = None,
) -> dict[str, TorchEngine]:
    """An engine per network around its torch module; `modules` loads them (the model directory's, with spec IO)."""
    if modules is None:
        _check_model_dir(path)
        raise ValueError(f"the torch backend needs the torch modules of {path}'s networks to run; none were given")
    loaded = modules()
    use_sdpa(loaded.values())
    device, dtype, vae_dtype = opts.torch_device, opts.compute_dtype, opts.vae_compute_dtype
    nhwc = opts.use_channels_last
    log.info("torch backend on %s: %s (VAE %s), channels_last %s", device, dtype, vae_dtype, nhwc)
    return {
        name: TorchEngine(loaded[name], spec, networks.ranges, device, **_settings(spec, opts))
        for name, spec in networks.components.items()
    }


def _settings(spec: ComponentSpec, opts: TorchOptions) -> dict:
    """A network's engine settings by its role: the VAE's dtype for the VAE, compile and graphs for the denoiser."""
    if spec.role in ("vae_decoder", "vae_encoder"):
        return {"dtype": opts.vae_compute_dtype, "channels_last": opts.use_channels_last, "tf32": opts.tf32}
    if spec.role == "upscaler":  # float32 unless asked: SwinIR's attention overflows fp16
        return {
            "dtype": COMPUTE_DTYPES[opts.dtype or "float32"],
            "channels_last": opts.use_channels_last,
            "tf32": opts.tf32,
        }
    if spec.role in ("denoiser", "controlnet"):  # the networks called every step
        return {
            "dtype": opts.compute_dtype,
            "channels_last": opts.use_channels_last,
            "compile_mode": opts.compile_mode if opts.compile else None,
            "cuda_graphs": opts.cuda_graphs,
            "max_cuda_graphs": opts.max_cuda_graphs,
            "tf32": opts.tf32,
        }
    return {"dtype": opts.compute_dtype, "tf32": opts.tf32}  # text and image encoders: no convolutions to lay out


def use_sdpa(modules) -> None:
    """Make every attention use torch's scaled_dot_product_attention (flash / memory-efficient kernels on a GPU).

    It is already the default of diffusers (AttnProcessor2_0) and transformers ("sdpa") when torch has
    SDPA; set here so a model config or library default asking for something else cannot slow us down.
    """
    from diffusers.models.attention_processor import AttnProcessor2_0
    from diffusers.models.modeling_utils import ModelMixin
    from transformers import PreTrainedModel

    seen: set[int] = set()
    for module in modules:
        for part in module.modules():
            if id(part) in seen:
                continue
            seen.add(id(part))
            if isinstance(part, ModelMixin) and hasattr(part, "set_attn_processor"):
                part.set_attn_processor(AttnProcessor2_0())
            elif isinstance(part, PreTrainedModel) and getattr(part.config, "_attn_implementation", "sdpa") != "sdpa":
                part.set_attn_implementation("sdpa")


def _check_model_dir(path: str | os.PathLike) -> None:
    # a pipeline's directory (model_index.json), or one model's (config.json: a ControlNet)
    if not (Path(path) / "model_index.json").is_file() and not (Path(path) / "config.json").is_file():
        raise ValueError(
            f"the torch backend runs a diffusers model directory (with model_index.json); {path} is not one. "
            "Pass the model directory the artifact was exported from, or use --backend onnxruntime"
        )
