"""What ControlNet's residual inputs cost a UNet call without ControlNet: the same UNet with and without them.

Since ControlNet, a UNet network takes the residuals ControlNets add inside it as inputs, fed as zeros when a
request has no ControlNet. This times both graphs side by side in one process, alternating call by call: the
artifact's UNet (with the inputs, fed zeros as the runtime feeds them) against the same weights exported without
them (the UNet as it was before), on each backend asked for, at the batch guidance runs (2 rows per image).

    python -m benchmarks.residual_overhead models/sd15-random artifacts/sd15-random-cpu [--size 256] [--calls 20]
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from sdrt.bench.stats import Summary
from sdrt.onnx_files import OnnxFile
from sdrt.spec import ComponentSpec, ShapeRanges

BACKENDS = ("onnxruntime", "openvino", "torch")


@dataclass(frozen=True)
class _Networks:
    """One UNet graph as the engines see a manifest (sdrt.engines.base.Networks)."""

    components: Mapping[str, ComponentSpec]
    ranges: ShapeRanges
    files: Mapping[str, OnnxFile] = field(default_factory=dict)
    source_sha256: str = ""


def without_residuals(spec: ComponentSpec) -> ComponentSpec:
    """The UNet's spec as it was before ControlNet: no residual inputs."""
    names = set(spec.attributes.get("residuals", ()))
    attributes = {k: v for k, v in spec.attributes.items() if k != "residuals"}
    return replace(spec, inputs=tuple(t for t in spec.inputs if t.name not in names), attributes=attributes)


def measure(
    model_dir: Path, artifact: Path, size: int = 256, calls: int = 20, backends: Sequence[str] = BACKENDS
) -> dict[str, Any]:
    """Median UNet call time with and without the residual inputs, per backend; their ratio."""
    from sdrt.engines import build_engines, load_engines
    from sdrt.export.onnx_export import export_component, trace_values
    from sdrt.manifest import read_manifest
    from sdrt.model_dir import ModelDir

    manifest = read_manifest(artifact)
    name = manifest.model_family.denoiser
    with_inputs = manifest.components[name]
    if not with_inputs.attributes.get("residuals"):
        raise ValueError(f"{artifact}'s {name} has no ControlNet residual inputs: nothing to compare")
    plain = without_residuals(with_inputs)
    model = ModelDir.open(model_dir)
    if model.weights_sha256() != manifest.source_sha256:
        raise ValueError(f"{model_dir} is not the model {artifact} was exported from")
    part = model.load_part(model.family.part_of(name))
    modules = {key: model.family.module(spec, part).eval() for key, spec in (("with", with_inputs), ("without", plain))}
    latent = size // manifest.ranges.latent_factor
    values = trace_values(with_inputs, manifest.ranges) | {"cfg_batch": 2, "batch": 2}
    values |= {"latent_height": latent, "latent_width": latent}
    feeds = with_inputs.sample_inputs(values, torch.Generator().manual_seed(0))
    for residual in with_inputs.attributes["residuals"]:
        feeds[residual] = torch.zeros_like(feeds[residual])  # what the runtime feeds without ControlNet
    plain_feeds = {t.name: feeds[t.name] for t in plain.inputs}
    out: dict[str, Any] = {"size": size, "rows": 2, "calls": calls, "backends": {}}
    with tempfile.TemporaryDirectory(prefix="sdrt-residual-overhead-") as scratch:
        plain_root = Path(scratch)
        plain_file = None
        for backend in backends:
            if backend == "torch":
                engines = {
                    "with": load_engines(model_dir, _Networks({name: with_inputs}, manifest.ranges), "torch",
                                         modules=lambda: {name: modules["with"]})[name],
                    "without": load_engines(model_dir, _Networks({name: plain}, manifest.ranges), "torch",
                                            modules=lambda: {name: modules["without"]})[name],
                }  # fmt: skip
            else:
                if plain_file is None:
                    plain_file = export_component(modules["without"], plain, manifest.ranges, plain_root / name)
                digest = manifest.source_sha256
                ours = _Networks({name: with_inputs}, manifest.ranges, {name: manifest.files[name]}, digest)
                theirs = _Networks({name: plain}, manifest.ranges, {name: plain_file}, f"{digest}-plain")
                build_engines(artifact, ours, backend)
                build_engines(plain_root, theirs, backend)
                engines = {
                    "with": load_engines(artifact, ours, backend)[name],
                    "without": load_engines(plain_root, theirs, backend)[name],
                }
            out["backends"][backend] = _time(
                {"with": lambda e=engines["with"]: e(feeds), "without": lambda e=engines["without"]: e(plain_feeds)},
                calls,
            )
            del engines
            gc.collect()
    return out


def _time(runs: Mapping[str, Callable[[], Any]], calls: int) -> dict[str, Any]:
    """Each run once to warm up, then `calls` of each, alternating (the order swapped every round)."""
    for run in runs.values():
        run()
    seconds: dict[str, list[float]] = {k: [] for k in runs}
    order = list(runs)
    for i in range(calls):
        for key in order if i % 2 == 0 else reversed(order):
            start = time.perf_counter()
            runs[key]()
            seconds[key].append(time.perf_counter() - start)
    medians = {k: Summary.of(v).median for k, v in seconds.items()}
    return {"median_seconds": medians, "ratio": medians["with"] / medians["without"], "seconds": seconds}


def markdown(result: Mapping[str, Any], command: str) -> str:
    lines = [
        f"UNet call without ControlNet, {result['size']}x{result['size']}, {result['rows']} rows (one image with "
        f"guidance), median of {result['calls']} calls each, alternating; the UNet with its residual inputs fed "
        f"zeros against the same weights exported without them (`{command}`):",
        "",
        "| backend | with residual inputs ms | without ms | ratio |",
        "|---|---:|---:|---:|",
    ]
    for backend, r in result["backends"].items():
        m = r["median_seconds"]
        lines.append(f"| {backend} | {m['with'] * 1000:.1f} | {m['without'] * 1000:.1f} | {r['ratio']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path, help="the diffusers model directory the artifact was exported from")
    parser.add_argument("artifact", type=Path, help="an artifact whose UNet takes ControlNet residuals")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    parser.add_argument("--calls", type=int, default=20, help="timed calls of each graph (default 20)")
    parser.add_argument("--backend", default=",".join(BACKENDS), help=f"comma-separated (default {','.join(BACKENDS)})")
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    args = parser.parse_args(argv)
    from sdrt.library_logging import quiet_third_party

    quiet_third_party()
    try:
        backends = tuple(b.strip() for b in args.backend.split(",") if b.strip())
        result = measure(args.model_dir, args.artifact, args.size, args.calls, backends)
    except ValueError as exc:
        print(f"residual_overhead: error: {exc}", file=sys.stderr)
        return 2
    command = "python -m benchmarks.residual_overhead " + " ".join(argv if argv is not None else sys.argv[1:])
    print(markdown(result, command))
    if args.json is not None:
        args.json.write_text(json.dumps(result | {"command": command}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
