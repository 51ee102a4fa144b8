"""Building TensorRT plans: options, the parse-configure-build steps, the timing cache, the keyed plan cache.

See `sdrt.engines.tensorrt_backend` for the design. Imports tensorrt only inside functions.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from sdrt.engines.base import BuildRecord, indexed
from sdrt.engines.cache import EngineCache, ensure_engine, onnx_digests
from sdrt.engines.tensorrt_cache import BACKEND, PLAN_FILE, GpuInfo, cache_key
from sdrt.engines.tensorrt_profiles import PROFILE_MODES, Profile, build_profiles
from sdrt.files import atomic_file
from sdrt.hashing import json_sha256
from sdrt.manifest import Manifest, OnnxFile
from sdrt.spec import ComponentSpec

log = logging.getLogger(__name__)

MIN_TENSORRT = 10
NEEDS = "the tensorrt backend needs TensorRT >= 10 and an NVIDIA GPU"
# attention scores and softmax (not the q/k/v projections) in diffusers' exported attention blocks
_ATTENTION_SCORES = re.compile(r"/attn\d*/(MatMul(_\d+)?|Softmax)$")


@dataclass(frozen=True)
class TensorRTOptions:
    """Options of the TensorRT backend."""

    device: str = "cuda"  # "cuda[:N]": TensorRT runs on NVIDIA GPUs only
    fp16: bool = True  # let TensorRT pick FP16 kernels (inputs and outputs keep the ONNX's dtypes)
    profile: str = "both"  # optimization profiles: "static" (opt shapes only), "dynamic" (whole range), "both"
    refit: bool = False  # build refittable engines, so LoRAs can be switched without a rebuild
    workspace_gb: float = 0.0  # builder workspace limit in GiB; 0 leaves TensorRT's default (the GPU's memory)
    optimization_level: int = 3  # builder optimization level 0..5 (TensorRT's default is 3)
    timing_cache: str | None = None  # timing cache file; None: one per TensorRT version and GPU in engines/tensorrt/
    cache_dir: str | None = None  # engine cache outside the artifact (default $SDRT_CACHE_DIR, else the artifact)
    cuda_graphs: bool = True  # capture each shape's engine call into a CUDA graph (run-time only, not in the key)

    def __post_init__(self) -> None:
        if self.device.split(":")[0] != "cuda":
            raise ValueError(f"device {self.device!r}: {NEEDS}; use --device cuda")
        if self.profile not in PROFILE_MODES:
            raise ValueError(f"profile {self.profile!r} is not one of {', '.join(PROFILE_MODES)}")
        if self.workspace_gb < 0:
            raise ValueError(f"workspace_gb {self.workspace_gb} must be 0 (TensorRT's default) or positive")
        if not 0 <= self.optimization_level <= 5:
            raise ValueError(f"optimization_level {self.optimization_level} is outside 0..5")

    @property
    def torch_device(self) -> torch.device:
        return indexed(torch.device(self.device))

    def settings(self) -> dict[str, Any]:
        """The options a plan depends on (part of the cache key)."""
        return {
            "fp16": self.fp16,
            "profile": self.profile,
            "refit": self.refit,
            "workspace_gb": self.workspace_gb,
            "optimization_level": self.optimization_level,
        }


def tensorrt():
    """The tensorrt module; ValueError saying what is missing when TensorRT >= 10 or a GPU is absent."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as exc:
        raise ValueError(f"{NEEDS}: the tensorrt Python package cannot be imported ({exc})") from exc
    if int(trt.__version__.split(".")[0]) < MIN_TENSORRT:
        raise ValueError(f"{NEEDS}: this is TensorRT {trt.__version__}")
    if not torch.cuda.is_available():
        raise ValueError(f"{NEEDS}: torch sees no CUDA GPU (or is a CPU build)")
    return trt


def gpu_info(device: torch.device) -> GpuInfo:
    major, minor = torch.cuda.get_device_capability(device)
    return GpuInfo(torch.cuda.get_device_name(device), f"{major}.{minor}")


def component_key(
    artifact: Path, name: str, onnx_file: OnnxFile, opts: TensorRTOptions, profiles: list[Profile]
) -> str:
    trt = tensorrt()
    onnx = onnx_digests(artifact, name, onnx_file)
    gpu = gpu_info(opts.torch_device)
    return cache_key(onnx["onnx"], onnx["external_data"], opts.settings(), profiles, trt.__version__, gpu)


def build_one(artifact: Path, manifest: Manifest, name: str, opts: TensorRTOptions, force: bool = False) -> BuildRecord:
    """The plan of one component from the engine cache, built when missing, damaged or (`force`) refused by TensorRT."""
    trt = tensorrt()
    spec, onnx_file = manifest.components[name], manifest.files[name]
    profiles = build_profiles(spec, manifest.ranges, opts.profile)
    gpu = gpu_info(opts.torch_device)
    cache = EngineCache.for_artifact(artifact, opts.cache_dir)
    key = component_key(artifact, name, onnx_file, opts, profiles)

    def build(tmp: Path) -> dict:
        plan = _build_plan(trt, artifact / onnx_file.path, spec, profiles, opts, timing_cache_path(cache, opts, gpu))
        (tmp / PLAN_FILE).write_bytes(plan)
        return {"settings": opts.settings(), "profiles": [p.to_json() for p in profiles]}

    if force:
        log.warning("rebuilding the %s engine: TensorRT could not deserialize it", name)
    expected = {"tensorrt": trt.__version__, "gpu": gpu.name, "compute_capability": gpu.compute_capability}
    what = f"TensorRT engine for {name} ({opts.profile} profiles, fp16 {opts.fp16})"
    engine = ensure_engine(cache, BACKEND, name, key, expected, build, what=what, rebuild=force)
    return BuildRecord(name, key, str(engine.path), reused=engine.reused, seconds=engine.seconds)


def _build_plan(trt, onnx_path: Path, spec: ComponentSpec, profiles: list[Profile], opts: TensorRTOptions, cache: Path):
    builder = trt.Builder(trt_logger())
    network = builder.create_network(0)  # explicit batch: the only mode in TensorRT 10
    parser = trt.OnnxParser(network, trt_logger())
    if not parser.parse_from_file(str(onnx_path)):  # reads external weights beside the file
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ValueError(f"TensorRT cannot parse {onnx_path}: {errors}")
    inputs = {network.get_input(i).name for i in range(network.num_inputs)}
    if inputs != set(spec.input_names):
        raise ValueError(f"{onnx_path} has inputs {sorted(inputs)}; the manifest says {spec.input_names}")
    config = builder.create_builder_config()
    if opts.fp16:
        config.set_flag(trt.BuilderFlag.FP16)
        if spec.attributes.get("upcast_attention"):
            _keep_attention_fp32(trt, network, config)
    if opts.refit:
        config.set_flag(trt.BuilderFlag.REFIT)
    if opts.workspace_gb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts.workspace_gb * (1 << 30)))
    config.builder_optimization_level = opts.optimization_level
    for profile in profiles:
        trt_profile = builder.create_optimization_profile()
        for name, (low, opt, high) in profile.shapes(spec).items():
            trt_profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(trt_profile)
    timing = _load_timing_cache(config, cache)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build the {spec.name} engine (see the log above)")
    with atomic_file(cache) as tmp:
        tmp.write_bytes(bytes(timing.serialize()))
    return bytes(plan)


def _keep_attention_fp32(trt, network, config) -> None:
    """Attention scores and softmax in fp32 (SD 2.x overflows fp16 there), the rest free to use fp16."""
    kept = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if _ATTENTION_SCORES.search(layer.name):
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)
            kept += 1
    config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
    log.info("keeping %d attention layers in fp32 (upcast_attention)", kept)


def timing_cache_path(cache: EngineCache, opts: TensorRTOptions, gpu: GpuInfo) -> Path:
    if opts.timing_cache is not None:
        return Path(opts.timing_cache)
    trt = tensorrt()
    tag = json_sha256({"tensorrt": trt.__version__, "gpu": asdict(gpu)})[:16]
    return cache.backend_dir(BACKEND) / f"timing-{tag}.cache"


def _load_timing_cache(config, path: Path):
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    if cache is None and data:
        log.warning("ignoring the unreadable timing cache %s", path)
        cache = config.create_timing_cache(b"")
    config.set_timing_cache(cache, False)
    return cache


_LOGGER = None


def trt_logger():
    """A TensorRT logger that forwards to `logging` (TensorRT's own prints straight to the terminal)."""
    global _LOGGER
    if _LOGGER is None:
        trt = tensorrt()

        class _Forward(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)

            def log(self, severity, msg: str) -> None:
                levels = trt.ILogger.Severity
                if severity in (levels.INTERNAL_ERROR, levels.ERROR):
                    log.error("TensorRT: %s", msg)
                elif severity == levels.WARNING:
                    log.warning("TensorRT: %s", msg)
                elif severity == levels.INFO:
                    log.debug("TensorRT: %s", msg)

        _LOGGER = _Forward()
    return _LOGGER
