"""ONNX Runtime backend: graph-optimized models cached per input hash, run with IO binding on torch tensors.

The same code serves the CPU provider and the CUDA provider (`device="cuda"`): inputs and outputs are
bound by pointer to torch tensors on the engine's device, so a GPU run never copies through the host.
An fp16 artifact (`sdrt export --precision fp16`) runs unchanged: its graphs take and return float32.
With `cuda_graphs=True` the UNet session captures one CUDA graph per input shape, at most `max_cuda_graphs`
(see CudaGraphBindings). On CUDA, TF32 is off unless `tf32=True` (the provider's `use_tf32`), so an fp32
artifact computes in fp32.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sdrt.engines.base import BuildRecord, CheckedEngine, Networks, indexed
from sdrt.engines.cache import (
    CachedEngine,
    EngineCache,
    ensure_engine,
    hardware_id,
    onnx_digests,
    reading,
    require_onnx,
)
from sdrt.engines.cuda_graphs import DEFAULT_MAX_GRAPHS, shape_key
from sdrt.engines.float32 import float32_name, float32_onnx
from sdrt.engines.options import make_options
from sdrt.hashing import json_sha256
from sdrt.onnx_files import ONNX_DATA_FILE, ONNX_FILE, OnnxFile
from sdrt.spec import ComponentSpec, ShapeRanges

log = logging.getLogger(__name__)

BACKEND = "onnxruntime"
OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
FUSIONS = "ort-transformers-unet-cpu/1"  # in the cache key of a fused engine: bump when ort_fusion's choice changes
# IO binding takes numpy element types
_NUMPY_DTYPES = {torch.float32: np.float32, torch.float16: np.float16, torch.int32: np.int32, torch.int64: np.int64}


@dataclass(frozen=True)
class OnnxRuntimeOptions:
    """Options of the ONNX Runtime backend."""

    device: str = "cpu"  # "cpu" (CPUExecutionProvider) or "cuda[:N]" (CUDAExecutionProvider)
    optimization: str = "all"  # graph optimization level applied at build time: disable, basic, extended, all
    threads: int = 0  # intra-op threads; 0 lets ONNX Runtime choose (run-time only, not part of the cache key)
    cuda_graphs: bool = False  # CUDA only: the UNet replays a captured CUDA graph per input shape (run-time only)
    max_cuda_graphs: int = DEFAULT_MAX_GRAPHS  # graphs per engine; further shapes run without one (run-time only)
    tf32: bool = False  # CUDA only: let fp32 math use TF32 (faster, not fp32-exact; ONNX Runtime's default is on)
    cache_dir: str | None = None  # engine cache outside the artifact (default $SDRT_CACHE_DIR, else the artifact)
    fusions: bool = False  # CPU: fuse the UNet's attention/LayerNorm/GELU first (ort_fusion; slower here: off)

    def __post_init__(self) -> None:
        if self.optimization not in OPTIMIZATION_LEVELS:
            raise ValueError(f"optimization {self.optimization!r} is not one of {', '.join(OPTIMIZATION_LEVELS)}")
        if self.threads < 0:
            raise ValueError(f"threads {self.threads} must be 0 (automatic) or positive")
        if self.cuda_graphs and self.device.split(":")[0] != "cuda":
            raise ValueError(f"cuda_graphs needs a CUDA device, not {self.device!r}")
        if self.max_cuda_graphs < 1:
            raise ValueError(f"max_cuda_graphs {self.max_cuda_graphs} must be at least 1")

    @property
    def torch_device(self) -> torch.device:
        return indexed(torch.device(self.device))

    def providers(self, cuda_graph: bool = False) -> list:
        """Execution providers for a session; `cuda_graph` turns on the CUDA provider's graph capture."""
        import onnxruntime as ort

        if self.torch_device.type == "cpu":
            return ["CPUExecutionProvider"]
        available = ort.get_available_providers()
        if "CUDAExecutionProvider" not in available:
            raise ValueError(
                f"device {self.device} needs ONNX Runtime's CUDAExecutionProvider, but this onnxruntime has only "
                f"{available}; install onnxruntime-gpu"
            )
        cuda = {"device_id": self.torch_device.index or 0, "use_tf32": "1" if self.tf32 else "0"}
        if cuda_graph:
            cuda["enable_cuda_graph"] = "1"
        return [("CUDAExecutionProvider", cuda), "CPUExecutionProvider"]


def options(**kwargs) -> OnnxRuntimeOptions:
    opts = make_options(OnnxRuntimeOptions, BACKEND, **kwargs)
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        extra = "gpu" if opts.device.startswith("cuda") else "cpu"
        raise ValueError(f"the onnxruntime backend needs ONNX Runtime: pip install 'sdrt[{extra}]' ({exc})") from exc
    return opts


def cache_key(onnx_file: OnnxFile, opts: OnnxRuntimeOptions, artifact: Path, name: str = "", fuse: bool = False) -> str:
    """Hash of everything the optimized model depends on: ONNX bytes, settings, library version, hardware."""
    import onnxruntime as ort

    return json_sha256(
        {
            **onnx_digests(artifact, name, onnx_file),
            **({"fusions": FUSIONS} if fuse else {}),
            "optimization": opts.optimization,
            "provider": opts.torch_device.type,
            "onnxruntime": ort.__version__,
            # optimized graphs are hardware-specific at level "all" (layout transforms for the CPU's vector width)
            "hardware": hardware_id(opts.torch_device),
        }
    )


def build(path: str | os.PathLike, manifest: Networks, opts: OnnxRuntimeOptions) -> list[BuildRecord]:
    """Optimize every component's graph once and save it, keyed by `cache_key`; reuse what is already built."""
    artifact = Path(path)
    require_onnx(artifact, manifest, BACKEND)
    opts.providers()  # fail on a missing execution provider before hashing gigabytes
    cache = EngineCache.for_artifact(artifact, opts.cache_dir)
    records = []
    for name, spec in manifest.components.items():
        engine = _engine(cache, artifact, name, manifest.files[name], opts, _fuses(spec, opts))
        records.append(BuildRecord(name, engine.record["key"], str(engine.path), engine.reused, engine.seconds))
    return records


def load(path: str | os.PathLike, manifest: Networks, opts: OnnxRuntimeOptions) -> dict[str, OnnxRuntimeEngine]:
    """Sessions over the cached optimized graphs (built first where missing, rebuilt where damaged)."""
    artifact = Path(path)
    require_onnx(artifact, manifest, BACKEND)
    opts.providers()  # fail on a missing execution provider before any work
    cache = EngineCache.for_artifact(artifact, opts.cache_dir)
    engines = {}
    for name, spec in manifest.components.items():
        engine = _engine(cache, artifact, name, manifest.files[name], opts, _fuses(spec, opts))
        # Only the UNet (and ControlNets) run every step; the others run once per generation, where launch
        # overhead is noise.
        cuda_graphs = opts.cuda_graphs and spec.role in ("denoiser", "controlnet") and _graphs_possible(engine, name)
        engines[name] = OnnxRuntimeEngine(
            _session(engine, opts, cuda_graphs, name), spec, manifest.ranges, opts, cuda_graphs
        )
        if spec.attributes.get("precision", "fp32") != "fp32":
            engines[name].float32_factory = _float32_factory(cache, artifact, name, manifest, opts)
    return engines


def _session(engine: CachedEngine, opts: OnnxRuntimeOptions, cuda_graphs: bool, name: str):
    """An inference session over a cached optimized graph (its optimizations already applied)."""
    import onnxruntime as ort

    so = _session_options(opts)
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        with reading(engine.path):
            return ort.InferenceSession(
                str(engine.path / ONNX_FILE), so, providers=opts.providers(cuda_graph=cuda_graphs)
            )
    except Exception as exc:  # ONNX Runtime raises its own Fail/RuntimeException types
        if not cuda_graphs:
            raise
        raise ValueError(
            f"ONNX Runtime cannot capture CUDA graphs for {name} ({exc}); load without cuda_graphs"
        ) from exc


def _graphs_possible(engine: CachedEngine, name: str) -> bool:
    """False (with a warning) when the optimized graph holds Memcpy nodes: ONNX Runtime refuses CUDA graphs then."""
    copies = int(engine.record.get("memcpy_nodes", 0))
    if copies:
        log.warning(
            "%s: the optimized graph copies between host and GPU (%d Memcpy nodes: some nodes run on the CPU), "
            "which CUDA graphs cannot capture; running it without them",
            name,
            copies,
        )
    return not copies


def _float32_factory(cache: EngineCache, artifact: Path, name: str, manifest: Networks, opts: OnnxRuntimeOptions):
    """What builds the float32 copy of an fp16 component's engine, when the VAE guard first needs it."""

    def make() -> OnnxRuntimeEngine:
        root, onnx_file = float32_onnx(cache, artifact, name, manifest.files[name])
        engine = _engine(cache, root, float32_name(name), onnx_file, opts)
        return OnnxRuntimeEngine(_session(engine, opts, False, name), manifest.components[name], manifest.ranges, opts)

    return make


class OnnxRuntimeEngine(CheckedEngine):
    """An ONNX Runtime session behind the engine protocol, fed by IO binding on torch tensors."""

    def __init__(
        self,
        session,
        spec: ComponentSpec,
        ranges: ShapeRanges,
        opts: OnnxRuntimeOptions,
        cuda_graphs: bool = False,
    ) -> None:
        super().__init__(spec, ranges, opts.torch_device)
        self.session = session
        self._device_type = "cuda" if self.device.type == "cuda" else "cpu"
        self._device_id = self.device.index or 0
        self._graphs = CudaGraphBindings(self, opts.max_cuda_graphs) if cuda_graphs else None
        self.float32_factory: Callable[[], OnnxRuntimeEngine] | None = None

    def float32_copy(self) -> OnnxRuntimeEngine:
        """This network computing in float32: itself for an fp32 graph, else a session over its upcast graph."""
        return self if self.float32_factory is None else self.float32_factory()

    def _run(self, feeds: Mapping[str, torch.Tensor], dims: Mapping[str, int]) -> dict[str, torch.Tensor]:
        if self._graphs is not None:
            return self._graphs.run(feeds, dims)
        inputs = {spec.name: feeds[spec.name].contiguous() for spec in self.spec.inputs}  # must outlive the run
        outputs = self._empty_outputs(dims)
        self._execute(self._bind(inputs, outputs))
        return outputs

    def _empty_outputs(self, dims: Mapping[str, int]) -> dict[str, torch.Tensor]:
        shapes = self.spec.output_shapes(dims)
        return {s.name: torch.empty(shapes[s.name], dtype=s.torch_dtype, device=self.device) for s in self.spec.outputs}

    def _bind(self, inputs: Mapping[str, torch.Tensor], outputs: Mapping[str, torch.Tensor]):
        """An IO binding of the session's inputs and outputs to these contiguous tensors' memory."""
        binding = self.session.io_binding()
        for bind, tensors in ((binding.bind_input, inputs), (binding.bind_output, outputs)):
            for name, tensor in tensors.items():
                bind(
                    name,
                    self._device_type,
                    self._device_id,
                    _NUMPY_DTYPES[tensor.dtype],
                    tuple(tensor.shape),
                    tensor.data_ptr(),
                )
        return binding

    def _execute(self, binding, run_options=None) -> None:
        if self._device_type == "cuda":
            # ONNX Runtime runs on its own stream: torch's queued writes to the inputs must land first.
            torch.cuda.current_stream(self.device).synchronize()
        # Run returns once the execution provider's stream is done, so torch may read the outputs at once.
        self.session.run_with_iobinding(binding, run_options)


class CudaGraphBindings:
    """ONNX Runtime CUDA graphs for one engine: a graph id, static buffers and a binding per input shape.

    ONNX Runtime captures a graph on a session's first run under a `gpu_graph_id` and replays it on
    later runs with that id; the replay reads and writes the addresses bound at capture, so each
    shape gets buffers allocated once: a call copies its inputs in and returns copies of the outputs
    (the next replay overwrites them). The session must have the CUDA provider with
    `enable_cuda_graph`, and all its compute nodes on it (shape arithmetic may stay on the CPU).
    ONNX Runtime has no call that releases a captured graph, so graphs are not evicted: past
    `capacity` shapes, a new shape runs with `gpu_graph_id` -1 (no capture, no replay).
    """

    def __init__(self, engine: OnnxRuntimeEngine, capacity: int = DEFAULT_MAX_GRAPHS) -> None:
        self.engine = engine
        self.capacity = capacity
        self._by_shape: dict[tuple, tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], object, object]] = {}
        self._warned = False

    def run(self, feeds: Mapping[str, torch.Tensor], dims: Mapping[str, int]) -> dict[str, torch.Tensor]:
        import onnxruntime as ort

        key = shape_key(feeds)
        if key not in self._by_shape and len(self._by_shape) >= self.capacity:
            if not self._warned:
                log.warning(
                    "%s: %d CUDA graphs captured, the most kept; other shapes run without one",
                    self.engine.spec.name,
                    self.capacity,
                )
                self._warned = True
            inputs = {name: t.contiguous() for name, t in feeds.items()}
            outputs = self.engine._empty_outputs(dims)
            run_options = ort.RunOptions()
            run_options.add_run_config_entry("gpu_graph_id", "-1")  # "capture/replay is disabled in that run"
            self.engine._execute(self.engine._bind(inputs, outputs), run_options)
            return outputs
        if key not in self._by_shape:
            inputs = {name: torch.empty_like(t, memory_format=torch.contiguous_format) for name, t in feeds.items()}
            outputs = self.engine._empty_outputs(dims)
            run_options = ort.RunOptions()
            # ids start at 1: ONNX Runtime reserves 0 for runs that name no graph, -1 for runs without one
            run_options.add_run_config_entry("gpu_graph_id", str(len(self._by_shape) + 1))
            self._by_shape[key] = (inputs, outputs, self.engine._bind(inputs, outputs), run_options)
        inputs, outputs, binding, run_options = self._by_shape[key]
        for name, tensor in feeds.items():
            inputs[name].copy_(tensor)
        self.engine._execute(binding, run_options)
        return {name: tensor.clone() for name, tensor in outputs.items()}


def _fuses(spec: ComponentSpec, opts: OnnxRuntimeOptions) -> bool:
    """Whether a component's graph goes through the UNet fusions first: the CPU denoiser, when `fusions` is on."""
    return opts.fusions and opts.torch_device.type == "cpu" and spec.role == "denoiser"


def _engine(
    cache: EngineCache, root: Path, name: str, onnx_file: OnnxFile, opts: OnnxRuntimeOptions, fuse: bool = False
) -> CachedEngine:
    """The optimized graph of one component (under `root`) from the engine cache, built when missing or damaged."""
    import onnxruntime as ort

    def optimize(tmp: Path) -> dict:
        so = _session_options(opts)
        so.graph_optimization_level = _level(opts.optimization)
        so.optimized_model_filepath = str(tmp / ONNX_FILE)
        if onnx_file.external_data:
            so.add_session_config_entry("session.optimized_model_external_initializers_file_name", ONNX_DATA_FILE)
            so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        source, fused = root / onnx_file.path, {}
        if fuse:
            source, fused = _fused_source(root / onnx_file.path, tmp / "fused", name)
        ort.InferenceSession(str(source), so, providers=opts.providers())
        shutil.rmtree(tmp / "fused", ignore_errors=True)  # the engine is the optimized graph alone
        return {
            "optimization": opts.optimization,
            "provider": opts.torch_device.type,
            "fused": fused,
            "memcpy_nodes": _memcpy_nodes(tmp / ONNX_FILE),
        }

    key = cache_key(onnx_file, opts, root, name, fuse)
    what = f"{BACKEND} engine for {name} (optimization {opts.optimization}{', fused' if fuse else ''})"
    return ensure_engine(cache, BACKEND, name, key, {"onnxruntime": ort.__version__}, optimize, what=what)


def _fused_source(source: Path, out_dir: Path, name: str) -> tuple[Path, dict[str, int]]:
    """The UNet fusions' graph of `source` in `out_dir` and the fused op counts; `source` itself where they fail."""
    from sdrt.engines.ort_fusion import fuse_unet

    try:
        fused = fuse_unet(source, out_dir)
    except Exception as exc:  # the optimizer's pattern matchers raise anything on graphs they do not expect
        log.warning(
            "%s: ONNX Runtime's UNet fusions failed (%s: %s); building it unfused", name, type(exc).__name__, exc
        )
        return source, {}
    return out_dir / ONNX_FILE, fused


def _memcpy_nodes(path: Path) -> int:
    """Host/device copy nodes ONNX Runtime placed in an optimized graph (its graph only; weights not read)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return sum(node.op_type in ("MemcpyFromHost", "MemcpyToHost") for node in graph.node)


def _session_options(opts: OnnxRuntimeOptions):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = opts.threads
    # Threads sleep as soon as a run ends rather than spin for more work: between runs sdrt's own torch code and the
    # next network's session (a ControlNet's, then the UNet's) want the same cores. Measured on the demo (128x128,
    # 20 steps, CPU): with one ControlNet 1317 ms spinning vs 471 ms not; without one 305 vs 331 ms (run to run noise)
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3  # errors only; ONNX Runtime's warnings would reach the user's terminal directly
    return so


def _level(name: str):
    import onnxruntime as ort

    levels = ort.GraphOptimizationLevel
    return {
        "disable": levels.ORT_DISABLE_ALL,
        "basic": levels.ORT_ENABLE_BASIC,
        "extended": levels.ORT_ENABLE_EXTENDED,
        "all": levels.ORT_ENABLE_ALL,
    }[name]
