"""sdrt backends against diffusers' StableDiffusionPipeline on the same weights, alternating in one run.

Prints a table of median seconds per stage and the sdrt / diffusers ratio, and writes JSON.
Usage: python benchmarks/backends.py [--model DIR --artifact DIR] [--size 128x128] [--steps 20] [--runs 5]
Without --model, the demo model is written to a temporary directory and exported.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from sdrt import Pipeline
from sdrt.versions import library_versions

PROMPT = "a photo of an astronaut riding a horse on the moon"
NEGATIVE = "blurry, low quality"


class _Timed(torch.nn.Module):
    """Wraps a diffusers module and adds its forward time to a shared dict."""

    def __init__(self, module, seconds: dict, key: str):
        super().__init__()
        self.inner, self.seconds, self.key = module, seconds, key

    def forward(self, *args, **kwargs):
        start = time.perf_counter()
        out = self.inner(*args, **kwargs)
        self.seconds[self.key] = self.seconds.get(self.key, 0.0) + time.perf_counter() - start
        return out

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)


def _diffusers_runner(model_dir: Path, args):
    from diffusers import StableDiffusionPipeline

    from sdrt.runtime.schedulers import make_scheduler

    pipe = StableDiffusionPipeline.from_pretrained(model_dir, safety_checker=None, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = make_scheduler(args.scheduler, pipe.scheduler.config)
    seconds: dict[str, float] = {}
    pipe.unet = _Timed(pipe.unet, seconds, "unet")
    pipe.text_encoder = _Timed(pipe.text_encoder, seconds, "text_encoder")
    decode = pipe.vae.decode

    def timed_decode(*a, **k):
        start = time.perf_counter()
        out = decode(*a, **k)
        seconds["vae_decode"] = seconds.get("vae_decode", 0.0) + time.perf_counter() - start
        return out

    pipe.vae.decode = timed_decode

    def run(seed: int) -> dict[str, float]:
        seconds.clear()
        start = time.perf_counter()
        with torch.inference_mode():
            pipe(
                PROMPT,
                negative_prompt=NEGATIVE,
                height=args.height,
                width=args.width,
                num_inference_steps=args.steps,
                guidance_scale=7.5,
                generator=[torch.Generator("cpu").manual_seed(seed)],
            )
        total = time.perf_counter() - start
        return {**seconds, "total": total}

    return run


def _sdrt_runner(pipe: Pipeline, args):
    def run(seed: int) -> dict[str, float]:
        t = pipe.generate(
            PROMPT,
            negative_prompt=NEGATIVE,
            height=args.height,
            width=args.width,
            num_inference_steps=args.steps,
            seed=seed,
            scheduler=args.scheduler,
        ).timings
        return {"text_encoder": t.text_encoder, "unet": t.unet, "vae_decode": t.vae_decode, "total": t.total}

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="diffusers model directory (default: a fresh demo model)")
    parser.add_argument("--artifact", type=Path, help="its sdrt export (default: exported into a temp dir)")
    parser.add_argument("--size", default="128x128", help="WIDTHxHEIGHT (default 128x128)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--scheduler", default="euler_a")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per backend (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per backend first (default 1)")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/backends-cpu-demo.json"))
    args = parser.parse_args()
    args.width, args.height = (int(v) for v in args.size.lower().split("x"))

    tmp = tempfile.TemporaryDirectory(prefix="sdrt-bench-")
    model, artifact = args.model, args.artifact
    if model is None:
        from sdrt.demo_model import write_demo_model

        model = write_demo_model(Path(tmp.name) / "model")
    if artifact is None:
        from sdrt.export import ExportConfig, export_model

        artifact = Path(tmp.name) / "artifact"
        size = max(args.width, args.height)
        export_model(model, artifact, ExportConfig(max_batch=1, min_size=64, max_size=max(size, 64), opt_size=size))

    runners = {
        "diffusers": _diffusers_runner(model, args),
        "sdrt-torch": _sdrt_runner(Pipeline.load(model, backend="torch"), args),
        "sdrt-onnxruntime": _sdrt_runner(Pipeline.load(artifact, backend="onnxruntime"), args),
    }
    for run in runners.values():
        for i in range(args.warmup):
            run(i)
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in runners}
    for i in range(args.runs):  # alternate, so drift on a noisy machine hits every backend alike
        for name, run in runners.items():
            samples[name].append(run(1000 + i))

    for rs in samples.values():  # everything outside the three networks: scheduler, guidance, setup, conversion
        for r in rs:
            r["other"] = r["total"] - r["text_encoder"] - r["unet"] - r["vae_decode"]
    stages = ("text_encoder", "unet", "vae_decode", "other", "total")
    medians = {n: {s: statistics.median(r[s] for r in rs) for s in stages} for n, rs in samples.items()}
    base = medians["diffusers"]
    print(f"\n{args.width}x{args.height}, {args.steps} steps, {args.scheduler}, median of {args.runs} runs (seconds)")
    print(f"{'backend':<18}" + "".join(f"{s:>14}" for s in stages) + f"{'total/diffusers':>17}")
    for name, m in medians.items():
        print(f"{name:<18}" + "".join(f"{m[s]:>14.4f}" for s in stages) + f"{m['total'] / base['total']:>17.2f}")

    args.json.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "scenario": {"size": args.size, "steps": args.steps, "scheduler": args.scheduler, "runs": args.runs},
        "model": str(model),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": torch.get_num_threads(),
        },
        "versions": library_versions(),
        "median_seconds": medians,
        "ratio_total_vs_diffusers": {n: m["total"] / base["total"] for n, m in medians.items()},
        "samples": samples,
    }
    args.json.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
