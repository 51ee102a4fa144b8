"""How close a UNet call comes to the CPU's floor: the FLOPs of one call and the machine's FMA peak.

FLOPs are counted from the ONNX graph the engines run (Conv, ConvTranspose, MatMul and Gemm, one multiply-add
= 2 FLOPs, with ONNX Runtime's symbolic shape inference giving every tensor's shape at the call's input
shapes), or from a torch module with torch's own `FlopCounterMode`; the two agree on sdrt's UNets (tested).
Element-wise work (normalization, activations, softmax) is not counted: it is a few percent of the FLOPs.

The FMA peak is cores x clock x FP32 FLOPs per cycle from the CPU's flags (nominal), checked against a
measured ceiling: the best single-thread sgemm (torch.mm, 256-1024 square) times the cores. Under boost clocks the
measured one is higher than the nominal one; the peak is the higher of the two, so a fraction of it never
flatters the engine.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from sdrt.bench.records import Record

# FP32 FLOPs per cycle per core: 2 FMA pipes x lanes x 2 (multiply and add)
FMA_PIPES = 2
SGEMM_SIZES = (256, 512, 1024)  # the measured ceiling's square matrices (in cache: the FMA units, not memory, bound)
SGEMM_FLOP_BUDGET = 60e9  # about 0.6 s of sgemm on a core doing 100 GFLOP/s


@dataclass(frozen=True)
class FmaPeak:
    """The machine's FP32 FMA peak and how it was found."""

    flops_per_second: float  # the peak fractions are taken of: max(nominal, measured)
    cores: int  # cores the engines use (logical CPUs)
    nominal: float | None  # cores x clock x flops_per_cycle; None where the clock or flags are unknown
    clock_hz: float | None  # the clock /proc/cpuinfo reports (under a hypervisor: the nominal, not the boost one)
    flops_per_cycle: int | None  # per core, from the flags (AVX-512 on AMD family 25 runs on 256-bit pipes)
    measured: float  # cores x measured_core
    measured_core: float  # best single-thread sgemm FLOP/s (measured_core_sgemm)

    @property
    def method(self) -> str:
        nominal = (
            "no nominal figure (clock or flags unknown)"
            if self.nominal is None
            else f"nominal {self.cores} cores x {self.clock_hz / 1e9:.2f} GHz x {self.flops_per_cycle} FLOP/cycle = "
            f"{self.nominal / 1e9:.0f} GFLOP/s"
        )
        return (
            f"FMA peak {self.flops_per_second / 1e9:.0f} GFLOP/s, the higher of {nominal} and the measured "
            f"{self.cores} x best single-thread sgemm {self.measured_core / 1e9:.0f} = {self.measured / 1e9:.0f} "
            "GFLOP/s"
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"method": self.method}


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty elsewhere)."""
    fields: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return fields
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def flops_per_cycle(flags: set[str], vendor: str = "", family: int | None = None) -> int | None:
    """FP32 FLOPs per cycle per core from the CPU flags: 2 FMA pipes x SIMD lanes x 2; None without FMA."""
    if "fma" not in flags:
        return None
    lanes = 16 if "avx512f" in flags else 8
    if vendor == "AuthenticAMD" and family is not None and family <= 25:
        lanes = 8  # Zen 4 (family 25) and earlier split AVX-512 into two 256-bit halves
    return FMA_PIPES * lanes * 2


def measured_core_sgemm(sizes: tuple[int, ...] = SGEMM_SIZES, flop_budget: float = SGEMM_FLOP_BUDGET) -> float:
    """The best single-thread sgemm FLOP/s (torch.mm) over square sizes: a lower bound on one core's FMA peak.

    Best of many short runs: on a shared machine a run that got its core to itself is the one that counts.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    best = 0.0
    try:
        g = torch.Generator().manual_seed(0)
        for size in sizes:
            a, b = torch.randn(size, size, generator=g), torch.randn(size, size, generator=g)
            out = torch.empty(size, size)
            torch.mm(a, b, out=out)
            for _ in range(max(3, int(flop_budget / len(sizes) / (2 * size**3)))):
                start = time.perf_counter()
                torch.mm(a, b, out=out)
                best = max(best, 2 * size**3 / (time.perf_counter() - start))
    finally:
        torch.set_num_threads(threads)
    return best


@functools.cache
def fma_peak(cores: int | None = None) -> FmaPeak:
    """This machine's FP32 FMA peak (measured once per process)."""
    cores = cores or os.cpu_count() or 1
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    try:
        family = int(info["cpu family"])
    except (KeyError, ValueError):
        family = None
    per_cycle = flops_per_cycle(flags, info.get("vendor_id", ""), family)
    try:
        clock = float(info["cpu MHz"]) * 1e6
    except (KeyError, ValueError):
        clock = None
    nominal = None if per_cycle is None or clock is None else cores * clock * per_cycle
    core = measured_core_sgemm()
    return FmaPeak(max(nominal or 0.0, cores * core), cores, nominal, clock, per_cycle, cores * core, core)


def _count(op: str, node, shape) -> int:
    """FLOPs of one Conv / ConvTranspose / MatMul / Gemm node (2 per multiply-add); 0 for other ops."""
    if op == "Conv":
        weight, out = shape(node.input[1]), shape(node.output[0])
        return 2 * math.prod(out) * math.prod(weight[1:])  # weight: (Cout, Cin/groups, kh, kw)
    if op == "ConvTranspose":
        x, weight = shape(node.input[0]), shape(node.input[1])
        return 2 * math.prod(x) * math.prod(weight[1:])  # weight: (Cin, Cout/groups, kh, kw)
    if op == "MatMul":
        return 2 * math.prod(shape(node.output[0])) * shape(node.input[0])[-1]
    if op == "Gemm":
        a = shape(node.input[0])
        trans_a = any(attr.name == "transA" and attr.i for attr in node.attribute)
        return 2 * math.prod(shape(node.output[0])) * (a[0] if trans_a else a[1])
    return 0


COUNTED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def onnx_flops(path: str | os.PathLike, shapes: Mapping[str, tuple[int, ...]]) -> int:
    """FLOPs of one run of the ONNX graph at `path` with inputs of these shapes (weights are not read)."""
    resolved = Path(path).resolve()
    stat = resolved.stat()
    key = tuple(sorted((name, tuple(shape)) for name, shape in shapes.items()))
    return _onnx_flops(str(resolved), stat.st_size, stat.st_mtime_ns, key)


@functools.lru_cache(maxsize=64)
def _onnx_flops(path: str, size: int, mtime: int, shapes: tuple) -> int:
    """onnx_flops, cached per graph file (path, size, mtime) and input shapes."""
    import onnx
    from onnx import helper
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    model = onnx.load(path, load_external_data=False)
    graph = model.graph
    given = dict(shapes)
    for value in graph.input:
        if value.name not in given:
            continue
        dims = value.type.tensor_type.shape.dim
        if len(dims) != len(given[value.name]):
            raise ValueError(f"input {value.name} has rank {len(dims)}, not that of shape {given[value.name]}")
        for dim, size_ in zip(dims, given[value.name], strict=True):
            dim.Clear()
            dim.dim_value = size_
    # External weights become inputs of their shape: shape inference then never opens the (gigabyte) data file.
    external = [t for t in graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    for tensor in external:
        graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
        graph.initializer.remove(tensor)
    inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    known: dict[str, list] = {}
    for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        known[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
    for tensor in inferred.graph.initializer:
        known[tensor.name] = list(tensor.dims)

    def shape(name: str) -> list[int]:
        found = known.get(name)
        if found is None or any(d is None for d in found):
            raise ValueError(f"{path}: the shape of {name!r} is unknown after shape inference ({found})")
        return found

    return sum(_count(node.op_type, node, shape) for node in inferred.graph.node if node.domain in ("", "ai.onnx"))


def torch_flops(module: torch.nn.Module, *args: Any, **kwargs: Any) -> int:
    """FLOPs of one call of a torch module, counted by torch.utils.flop_counter.FlopCounterMode.

    Attention runs SDPA's math path: FlopCounterMode has no formula for the CPU flash kernel, but counts its matmuls.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad(), sdpa_kernel([SDPBackend.MATH]):
        module(*args, **kwargs)
    return counter.get_total_flops()


def fraction_of_peak(flops: int, seconds: float, peak: FmaPeak) -> float:
    """The share of the FMA peak a call of `flops` taking `seconds` reaches."""
    return flops / seconds / peak.flops_per_second


def unet_shapes(artifact: str | os.PathLike, width: int, height: int, rows: int) -> dict[str, tuple[int, ...]]:
    """The artifact's denoiser input shapes for `rows` batch rows at this image size (one 77-token text chunk)."""
    from sdrt.manifest import read_manifest

    manifest = read_manifest(artifact)
    spec = manifest.components[manifest.model_family.denoiser]
    dims = manifest.ranges.dims()
    values = {symbol: r.opt for symbol, r in dims.items()}
    values |= {"cfg_batch": rows, "batch": rows}
    values |= {"latent_height": height // manifest.ranges.latent_factor}
    values |= {"latent_width": width // manifest.ranges.latent_factor}
    if "text_sequence" in dims:
        values["text_sequence"] = max(dims["text_sequence"].min, min(77, dims["text_sequence"].max))
    return {t.name: t.concrete(values) for t in spec.inputs}


def annotate(records: Sequence[Record], artifact: str | os.PathLike) -> None:
    """Give each timed CPU record its UNet call's FLOPs and fraction of the FMA peak (`Record.unet_peak`)."""
    from sdrt.manifest import read_manifest

    manifest = read_manifest(artifact)
    graph = Path(artifact) / manifest.files[manifest.model_family.denoiser].path
    for record in records:
        s = record.scenario
        if s.device != "cpu" or not record.ok or s.controlnets:  # (a ControlNet's own calls are not counted)
            continue
        # a DeepCache run's calls mix whole-UNet and shallow ones: its whole (full-network) calls do the UNet's FLOPs
        seconds = record.summaries()["unet_full_per_call" if s.deep_cache else "unet_per_call"].median
        if seconds <= 0:
            continue
        rows = s.batch * (2 if s.guidance_scale > 1 else 1)
        flops = onnx_flops(graph, unet_shapes(artifact, s.width, s.height, rows))
        peak = fma_peak()
        record.unet_peak = {
            "flops_per_call": flops,
            "fraction": fraction_of_peak(flops, seconds, peak),
            "fma_peak": peak.to_json(),
        }


def peak_line(group: Sequence[Record]) -> str | None:
    """One line for a scenario group's table: each contender's UNet call as a share of the FMA peak."""
    marked = [r for r in group if r.unet_peak]
    if not marked:
        return None
    first = marked[0].unet_peak
    shares = ", ".join(f"{r.scenario.contender} {r.unet_peak['fraction'] * 100:.0f}%" for r in marked)
    return (
        f"UNet per call as a share of the CPU's FMA peak ({first['flops_per_call'] / 1e9:.1f} GFLOP per call; "
        "DeepCache runs: their whole-UNet calls): "
        f"{shares}; {first['fma_peak']['method']}"
    )
