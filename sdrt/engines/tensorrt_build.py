"""Building TensorRT plans: options, the parse-configure-build steps, the timing cache, the keyed plan cache.

Every network is built strongly typed, on TensorRT 10.x (by creation flag) and 11.x (always): the ONNX's
types are the law, so an fp16 artifact (`sdrt export --precision fp16`) runs in fp16 exactly where its
graph says and in fp32 where the export kept fp32 on purpose (the timestep embedding, SD 2.x attention
scores), and an fp32 artifact runs in fp32. TF32 (TensorRT's default for fp32 tensors) is switched off
unless `tf32=True`, so fp32 is fp32; the setting is part of the cache key. Where the two TensorRT
versions differ, `sdrt.engines.tensorrt_api` holds one code path each. See `sdrt.engines.tensorrt_backend`
for the run-time design. Imports tensorrt only inside functions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sdrt.engines.base import BuildRecord, Networks, indexed
from sdrt.engines.cache import EngineCache, ensure_engine, onnx_digests
from sdrt.engines.cuda_graphs import DEFAULT_MAX_GRAPHS
from sdrt.engines.tensorrt_api import SUPPORTED_MAJORS, TensorRTPath, api_path
from sdrt.engines.tensorrt_cache import BACKEND, PLAN_FILE, GpuInfo, cache_key
from sdrt.engines.tensorrt_profiles import PROFILE_MODES, Profile, build_profiles
from sdrt.files import atomic_file
from sdrt.hashing import json_sha256
from sdrt.onnx_files import OnnxFile
from sdrt.spec import ComponentSpec

if TYPE_CHECKING:
    import tensorrt as trt

log = logging.getLogger(__name__)

NEEDS = (
    f"the tensorrt backend needs TensorRT {'.x or '.join(str(m) for m in SUPPORTED_MAJORS)}.x "
    "(pip install 'sdrt[tensorrt]') and an NVIDIA GPU"
)


@dataclass(frozen=True)
class TensorRTOptions:
    """Options of the TensorRT backend. Precision is the artifact's: export with --precision fp16 for fp16 engines."""

    device: str = "cuda"  # "cuda[:N]": TensorRT runs on NVIDIA GPUs only
    tf32: bool = False  # let fp32 tensors use TF32 (faster, not fp32-exact; TensorRT's own default is on)
    profile: str = "both"  # optimization profiles: "static" (opt shapes only), "dynamic" (whole range), "both"
    refit: bool = False  # build refittable engines, so LoRAs can be switched without a rebuild
    workspace_gb: float = 0.0  # builder workspace limit in GiB; 0 leaves TensorRT's default (the GPU's memory)
    optimization_level: int = 3  # builder optimization level 0..5 (TensorRT's default is 3)
    timing_cache: str | None = None  # timing cache file; None: one per TensorRT version and GPU in the engine cache
    cache_dir: str | None = None  # engine cache outside the artifact (default $SDRT_CACHE_DIR, else the artifact)
    cuda_graphs: bool = True  # capture each shape's engine call into a CUDA graph (run-time only, not in the key)
    max_cuda_graphs: int = DEFAULT_MAX_GRAPHS  # graphs kept per engine, least recently used dropped (run-time)

    def __post_init__(self) -> None:
        if self.device.split(":")[0] != "cuda":
            raise ValueError(f"device {self.device!r}: {NEEDS}; use --device cuda")
        if self.profile not in PROFILE_MODES:
            raise ValueError(f"profile {self.profile!r} is not one of {', '.join(PROFILE_MODES)}")
        if self.workspace_gb < 0:
            raise ValueError(f"workspace_gb {self.workspace_gb} must be 0 (TensorRT's default) or positive")
        if not 0 <= self.optimization_level <= 5:
            raise ValueError(f"optimization_level {self.optimization_level} is outside 0..5")
        if self.max_cuda_graphs < 1:
            raise ValueError(f"max_cuda_graphs {self.max_cuda_graphs} must be at least 1")

    @property
    def torch_device(self) -> torch.device:
        return indexed(torch.device(self.device))

    def settings(self) -> dict[str, Any]:
        """The options a plan depends on (part of the cache key)."""
        return {
            "strongly_typed": True,
            "tf32": self.tf32,
            "profile": self.profile,
            "refit": self.refit,
            "workspace_gb": self.workspace_gb,
            "optimization_level": self.optimization_level,
        }


def tensorrt():
    """The tensorrt module; ValueError saying what is missing when TensorRT 10.x/11.x or a GPU is absent."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as exc:
        raise ValueError(f"{NEEDS}: the tensorrt Python package cannot be imported ({exc})") from exc
    try:
        api_path(trt.__version__)
    except ValueError as exc:
        raise ValueError(f"{NEEDS}: {exc}") from exc
    if not torch.cuda.is_available():
        raise ValueError(f"{NEEDS}: torch sees no CUDA GPU (or is a CPU build)")
    return trt


def gpu_info(device: torch.device) -> GpuInfo:
    major, minor = torch.cuda.get_device_capability(device)
    return GpuInfo(torch.cuda.get_device_name(device), f"{major}.{minor}")


def build_one(
    trt,
    gpu: GpuInfo,
    artifact: Path,
    manifest: Networks,
    name: str,
    opts: TensorRTOptions,
    force: bool = False,
    source: tuple[Path, OnnxFile] | None = None,
    engine_name: str | None = None,
) -> BuildRecord:
    """The plan of one component from the engine cache, built when missing, damaged or (`force`) refused by TensorRT.

    `trt` is the tensorrt module, `gpu` the GPU the plan is for (the current device). `source` (root, file)
    builds from another graph than the artifact's (the float32 copy of an fp16 network) under `engine_name`.
    """
    spec = manifest.components[name]
    root, onnx_file = source or (artifact, manifest.files[name])
    engine_name = engine_name or name
    profiles = build_profiles(spec, manifest.ranges, opts.profile)
    cache = EngineCache.for_artifact(artifact, opts.cache_dir)
    onnx = onnx_digests(root, engine_name, onnx_file)
    key = cache_key(onnx["onnx"], onnx["external_data"], opts.settings(), profiles, trt.__version__, gpu)

    def build(tmp: Path) -> dict:
        timing = timing_cache_path(cache, opts, trt.__version__, gpu)
        plan = build_plan(trt, api_path(trt.__version__), root / onnx_file.path, spec, profiles, opts, timing)
        (tmp / PLAN_FILE).write_bytes(plan)
        return {"settings": opts.settings(), "profiles": [p.to_json() for p in profiles]}

    if force:
        log.warning("rebuilding the %s engine: TensorRT could not deserialize it", engine_name)
    expected = {"tensorrt": trt.__version__, "gpu": gpu.name, "compute_capability": gpu.compute_capability}
    precision = spec.attributes.get("precision", "fp32")
    what = f"TensorRT engine for {engine_name} ({precision} graph, {opts.profile} profiles, tf32 {opts.tf32})"
    engine = ensure_engine(cache, BACKEND, engine_name, key, expected, build, what=what, rebuild=force)
    return BuildRecord(engine_name, key, str(engine.path), reused=engine.reused, seconds=engine.seconds)


def build_plan(
    trt, path: TensorRTPath, onnx_path: Path, spec: ComponentSpec, profiles: list[Profile], opts: TensorRTOptions,
    timing_cache: Path,
) -> bytes:  # fmt: skip
    """Parse the ONNX into a strongly typed network, configure the builder, build; the serialized plan."""
    logger = trt_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(path.network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # reads external weights beside the file
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ValueError(f"TensorRT cannot parse {onnx_path}: {errors}")
    inputs = {network.get_input(i).name for i in range(network.num_inputs)}
    if inputs != set(spec.input_names):
        raise ValueError(f"{onnx_path} has inputs {sorted(inputs)}; the manifest says {spec.input_names}")
    config = builder.create_builder_config()
    configure(trt, config, opts)
    for profile in profiles:
        add_profile(config, optimization_profile(builder, spec, profile), spec, profile)
    timing = load_timing_cache(config, timing_cache)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ValueError(f"TensorRT failed to build the {spec.name} engine from {onnx_path} (see its log above)")
    with atomic_file(timing_cache) as tmp:
        tmp.write_bytes(bytes(timing.serialize()))
    return bytes(plan)


def configure(trt, config: trt.IBuilderConfig, opts: TensorRTOptions) -> None:
    """Builder flags: no weak typing ever (the network is strongly typed), TF32 only when asked, refit."""
    if not opts.tf32:
        config.clear_flag(trt.BuilderFlag.TF32)  # on by default; off, fp32 layers compute in fp32
    if opts.refit:
        config.set_flag(trt.BuilderFlag.REFIT)
    if opts.workspace_gb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts.workspace_gb * (1 << 30)))
    config.builder_optimization_level = opts.optimization_level


def optimization_profile(builder: trt.Builder, spec: ComponentSpec, profile: Profile) -> trt.IOptimizationProfile:
    """One IOptimizationProfile; ValueError naming the component, input and shapes TensorRT refused."""
    trt_profile = builder.create_optimization_profile()
    for name, (low, opt, high) in profile.shapes(spec).items():
        guarded(
            lambda name=name, low=low, opt=opt, high=high: trt_profile.set_shape(name, low, opt, high),
            f"{spec.name}: TensorRT refused the {profile.kind} profile of input {name} "
            f"(min {list(low)}, opt {list(opt)}, max {list(high)})",
        )
    return trt_profile


def add_profile(
    config: trt.IBuilderConfig, trt_profile: trt.IOptimizationProfile, spec: ComponentSpec, profile: Profile
) -> int:
    """Add an optimization profile to the builder config; ValueError naming it when TensorRT finds it invalid.

    `add_optimization_profile` does not raise: it returns -1 (and logs an error) for a profile it cannot use.
    """
    index = config.add_optimization_profile(trt_profile)
    if index < 0:
        shapes = "; ".join(
            f"{name} min {list(low)} opt {list(opt)} max {list(high)}"
            for name, (low, opt, high) in profile.shapes(spec).items()
        )
        raise ValueError(f"{spec.name}: TensorRT found its {profile.kind} optimization profile invalid ({shapes})")
    return index


def guarded(call: Callable[[], Any], what: str) -> Any:
    """Run a TensorRT call that reports failure by raising RuntimeError or returning False; ValueError saying `what`."""
    try:
        result = call()
    except RuntimeError as exc:
        raise ValueError(f"{what}: {exc}") from exc
    if result is False:
        raise ValueError(f"{what} (see TensorRT's log above)")
    return result


def timing_cache_path(cache: EngineCache, opts: TensorRTOptions, version: str, gpu: GpuInfo) -> Path:
    if opts.timing_cache is not None:
        return Path(opts.timing_cache)
    tag = json_sha256({"tensorrt": version, "gpu": asdict(gpu)})[:16]
    return cache.backend_dir(BACKEND) / f"timing-{tag}.cache"


def load_timing_cache(config: trt.IBuilderConfig, path: Path) -> trt.ITimingCache:
    """The timing cache to build with: `path`'s, or a fresh one when TensorRT cannot read or refuses it.

    `set_timing_cache(cache, ignore_mismatch=False)` returns False for a cache made on another device; its
    timings would mislead the builder, so it is replaced (and overwritten after the build) rather than kept.
    """
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    if cache is None and data:
        log.warning("ignoring the unreadable timing cache %s; starting a new one", path)
        cache = config.create_timing_cache(b"")
    if not config.set_timing_cache(cache, False):
        if not data:
            raise ValueError(f"TensorRT refused a new, empty timing cache for {path}")
        log.warning("TensorRT refused the timing cache %s (made on another GPU or TensorRT); starting a new one", path)
        cache = config.create_timing_cache(b"")
        guarded(lambda: config.set_timing_cache(cache, False), f"TensorRT refused a new timing cache for {path}")
    return cache


def trt_logger(trt):
    """The logger sdrt gives TensorRT: its own C++ one showing warnings and errors, or with --verbose a forwarder.

    A logger written in Python takes the GIL for every message TensorRT sends it, VERBOSE ones included
    (thousands per build). So, as NVIDIA's demos do, TensorRT's built-in `Logger` filters by severity in
    C++ and prints what passes (warnings and errors); when sdrt's log shows debug messages (`--verbose`),
    every message is forwarded to `logging` instead (errors as errors, warnings as warnings, the rest as debug).
    """
    verbose = log.isEnabledFor(logging.DEBUG)
    cached = _LOGGERS.get((id(trt), verbose))
    if cached is not None and cached[0] is trt:
        return cached[1]
    if not verbose:
        logger = trt.Logger(trt.ILogger.Severity.WARNING)
    else:

        class _Forward(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)

            def log(self, severity, msg: str) -> None:
                levels = trt.ILogger.Severity
                if severity in (levels.INTERNAL_ERROR, levels.ERROR):
                    log.error("TensorRT: %s", msg)
                elif severity == levels.WARNING:
                    log.warning("TensorRT: %s", msg)
                else:
                    log.debug("TensorRT: %s", msg)

        logger = _Forward()
    _LOGGERS[(id(trt), verbose)] = (trt, logger)  # TensorRT needs a logger to outlive every builder and runtime
    return logger


_LOGGERS: dict[tuple[int, bool], tuple[Any, Any]] = {}
