"""The two ready suites, built on `sdrt bench`'s code: `python -m benchmarks.suite cpu|gpu [--quick]`.

Each suite makes its random-weight models and artifacts when they are missing or stale (kept under
models/ and artifacts/ for the next run), runs `run_bench` on each, and writes
benchmarks/results/<machine>.json (every scenario's record), <machine>.png (the chart) and
<machine>.md (the tables), and puts those tables into benchmarks/README.md between its markers.
`--quick` is a smoke test of the same path: the tiny models, 64x64, 2 steps, one run, results under
outputs/bench-quick/ and the README left alone.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from sdrt.bench import BASELINES, SDRT_BACKENDS, BenchConfig, BenchResult, format_table, plot, run_bench
from sdrt.bench.machine import machine_info, machine_slug, versions
from sdrt.export import ExportConfig
from sdrt.files import atomic_file
from sdrt.runtime.deep_cache import DeepCache

log = logging.getLogger("benchmarks.suite")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "benchmarks" / "README.md"
SCHEDULER = "dpmpp_2m"


@dataclass(frozen=True)
class SuiteModel:
    """One model of a suite: how to make it and what to time on it."""

    name: str  # directory under models/ (its artifact: artifacts/<name>-<suite>)
    preset: str  # benchmarks.models preset
    export: ExportConfig | None  # the artifact's export settings; None: time the model directory only
    sizes: tuple[tuple[int, int], ...]  # (width, height)
    batches: tuple[int, ...]  # images per generation
    steps: int  # denoising steps
    runs: int  # timed runs per scenario
    warmup: int  # untimed runs per contender first
    refiner: str | None = None  # benchmarks.models preset of an SDXL refiner run after the base (models/<preset>)
    refiner_switch_at: float | None = None  # with a refiner: share of the steps the base runs
    mode: str = "txt2img"  # "variation" for unCLIP models
    baselines: tuple[str, ...] = BASELINES  # diffusers baselines to time beside sdrt
    backends: tuple[str, ...] = SDRT_BACKENDS  # sdrt backends to time
    # benchmarks.models presets of ControlNets (the i-th drawn with seed i, at models/<preset>-<i>), and how many
    # of them each image uses, one scenario per count (0: the model without ControlNet, in the same run)
    controlnets: tuple[str, ...] = ()
    control_counts: tuple[int, ...] = (0,)
    deep_caches: tuple[DeepCache, ...] = ()  # DeepCache settings timed beside exact on every sdrt backend

    @property
    def label(self) -> str:
        label = self.name + (f" + {self.refiner} from {self.refiner_switch_at:g}" if self.refiner else "")
        return label + (" + ControlNet" if self.controlnets else "")


def suites(artifact_on_gpu: bool) -> dict[str, tuple[SuiteModel, ...]]:
    """The suites; the GPU one exports SD 1.5 only when a backend can run the export there (else nothing would)."""
    # the SD 1.5 and SDXL-small artifacts carry DeepCache's branch-0 graphs (`--deep-cache 0`) for the rows below
    gpu_sd15 = (
        ExportConfig(max_batch=8, min_size=512, max_size=512, opt_size=512, deep_cache=(0,))
        if artifact_on_gpu
        else None
    )
    cpu_sd15 = ExportConfig(max_batch=1, min_size=256, max_size=512, opt_size=256, deep_cache=(0,))
    cpu_sdxl_small = ExportConfig(max_batch=1, min_size=256, max_size=512, opt_size=256, deep_cache=(0,))
    demo = ExportConfig(max_batch=4, min_size=64, max_size=256, opt_size=128)
    # DeepCache (issue 23): exact against intervals 3 and 5 at branch 0, in one run, on onnxruntime (the artifact's
    # graphs) and torch (the UNet's own module); TensorRT on the GPU. Not every backend: each holds two UNets then.
    deep_cache = (DeepCache(3, 0), DeepCache(5, 0))
    return {
        # the 2-core machine: the tiny demo model (batch 1 to 4), full-size SD 1.5 at 256x256 with 4 steps, and
        # SDXL's full topology at half widths (benchmarks.models "sdxl-small": a 0.64 B UNet) at 256x256, 4 steps
        "cpu": (
            SuiteModel("demo", "tiny", demo, ((128, 128),), (1, 2, 4), steps=20, runs=5, warmup=1),
            SuiteModel("sd15-random", "sd15", cpu_sd15, ((256, 256),), (1,), steps=4, runs=3, warmup=1),
            SuiteModel("sdxl-small-random", "sdxl-small", cpu_sdxl_small, ((256, 256),), (1,), steps=4, runs=3,
                       warmup=1),
            SuiteModel("unclip-demo", "unclip-tiny", ExportConfig(max_batch=1, min_size=64, max_size=256, opt_size=128),
                       ((128, 128),), (1,), steps=20, runs=5, warmup=1, mode="variation"),
            # ControlNet: none, one and two nets per image, every backend on the demo model; one and two on the
            # full-size SD 1.5 with onnxruntime against diffusers' ControlNet pipeline (every contender with
            # two 1.4 GB ControlNets would not fit in 24 GB)
            SuiteModel("demo", "tiny", demo, ((128, 128),), (1,), steps=20, runs=5, warmup=1,
                       controlnets=("controlnet-tiny", "controlnet-tiny"), control_counts=(0, 1, 2)),
            SuiteModel("sd15-random", "sd15", cpu_sd15, ((256, 256),), (1,), steps=4, runs=3, warmup=1,
                       controlnets=("sd15-controlnet", "sd15-controlnet"), control_counts=(1, 2),
                       backends=("onnxruntime",), baselines=("diffusers",)),
            # the SD x4 upscaler at its published sizes: a 128x128 image to 512x512 (sizes count output pixels)
            SuiteModel("x4-random", "x4", ExportConfig(max_batch=1, min_size=256, max_size=512, opt_size=512),
                       ((512, 512),), (1,), steps=4, runs=3, warmup=1, mode="upscale"),
            # DeepCache: full-size SD 1.5 and SDXL-small at 256x256, 20 steps, exact vs intervals 3 and 5
            SuiteModel("sd15-random", "sd15", cpu_sd15, ((256, 256),), (1,), steps=20, runs=3, warmup=1,
                       backends=("onnxruntime", "torch"), baselines=(), deep_caches=deep_cache),
            SuiteModel("sdxl-small-random", "sdxl-small", cpu_sdxl_small, ((256, 256),), (1,), steps=20, runs=3,
                       warmup=1, backends=("onnxruntime", "torch"), baselines=(), deep_caches=deep_cache),
        ),
        # one H100/H200: SD 1.5 at 512x512, 50 steps, batch 1 and 8; SDXL base at 1024x1024, 30 steps, batch 1,
        # alone and with its refiner from 0.8
        "gpu": (
            SuiteModel("sd15-random", "sd15", gpu_sd15, ((512, 512),), (1, 8), steps=50, runs=3, warmup=1),
            SuiteModel("sdxl-random", "sdxl", None, ((1024, 1024),), (1,), steps=30, runs=3, warmup=1),
            SuiteModel("sdxl-random", "sdxl", None, ((1024, 1024),), (1,), steps=30, runs=3, warmup=1,
                       refiner="sdxl-refiner", refiner_switch_at=0.8),
            SuiteModel("unclip-random", "unclip", None, ((768, 768),), (1,), steps=20, runs=3, warmup=1,
                       mode="variation"),
            SuiteModel("sd15-random", "sd15", gpu_sd15, ((512, 512),), (1,), steps=50, runs=3, warmup=1,
                       controlnets=("sd15-controlnet",), control_counts=(1,)),
            # DeepCache: SD 1.5 at 512x512, 50 steps (the paper's setting) and SDXL base at 1024x1024, 30 steps, exact
            # vs intervals 3 and 5
            SuiteModel("sd15-random", "sd15", gpu_sd15, ((512, 512),), (1,), steps=50, runs=3, warmup=1,
                       backends=("tensorrt", "torch"), baselines=(), deep_caches=deep_cache),
            SuiteModel("sdxl-random", "sdxl", None, ((1024, 1024),), (1,), steps=30, runs=3, warmup=1,
                       backends=("torch",), baselines=(), deep_caches=deep_cache),
        ),
        # benchmarks/gpu_check.sh, minutes on a lent GPU: SD 1.5 only, two runs, no torch.compile baseline
        "gpu-check": (
            SuiteModel("sd15-random", "sd15", gpu_sd15, ((512, 512),), (1, 8), steps=50, runs=2, warmup=1,
                       baselines=("diffusers",)),
        ),
    }  # fmt: skip


def quick_suites() -> dict[str, tuple[SuiteModel, ...]]:
    tiny = ExportConfig(max_batch=2, min_size=64, max_size=128, opt_size=64)
    demo = SuiteModel("demo", "tiny", tiny, ((64, 64),), (1, 2), steps=2, runs=1, warmup=1)
    sdxl = SuiteModel("sdxl-tiny", "sdxl-tiny", None, ((64, 64),), (1,), steps=2, runs=1, warmup=1)
    refined = SuiteModel("sdxl-tiny", "sdxl-tiny", None, ((64, 64),), (1,), steps=4, runs=1, warmup=1,
                         refiner="sdxl-refiner-tiny", refiner_switch_at=0.5)  # fmt: skip
    control = SuiteModel("demo", "tiny", tiny, ((64, 64),), (1,), steps=2, runs=1, warmup=1,
                         controlnets=("controlnet-tiny", "controlnet-tiny"), control_counts=(0, 2))  # fmt: skip
    cached = SuiteModel("demo", "tiny", None, ((64, 64),), (1,), steps=4, runs=1, warmup=1, backends=("torch",),
                        baselines=(), deep_caches=(DeepCache(2, 0),))  # fmt: skip
    return {
        "cpu": (demo, sdxl, control, cached),
        "gpu": (demo, sdxl, refined, control, cached),
        "gpu-check": (demo,),
    }


def prepare(
    name: str, preset: str, export: ExportConfig | None, suite: str, root: Path, seed: int = 0
) -> tuple[Path, Path | None]:
    """The model directory and artifact of a suite's model, made (or re-exported) when missing or stale."""
    from benchmarks.models import write_model

    model_dir = root / "models" / name
    if not any((model_dir / f).is_file() for f in ("model_index.json", "config.json")):  # a ControlNet: config.json
        log.info("writing the %s model to %s", preset, model_dir)
        write_model(model_dir, preset, seed=seed)
    if export is None:
        return model_dir, None
    artifact = root / "artifacts" / f"{name}-{suite}"
    stale = _stale(artifact, model_dir, export)
    if stale:
        from sdrt.export import export_model

        log.info("exporting %s to %s (%s)", model_dir, artifact, stale)
        export_model(model_dir, artifact, export, overwrite=True)
    return model_dir, artifact


def _stale(artifact: Path, model_dir: Path, export: ExportConfig) -> str | None:
    """Why `artifact` must be (re-)exported, or None when it is current."""
    from sdrt.manifest import read_manifest
    from sdrt.model_dir import ModelDir

    try:
        manifest = read_manifest(artifact)
    except ValueError as exc:
        return str(exc)
    r = manifest.ranges
    wanted = (export.max_batch, export.min_size, export.max_size, export.opt_size)
    if (r.max_batch, r.min_size, r.max_size, r.opt_size) != wanted:
        return f"its ranges {r.max_batch}, {r.min_size}..{r.max_size} ({r.opt_size}) differ from the suite's"
    if manifest.source_sha256 != ModelDir.open(model_dir).weights_sha256():
        return "it was exported from other weights"
    return None


def run_suite(suite: str, quick: bool, root: Path, results: Path, update_readme: bool, cold_start: bool = True) -> int:
    started = time.perf_counter()
    device = "cpu" if suite == "cpu" else "cuda"
    models = (quick_suites() if quick else suites(_artifact_on_gpu()))[suite]
    merged = BenchResult(records=[])
    commands = []
    for model in models:
        t0 = time.perf_counter()
        tag = f"{suite}-quick" if quick else suite
        model_dir, artifact = prepare(model.name, model.preset, model.export, tag, root)
        model_dir, artifact = _relative(model_dir), artifact and _relative(artifact)
        refiner_dir = refiner_artifact = None
        if model.refiner is not None:
            refiner_dir, refiner_artifact = prepare(model.refiner, model.refiner, model.export, tag, root)
            refiner_dir, refiner_artifact = _relative(refiner_dir), refiner_artifact and _relative(refiner_artifact)
        nets = [prepare(f"{p}-{i}", p, model.export, tag, root, seed=i) for i, p in enumerate(model.controlnets)]
        nets = [(_relative(d), a and _relative(a)) for d, a in nets]
        log.info("%s ready in %.0f s", model.name, time.perf_counter() - t0)
        config = bench_config(model, model_dir, artifact, (refiner_dir, refiner_artifact), nets, device, cold_start)
        commands.append(config.command())
        t0 = time.perf_counter()
        result = run_bench(config)
        log.info("%s timed in %.0f s", model.name, time.perf_counter() - t0)
        merged.records += result.records
        merged.notes += [f"{model.name}: {n}" for n in result.notes]
    merged.command = f"benchmarks/{suite.replace('-', '_')}.sh" + (" --quick" if quick else "")
    overhead = None
    if suite == "cpu" and not quick:  # what ControlNet's residual inputs cost a UNet call without ControlNet
        from benchmarks import residual_overhead

        sd15 = next(m for m in models if m.preset == "sd15")
        model_dir, artifact = prepare(sd15.name, sd15.preset, sd15.export, suite, root)
        overhead = residual_overhead.measure(model_dir, artifact, size=sd15.sizes[0][0], calls=10)
        command = f"python -m benchmarks.residual_overhead {_relative(model_dir)} {_relative(artifact)} --calls 10"
        overhead |= {"command": command}
    minutes = (time.perf_counter() - started) / 60

    machine = machine_slug(device) + ("-check" if suite == "gpu-check" else "")
    results.mkdir(parents=True, exist_ok=True)
    table = format_table(merged)
    print(table)
    data = merged.to_json() | {"commands": commands, "suite_minutes": minutes, "residual_overhead": overhead}
    with atomic_file(results / f"{machine}.json") as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
    plot(merged.records, results / f"{machine}.png")
    markdown = _markdown(merged, suite, machine, commands, minutes)
    if overhead is not None:
        from benchmarks.residual_overhead import markdown as overhead_markdown

        markdown += "\n" + overhead_markdown(overhead, overhead["command"])
    (results / f"{machine}.md").write_text(markdown)
    if update_readme:
        _update_readme(README, machine, markdown)
    print(f"wrote {results / machine}.json, .png and .md ({minutes:.1f} minutes)")
    for failure in merged.failures():
        print(f"benchmarks.suite: failed: {failure}", file=sys.stderr)
    return 1 if merged.failures() else 0


def bench_config(
    model: SuiteModel,
    model_dir: Path,
    artifact: Path | None,
    refiner: tuple[Path | None, Path | None],
    nets: list[tuple[Path, Path | None]],
    device: str,
    cold_start: bool,
) -> BenchConfig:
    """The `sdrt bench` configuration of one suite model (its model directory, artifact, refiner and ControlNets
    as (directory, artifact) pairs)."""
    refiner_dir, refiner_artifact = refiner
    return BenchConfig(
        path=artifact or model_dir,
        model=model_dir if artifact else None,
        label=model.label,
        backends=model.backends,
        sizes=model.sizes,
        batches=model.batches,
        steps=model.steps,
        runs=model.runs,
        warmup=model.warmup,
        scheduler=SCHEDULER,
        refiner=refiner_artifact or refiner_dir,
        refiner_model=refiner_dir if refiner_artifact else None,
        refiner_switch_at=model.refiner_switch_at,
        mode=model.mode,
        device=device,
        cold_start=cold_start,
        baselines=model.baselines,
        controlnets=tuple(a or d for d, a in nets),
        controlnet_models=tuple(d for d, a in nets if a),
        control_counts=model.control_counts,
        deep_caches=model.deep_caches,
    )


def dry_run(suite: str, quick: bool, root: Path, cold_start: bool = True) -> list[str]:
    """The `sdrt bench` commands a suite would run, each configuration checked, without making or timing anything."""
    models = (quick_suites() if quick else suites(_artifact_on_gpu()))[suite]
    tag = f"{suite}-quick" if quick else suite
    device = "cpu" if suite == "cpu" else "cuda"

    def paths(name: str, export: ExportConfig | None) -> tuple[Path, Path | None]:
        artifact = None if export is None else _relative(root / "artifacts" / f"{name}-{tag}")
        return _relative(root / "models" / name), artifact

    commands = []
    for model in models:
        refiner = paths(model.refiner, model.export) if model.refiner else (None, None)
        nets = [paths(f"{p}-{i}", model.export) for i, p in enumerate(model.controlnets)]
        model_dir, artifact = paths(model.name, model.export)
        commands.append(bench_config(model, model_dir, artifact, refiner, nets, device, cold_start).command())
    return commands


def _markdown(result: BenchResult, suite: str, machine: str, commands: list[str], minutes: float) -> str:
    info, lib = machine_info(), versions()
    gpu = next((r.environment.get("gpu") for r in result.records if r.environment.get("gpu")), None)
    where = f"{gpu['name']}, " if gpu else ""
    where += f"{info['cpu']} ({info['cpu_cores_logical']} cores), {info['memory_bytes'] / 2**30:.0f} GiB"
    libs = ", ".join(
        f"{k} {lib[k]}" for k in ("torch", "diffusers", "transformers", "onnxruntime", "openvino") if k in lib
    )
    lines = [
        f"Machine `{machine}`: {where}; {libs}. Produced by `{result.command}` in {minutes:.1f} minutes "
        f"(results in `results/{machine}.json`, chart in `results/{machine}.png`), which ran:",
        "",
        *[f"    {c}" for c in commands],
        "",
        format_table(result, markdown=True).rstrip(),
        "",
    ]
    return "\n".join(lines)


def _update_readme(readme: Path, machine: str, markdown: str) -> None:
    """Put `markdown` between this machine's markers in the README, adding a section the first time."""
    begin, end = f"<!-- results:{machine} -->", f"<!-- /results:{machine} -->"
    text = readme.read_text() if readme.is_file() else "# Benchmarks\n"
    block = f"{begin}\n{markdown.rstrip()}\n{end}"
    if begin in text and end in text:
        text = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + f"\n\n## Results: {machine}\n\n{block}\n"
    readme.write_text(text)


def _relative(path: Path) -> Path:
    """`path` relative to the working directory when it lies inside it, so published commands carry no home paths."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path


def _artifact_on_gpu() -> bool:
    """True when ONNX Runtime's CUDA provider or TensorRT can run an exported artifact on this machine's GPU."""
    import onnxruntime as ort

    from sdrt.bench.weights import Weights, contender

    if "CUDAExecutionProvider" in ort.get_available_providers():
        return True
    probe = Weights(artifact=Path("."), model_dir=None, family="sd1", label="", ranges=None, native_size=512)
    return contender("tensorrt", probe, "cuda")[0] is not None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", choices=("cpu", "gpu", "gpu-check"))
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny models, 64x64, 2 steps, one run")
    parser.add_argument("--root", type=Path, default=ROOT, help="where models/ and artifacts/ are kept")
    parser.add_argument("--no-cold-start", action="store_true", help="skip the fresh-process cold starts")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the sdrt bench commands the suite runs (checked), run nothing"
    )
    parser.add_argument(
        "--results", type=Path, default=None, help="results directory (default benchmarks/results; README untouched)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for name in ("sdrt", "benchmarks"):
        logging.getLogger(name).setLevel(logging.INFO)
    from sdrt.library_logging import quiet_third_party

    quiet_third_party()
    if args.dry_run:
        try:
            commands = dry_run(args.suite, args.quick, args.root, cold_start=not args.no_cold_start)
        except ValueError as exc:
            print(f"benchmarks.suite: error: {exc}", file=sys.stderr)
            return 2
        print("\n".join(commands))
        return 0
    results = args.results or (ROOT / "outputs" / "bench-quick" if args.quick else RESULTS)
    try:
        update = not args.quick and args.results is None
        return run_suite(args.suite, args.quick, args.root, results, update, cold_start=not args.no_cold_start)
    except ValueError as exc:
        print(f"benchmarks.suite: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
