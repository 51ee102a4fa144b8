"""sdrt-cpp against the Python runtime on the same OpenVINO engines: the host loop's overhead per denoising step.

Both run the artifact's ONNX graphs on OpenVINO's CPU plugin, compiled alike (f32, the latency hint, static shapes),
so the UNet calls cost the same; what differs is everything between them: scaling the latents, assembling the
batched-CFG feeds, combining the guided prediction, the sampler's step and its noise. That is "scheduler +
overhead" in `sdrt generate`'s stage table (the denoising loop's time less its UNet calls), per step.

Runs alternate, one of each per round (the Python pipeline stays loaded; each sdrt-cpp process runs a warm-up
generation and then the measured one, `--repeat 2`, its compiled models imported from a shared cache), so both see
the same machine load. Prints a table of medians and writes JSON (every run) and Markdown beside it.

    .venv/bin/python -m benchmarks.cpp_host_loop [--artifact DIR] [--sizes 128x128,512x512] [--batch 1,2]
        [--samplers dpmpp_2m_karras,euler_a] [--steps 20] [--rounds 5] [--out benchmarks/results/NAME]

Without --artifact the demo model (tiny SD 1.5 topology, random weights) is written and exported with sizes up to
512 into a temporary directory. sdrt-cpp comes from build/cpp (`make cpp`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SDRT_CPP = REPO / "build" / "cpp" / "sdrt-cpp"
PROMPT = "a photo of an astronaut riding a horse on the moon, highly detailed"
NEGATIVE = "blurry, low quality"


def machine_name() -> str:
    return f"cpu-{os.cpu_count()}core-{platform.machine().replace('_', '-').lower()}"


def demo_artifact(root: Path, max_size: int, max_batch: int) -> Path:
    from sdrt.demo import write_demo_model
    from sdrt.export import ExportConfig, export_model

    model = write_demo_model(root / "demo-model")
    artifact = root / "demo-artifact"
    export_model(model, artifact, ExportConfig(max_batch=max_batch, min_size=64, max_size=max_size, opt_size=128))
    return artifact


def python_run(pipe, size: tuple[int, int], batch: int, sampler: str, steps: int, seed: int) -> dict:
    result = pipe.generate(
        PROMPT, negative_prompt=NEGATIVE, height=size[1], width=size[0], num_inference_steps=steps, seed=seed,
        scheduler=sampler, num_images_per_prompt=batch,
    )  # fmt: skip
    t = result.timings
    return {"unet": t.unet, "scheduler": t.scheduler, "total": t.total, "steps": t.steps, "unet_calls": t.unet_calls}


def cpp_run(artifact: Path, size: tuple[int, int], batch: int, sampler: str, steps: int, seed: int, work: Path) -> dict:
    timings = work / "timings.json"
    command = [
        str(SDRT_CPP), str(artifact), "--prompt", PROMPT, "--negative-prompt", NEGATIVE, "--width", str(size[0]),
        "--height", str(size[1]), "--steps", str(steps), "--seed", str(seed), "--sampler", sampler, "--batch",
        str(batch), "--repeat", "2", "--cache-dir", str(work / "openvino-cache"), "--timings-json", str(timings),
        "-o", str(work / "cpp.png"),
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)
    measured = json.loads(timings.read_text())["runs"][-1]  # the first generation warmed the process up
    keys = ("unet", "scheduler", "total", "steps", "unet_calls")
    return {k: measured[k] for k in keys}


def summarize(runs: list[dict]) -> dict:
    per_step = [r["scheduler"] / r["steps"] for r in runs]
    per_call = [r["unet"] / r["unet_calls"] for r in runs]
    return {
        "overhead_per_step_ms": statistics.median(per_step) * 1000,
        "unet_per_call_ms": statistics.median(per_call) * 1000,
        "total_ms": statistics.median(r["total"] for r in runs) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", type=Path, default=None, help="an sdrt artifact (default: the demo model's)")
    parser.add_argument("--sizes", default="128x128,512x512", help="WIDTHxHEIGHT list")
    parser.add_argument("--batch", default="1,2", help="images per generation")
    parser.add_argument("--samplers", default="dpmpp_2m_karras,euler_a", help="sampler names")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5, help="measured runs of each side, alternating")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / f"cpp-host-loop-{machine_name()}")
    args = parser.parse_args()
    if not SDRT_CPP.is_file():
        raise SystemExit(f"{SDRT_CPP} is missing: run `make cpp` first")
    from sdrt import Pipeline

    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    batches = [int(b) for b in args.batch.split(",")]
    samplers = args.samplers.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        artifact = args.artifact or demo_artifact(work, max(max(s) for s in sizes), max(batches))
        pipe = Pipeline.load(artifact, backend="openvino", cache_dir=str(work / "python-cache"))
        records = []
        for size in sizes:
            for batch in batches:
                for sampler in samplers:
                    python_run(pipe, size, batch, sampler, args.steps, 1)  # warm-up: compile this shape
                    runs = {"python": [], "cpp": []}
                    for round_ in range(args.rounds):
                        runs["python"].append(python_run(pipe, size, batch, sampler, args.steps, 100 + round_))
                        runs["cpp"].append(cpp_run(artifact, size, batch, sampler, args.steps, 100 + round_, work))
                    record = {
                        "size": f"{size[0]}x{size[1]}",
                        "batch": batch,
                        "sampler": sampler,
                        "steps": args.steps,
                        "python": summarize(runs["python"]),
                        "cpp": summarize(runs["cpp"]),
                        "runs": runs,
                    }
                    records.append(record)
                    print_row(record)
    write(records, args)


HEADER = (
    "| size | batch | sampler | host overhead per step, Python (ms) | sdrt-cpp (ms) | ratio | "
    "UNet per call, Python (ms) | sdrt-cpp (ms) | total, Python (ms) | sdrt-cpp (ms) |"
)


def row(r: dict) -> str:
    p, c = r["python"], r["cpp"]
    ratio = c["overhead_per_step_ms"] / p["overhead_per_step_ms"]
    return (
        f"| {r['size']} | {r['batch']} | {r['sampler']} | {p['overhead_per_step_ms']:.3f} | "
        f"{c['overhead_per_step_ms']:.3f} | {ratio:.2f}x | {p['unet_per_call_ms']:.1f} | {c['unet_per_call_ms']:.1f} | "
        f"{p['total_ms']:.0f} | {c['total_ms']:.0f} |"
    )


def print_row(record: dict) -> None:
    if not getattr(print_row, "header", False):
        print(HEADER)
        print_row.header = True
    print(row(record), flush=True)


def write(records: list[dict], args: argparse.Namespace) -> None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "machine": machine_name(),
        "date": time.strftime("%Y-%m-%d"),
        "command": "python -m benchmarks.cpp_host_loop "
        + f"--sizes {args.sizes} --batch {args.batch} --samplers {args.samplers} --steps {args.steps} "
        + f"--rounds {args.rounds}"
        + (f" --artifact {args.artifact}" if args.artifact else ""),
        "backend": "openvino (both sides)",
    }
    args.out.with_suffix(".json").write_text(json.dumps({**meta, "records": records}, indent=2) + "\n")
    lines = [f"`{meta['command']}` on {meta['machine']}, {meta['date']}; medians of {args.rounds} runs each", ""]
    lines += [HEADER, "|---" * 10 + "|", *(row(r) for r in records)]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
