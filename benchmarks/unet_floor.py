"""The CPU UNet near its floor: levers on one UNet call, each alone and together, side by side in one run.

Each variant runs in a fresh process (so one session's memory and thread pools never touch another's), loads
the artifact's UNet its own way, runs one warm-up call and `--calls` timed calls at one shape (default: 256x256,
one image with guidance = 2 rows, 77 text tokens, ControlNet residuals fed zeros as the runtime feeds them);
rounds interleave the variants, the order rotated each round, so drift in the machine's load hits all alike.
Reported: median ms per call, the fraction of the machine's FMA peak (sdrt.bench.peak), the process's peak RSS,
the load average around it, and each variant's largest difference from the first variant's output.

    python -m benchmarks.unet_floor /work/bench/artifacts/sd15-random-cpu --json benchmarks/results/unet-floor.json
    python -m benchmarks.unet_floor ARTIFACT --profile ort-fused   # per-op-type time of one call (ORT profiler)

Variants (VARIANTS): ONNX Runtime as sdrt runs it today (level "all": NCHWc layout; threads do not spin after a
run), with spinning threads, at level "extended" (no NCHWc layout transform), on the graph ONNX Runtime's
transformer optimizer fuses for UNets (CPU kernels only: Attention, MultiHeadAttention, SkipLayerNormalization,
Gelu; see sdrt.engines.ort_fusion), and combinations; OpenVINO with the LATENCY hint (sdrt's), THROUGHPUT, and
LATENCY with one stream of two threads set explicitly. Every variant computes in fp32.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RSS_LIMIT = 7 * 1024**3  # a child past this exits (the machine is shared; no swap)
FUSED_CACHE = Path(tempfile.gettempdir()) / "sdrt-unet-floor"  # the fused graph (a copy of the weights: GBs)


@dataclass(frozen=True)
class Variant:
    """One way of running the UNet."""

    backend: str  # "onnxruntime" or "openvino"
    what: str  # one line for the table
    options: Mapping[str, Any] = field(default_factory=dict)


VARIANTS = {
    "ort": Variant("onnxruntime", "ONNX Runtime as sdrt runs it (level all, no spinning)", {}),
    "ort-spin": Variant("onnxruntime", "+ threads spin between ops' runs", {"spin": True}),
    "ort-extended": Variant("onnxruntime", "level extended: no NCHWc layout", {"level": "extended"}),
    "ort-fused": Variant("onnxruntime", "transformer optimizer's UNet fusions (CPU kernels)", {"fused": True}),
    "ort-fused-spin": Variant("onnxruntime", "fusions + spinning", {"fused": True, "spin": True}),
    "ort-fused-spin-extended": Variant(
        "onnxruntime", "fusions + spinning + level extended", {"fused": True, "spin": True, "level": "extended"}
    ),
    "ov-latency": Variant("openvino", "OpenVINO, LATENCY hint (sdrt's)", {"PERFORMANCE_HINT": "LATENCY"}),
    "ov-throughput": Variant("openvino", "OpenVINO, THROUGHPUT hint", {"PERFORMANCE_HINT": "THROUGHPUT"}),
    "ov-1stream": Variant(
        "openvino",
        "OpenVINO, 1 stream x 2 threads, no pinning",
        {"NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": "2", "ENABLE_CPU_PINNING": "NO"},
    ),
}


def _guard() -> None:
    """Exit this process when its RSS passes RSS_LIMIT (checked every 0.2 s)."""
    import psutil

    me = psutil.Process()

    def watch() -> None:
        while True:
            if me.memory_info().rss > RSS_LIMIT:
                print(json.dumps({"error": f"RSS passed {RSS_LIMIT / 1024**3:.0f} GiB"}), flush=True)
                os._exit(3)
            time.sleep(0.2)

    threading.Thread(target=watch, daemon=True).start()


def _inputs(artifact: Path, size: int, rows: int) -> tuple[dict[str, Any], dict[str, int]]:
    """The UNet's inputs at this shape (numpy, fixed seed; residuals zero) and the symbol values."""
    import torch

    from sdrt.manifest import read_manifest

    manifest = read_manifest(artifact)
    spec = manifest.components[manifest.model_family.denoiser]
    latent = size // manifest.ranges.latent_factor
    values = {symbol: r.opt for symbol, r in manifest.ranges.dims().items()}
    values |= {"cfg_batch": rows, "batch": rows, "latent_height": latent, "latent_width": latent}
    values["text_sequence"] = min(77, manifest.ranges.dims()["text_sequence"].max)
    feeds = spec.sample_inputs(values, torch.Generator().manual_seed(0))
    for residual in spec.attributes.get("residuals", ()):
        feeds[residual] = torch.zeros_like(feeds[residual])
    return {k: v.numpy() for k, v in feeds.items()}, values


def _unet_onnx(artifact: Path) -> Path:
    from sdrt.manifest import read_manifest

    manifest = read_manifest(artifact)
    return artifact / manifest.files[manifest.model_family.denoiser].path


def _ort_session(artifact: Path, options: Mapping[str, Any], profile: str | None = None):
    import onnxruntime as ort

    from sdrt.engines.ort_fusion import fused_unet

    source = _unet_onnx(artifact)
    if options.get("fused"):
        source = fused_unet(source, FUSED_CACHE)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 0
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if options.get("spin") else "0")
    level = options.get("level", "all")
    so.graph_optimization_level = {
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    so.log_severity_level = 3
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = profile
    session = ort.InferenceSession(str(source), so, providers=["CPUExecutionProvider"])
    return lambda feeds: session.run(None, feeds)[0], session


def _ov_model(artifact: Path, options: Mapping[str, Any], feeds: Mapping[str, Any]):
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(_unet_onnx(artifact)))
    model.reshape({name: ov.PartialShape(list(array.shape)) for name, array in feeds.items()})
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", **options})
    request = compiled.create_infer_request()

    def call(inputs):
        request.infer(dict(inputs))
        return request.get_output_tensor(0).data.copy()

    return call


def child(artifact: Path, name: str, size: int, rows: int, calls: int, out_npy: Path | None) -> dict[str, Any]:
    """Load one variant, warm up, time `calls` calls; the result as JSON-ready data."""
    import numpy as np

    _guard()
    variant = VARIANTS[name]
    feeds, _ = _inputs(artifact, size, rows)
    start = time.perf_counter()
    call = (
        _ort_session(artifact, variant.options)[0]
        if variant.backend == "onnxruntime"
        else _ov_model(artifact, variant.options, feeds)
    )
    load = time.perf_counter() - start
    output = call(feeds)
    seconds, cpu_seconds = [], []
    for _ in range(calls):
        t, cpu = time.perf_counter(), time.process_time()
        call(feeds)
        seconds.append(time.perf_counter() - t)
        cpu_seconds.append(time.process_time() - cpu)
    if out_npy is not None:
        np.save(out_npy, output)
    return {
        "load_seconds": load,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,  # all threads of the process: on a shared machine, the work a call took
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def profile(artifact: Path, name: str, size: int, rows: int) -> dict[str, Any]:
    """Per-op-type time of one call (after a warm-up) from ONNX Runtime's profiler."""
    variant = VARIANTS[name]
    if variant.backend != "onnxruntime":
        raise ValueError(f"--profile takes an ONNX Runtime variant, not {name} ({variant.backend})")
    feeds, _ = _inputs(artifact, size, rows)
    with tempfile.TemporaryDirectory(prefix="sdrt-unet-profile-") as scratch:
        call, session = _ort_session(artifact, variant.options, profile=str(Path(scratch) / "profile"))
        call(feeds)
        call(feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    runs = [e for e in events if e.get("name") == "model_run"]
    last_run = runs[-1]
    begin, end = last_run["ts"], last_run["ts"] + last_run["dur"]
    by_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and begin <= e["ts"] <= end:
            op = e.get("args", {}).get("op_name", "?")
            by_op[op] = by_op.get(op, 0.0) + e["dur"] / 1e6
    total = last_run["dur"] / 1e6
    return {
        "variant": name,
        "run_seconds": total,
        "op_seconds": dict(sorted(by_op.items(), key=lambda kv: -kv[1])),
        "op_share": {k: v / total for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])},
    }


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def measure(artifact: Path, names: list[str], size: int, rows: int, calls: int, rounds: int) -> dict[str, Any]:
    """Every variant in fresh processes, `rounds` interleaved rounds; medians, peak fraction, RSS, output diffs."""
    import numpy as np

    from sdrt.bench.peak import fma_peak, fraction_of_peak, onnx_flops
    from sdrt.bench.stats import Summary

    feeds, values = _inputs(artifact, size, rows)
    flops = onnx_flops(_unet_onnx(artifact), {k: v.shape for k, v in feeds.items()})
    peak = fma_peak()
    if any(VARIANTS[n].options.get("fused") for n in names):  # fuse once here, so no child's load time holds it
        from sdrt.engines.ort_fusion import fused_unet

        fused_unet(_unet_onnx(artifact), FUSED_CACHE)
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory(prefix="sdrt-unet-floor-") as scratch:
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                out_npy = Path(scratch) / f"{name}.npy"
                cmd = [sys.executable, "-m", "benchmarks.unet_floor", str(artifact), "--child", name,
                       "--size", str(size), "--rows", str(rows), "--calls", str(calls)]  # fmt: skip
                if r == 0:
                    cmd += ["--out-npy", str(out_npy)]
                before = _load()
                proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
                lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
                result = json.loads(lines[-1]) if lines else {"error": proc.stderr[-2000:]}
                if proc.returncode and "error" not in result:
                    result = {"error": f"exit {proc.returncode}: {proc.stderr[-2000:]}"}
                result |= {"round": r, "load_average_before": before, "load_average_after": _load()}
                print(f"round {r + 1}/{rounds} {name}: {_brief(result)}", file=sys.stderr, flush=True)
                runs[name].append(result)
        reference = np.load(Path(scratch) / f"{names[0]}.npy") if (Path(scratch) / f"{names[0]}.npy").exists() else None
        diffs = {}
        for name in names:
            path = Path(scratch) / f"{name}.npy"
            if reference is not None and path.exists():
                diffs[name] = float(np.abs(np.load(path) - reference).max())
    table = {}
    for name in names:
        ok = [x for x in runs[name] if "error" not in x]
        seconds = [s for x in ok for s in x["seconds"]]
        if not seconds:
            table[name] = {"error": runs[name][0].get("error")}
            continue
        median = Summary.of(seconds).median
        cpu = [s for x in ok for s in x.get("cpu_seconds", [])]
        cpu_median = Summary.of(cpu).median if cpu else None
        table[name] = {
            "what": VARIANTS[name].what,
            "median_ms": median * 1000,
            "min_ms": min(seconds) * 1000,
            "fraction_of_peak": fraction_of_peak(flops, median, peak),
            "best_fraction_of_peak": fraction_of_peak(flops, min(seconds), peak),
            # the same work counted in CPU time: FLOPs / CPU-seconds against one core's peak, which the machine's
            # other load does not inflate (spinning threads' CPU time counts: it is work the cores did)
            "median_cpu_seconds": cpu_median,
            "fraction_of_peak_by_cpu_time": None
            if cpu_median is None
            else flops / cpu_median / (peak.flops_per_second / peak.cores),
            "peak_rss_bytes": max(x["peak_rss_bytes"] for x in ok),
            "load_seconds": [x["load_seconds"] for x in ok],
            "max_abs_diff_vs_first": diffs.get(name),
        }
    return {
        "artifact": str(artifact),
        "size": size,
        "rows": rows,
        "symbols": values,
        "calls_per_process": calls,
        "rounds": rounds,
        "unet_flops_per_call": flops,
        "fma_peak": peak.to_json(),
        "variants": table,
        "runs": runs,
    }


def _brief(result: Mapping[str, Any]) -> str:
    if "error" in result:
        return f"failed: {str(result['error'])[-300:]}"
    s = sorted(result["seconds"])
    return (
        f"median {s[len(s) // 2] * 1000:.0f} ms, load {result['load_seconds']:.0f} s, "
        f"RSS {result['peak_rss_bytes'] / 1024**3:.1f} GiB, load avg {result['load_average_before']}"
    )


def markdown(result: Mapping[str, Any], command: str) -> str:
    peak = result["fma_peak"]
    lines = [
        f"UNet call at {result['size']}x{result['size']}, {result['rows']} rows, "
        f"{result['unet_flops_per_call'] / 1e12:.3f} TFLOP; {peak['method']}. Fresh process per variant, "
        f"{result['rounds']} interleaved rounds x {result['calls_per_process']} calls (`{command}`):",
        "",
        "| variant | what | median ms | best ms | % of FMA peak (median) | CPU s per call | % of peak by CPU time "
        "| peak RSS GiB | max abs diff vs first |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, v in result["variants"].items():
        if "error" in v:
            lines.append(f"| {name} | failed: {str(v['error'])[-120:]} | | | | | | | |")
            continue
        diff = "" if v["max_abs_diff_vs_first"] is None else f"{v['max_abs_diff_vs_first']:.2e}"
        cpu = v.get("median_cpu_seconds")
        by_cpu = "" if cpu is None else f"{v['fraction_of_peak_by_cpu_time'] * 100:.0f}%"
        lines.append(
            f"| {name} | {v['what']} | {v['median_ms']:.0f} | {v['min_ms']:.0f} | {v['fraction_of_peak'] * 100:.0f}% "
            f"| {'' if cpu is None else f'{cpu:.2f}'} | {by_cpu} | {v['peak_rss_bytes'] / 1024**3:.1f} | {diff} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path, help="an sdrt artifact with a UNet ONNX graph")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated of {', '.join(VARIANTS)}")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    parser.add_argument("--rows", type=int, default=2, help="UNet batch rows (default 2: one image with guidance)")
    parser.add_argument("--calls", type=int, default=3, help="timed calls per process (default 3)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of fresh processes (default 2)")
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    parser.add_argument("--profile", default=None, help="profile one call of this ONNX Runtime variant instead")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out-npy", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    names = [n for n in args.variants.split(",") if n]
    unknown = [n for n in names + ([args.child] if args.child else []) if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    if args.child:
        print(json.dumps(child(args.artifact, args.child, args.size, args.rows, args.calls, args.out_npy)))
        return 0
    if args.profile:
        result = profile(args.artifact, args.profile, args.size, args.rows)
        result["load_average"] = _load()
    else:
        result = measure(args.artifact, names, args.size, args.rows, args.calls, args.rounds)
        print(markdown(result, "python -m benchmarks.unet_floor " + " ".join(argv or sys.argv[1:])))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    else:
        print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
