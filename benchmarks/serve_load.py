"""Load test of `sdrt serve` on loopback: throughput and p50/p99 latency per concurrency, against offline batches.

The server runs as its own process (`sdrt serve`, 127.0.0.1 only); this process is the clients, each sending
single-image requests with distinct prompts and seeds back to back. Every level is bounded in requests and in
seconds. The offline figure is `Pipeline.run_batch` on the same artifact, size, steps and sampler with the
server's batch size (and of batch 1), each in a fresh process of its own just before and just after each level
while the server idles, so the two never share the CPU and drift on a noisy machine hits both alike.

Usage: python benchmarks/serve_load.py [--artifact DIR] [--size 128] [--steps 20] [--concurrency 1,4,16]
           [--requests 32] [--seconds 120] [--max-wait-ms 50] [--out benchmarks/results/serve-load-cpu-demo.json]
Without --artifact, the demo model is written to a temporary directory and exported (batch 4, 64..256 px).

`--scenario models` is the many-models scenario instead: N models (`--models`, each a link to the artifact under
its own name: the same work per request, so only the model handling differs) behind one server that keeps at most
`--max-loaded-models` loaded (a run per limit), clients choosing each request's model from a Zipf distribution
(`--zipf`, fixed seed), against a single-model server at the same concurrency, one after the other in this run:
throughput, p50/p99 latency, and the server's model loads, seconds loading and evictions (from its /metrics).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from sdrt import Pipeline
from sdrt.runtime.request import GenerationRequest
from sdrt.versions import library_versions

SCHEDULER = "euler_a"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _request(i: int, size: int, steps: int) -> dict:
    return {
        "prompt": f"a watercolor of a lighthouse on a cliff, variation {i}",
        "negative_prompt": "blurry",
        "seed": 1000 + i,
        "height": size,
        "width": size,
        "steps": steps,
        "scheduler": SCHEDULER,
        "guidance_scale": 7.5,
    }


def offline_requests(args, sizes: list[int]) -> dict[int, list[GenerationRequest]]:
    """For each batch size, that many single-image requests like the clients' (distinct prompts and seeds)."""
    out = {}
    for size in sizes:
        bodies = [_request(i, args.size, args.steps) for i in range(size)]
        out[size] = [
            GenerationRequest(
                prompts=(b["prompt"],),
                negative_prompts=(b["negative_prompt"],),
                height=args.size,
                width=args.size,
                steps=args.steps,
                guidance_scales=(7.5,),
                seed=b["seed"],
                scheduler=SCHEDULER,
            )
            for b in bodies
        ]
    return out


def offline(pipe: Pipeline, batches: dict[int, list[GenerationRequest]], runs: int) -> dict[str, float]:
    """Images per second of Pipeline.run_batch at each batch size (median of `runs`)."""
    result = {}
    for size, requests in batches.items():
        seconds = []
        for _ in range(runs):
            start = time.perf_counter()
            pipe.run_batch(requests)
            seconds.append(time.perf_counter() - start)
        result[str(size)] = size / statistics.median(seconds)
    return result


def offline_in_process_of_its_own(artifact: Path, args, sizes: list[int]) -> dict[str, float]:
    """`offline` in a fresh process (load, one warm-up batch per size, timed runs): the clients' process stays light."""
    command = [sys.executable, __file__, "--offline-worker", "--artifact", str(artifact), "--backend", args.backend]
    command += ["--device", args.device, "--size", str(args.size), "--steps", str(args.steps)]
    command += ["--offline-runs", str(args.offline_runs), "--offline-sizes", ",".join(map(str, sizes))]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the offline run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _offline_worker(args) -> int:
    pipe = Pipeline.load(args.artifact, backend=args.backend, device=args.device)
    batches = offline_requests(args, [int(s) for s in args.offline_sizes.split(",")])
    offline(pipe, batches, 1)  # warm-up
    print(json.dumps(offline(pipe, batches, args.offline_runs)))
    return 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(models: list[str], args, port: int) -> subprocess.Popen:
    """`sdrt serve MODELS...` (artifacts, or --model-dir and its options) on loopback, once ready."""
    command = [sys.executable, "-m", "sdrt.cli", "-q", "serve", *models, "--host", "127.0.0.1"]
    command += ["--port", str(port), "--backend", args.backend, "--device", args.device]
    command += ["--max-wait-ms", str(args.max_wait_ms), "--max-queue", "256"]
    if args.max_batch:
        command += ["--max-batch", str(args.max_batch)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"sdrt serve exited with {process.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready").status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("sdrt serve did not become ready in 300 s")


def load_level(url: str, args, concurrency: int, first: int, model_of=None) -> dict:
    """`concurrency` clients, back to back, until `requests` are sent or `seconds` pass; `model_of(i)` names the
    model of request i (none: the server's default)."""
    total = max(args.requests, 2 * concurrency)
    latencies: list[float] = []
    batch_images: list[int] = []
    served: dict[str, int] = {}  # requests answered, by the model the answer says ran
    failures = 0
    next_index = first
    lock = threading.Lock()
    deadline = time.monotonic() + args.seconds

    def client() -> None:
        nonlocal next_index, failures
        with httpx.Client(timeout=600) as http:
            while time.monotonic() < deadline:
                with lock:
                    if next_index >= first + total:
                        return
                    i, next_index = next_index, next_index + 1
                body = _request(i, args.size, args.steps)
                if model_of is not None:
                    body["model"] = model_of(i)
                start = time.perf_counter()
                response = http.post(f"{url}/v1/generate", json=body)
                elapsed = time.perf_counter() - start
                with lock:
                    if response.status_code == 200:
                        answer = response.json()
                        if model_of is not None and answer["model"] != body["model"]:
                            raise RuntimeError(f"request for {body['model']} answered by {answer['model']}")
                        latencies.append(elapsed)
                        batch_images.append(answer["batch"]["images"])
                        served[answer["model"]] = served.get(answer["model"], 0) + 1
                    else:
                        failures += 1

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "failures": failures,
        "seconds": wall,
        "images_per_second": len(latencies) / wall,
        "p50_seconds": _percentile(latencies, 0.50),
        "p99_seconds": _percentile(latencies, 0.99),
        "mean_batch_images": statistics.mean(batch_images),
        "requests_per_model": dict(sorted(served.items())),
    }


def zipf_choice(names: list[str], s: float, seed: int):
    """`model_of(i)` for load_level: request i's model drawn from a Zipf distribution over `names` (rank 1 the most
    asked for; P(rank k) proportional to 1 / k**s), the same for a given seed, whatever the threads' order."""
    weights = [1.0 / (k**s) for k in range(1, len(names) + 1)]
    return lambda i: random.Random(seed * 1_000_003 + i).choices(names, weights)[0]


_SAMPLE = re.compile(r"^(sdrt_model_(?:loads_total|evictions_total|load_seconds_sum))\{([^}]*)\} ([0-9.e+-]+)$")


def model_counts(url: str) -> dict:
    """The server's model loads, seconds spent loading, and evictions by reason, from its /metrics."""
    counts: dict = {"loads": 0, "load_seconds": 0.0, "evictions": {}}
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, labels, value = match.groups()
        if name == "sdrt_model_loads_total":
            counts["loads"] += int(float(value))
        elif name == "sdrt_model_load_seconds_sum":
            counts["load_seconds"] += float(value)
        else:
            reason = dict(re.findall(r'(\w+)="([^"]*)"', labels))["reason"]
            counts["evictions"][reason] = counts["evictions"].get(reason, 0) + int(float(value))
    return counts


def many_models(artifact: Path, args, root: Path) -> dict:
    """The many-models scenario: a single-model server, then an N-model server per limit of loaded models, at the
    same concurrency, one after the other."""
    models_dir = root / "models"
    models_dir.mkdir()
    names = [f"model-{k}" for k in range(1, args.models + 1)]
    for name in names:  # another directory per model: loaded, counted and evicted as a model of its own
        (models_dir / name).symlink_to(artifact.resolve(), target_is_directory=True)
    limits = [int(k) for k in str(args.max_loaded_models).split(",")]
    scenarios = [("single", [str(artifact)], None)]
    for limit in limits:
        options = ["--model-dir", str(models_dir), "--max-loaded-models", str(limit)]
        scenarios.append((f"many, {limit} loaded", options, zipf_choice(names, args.zipf, seed=7)))
    runs = []
    for label, models, model_of in scenarios:
        port = _free_port()
        server = start_server(models, args, port)
        try:
            url = f"http://127.0.0.1:{port}"
            warm = argparse.Namespace(**{**vars(args), "requests": 2, "seconds": 60})
            load_level(url, warm, 1, 10**6)  # warm-up: the default model's first batch
            before = model_counts(url)
            level = load_level(url, args, args.models_concurrency, 0, model_of)
            after = model_counts(url)
            level["server"] = label
            level["loads"] = after["loads"] - before["loads"]
            level["load_seconds"] = after["load_seconds"] - before["load_seconds"]
            level["evictions"] = {
                k: v - before["evictions"].get(k, 0)
                for k, v in after["evictions"].items()
                if v > before["evictions"].get(k, 0)
            }
            level["load_average_1min"] = os.getloadavg()[0]
            runs.append(level)
        finally:
            server.terminate()
            server.wait(120)
    single = runs[0]["images_per_second"]
    for run in runs:
        run["throughput_vs_single"] = run["images_per_second"] / single
    return {"models": args.models, "zipf_s": args.zipf, "concurrency": args.models_concurrency, "runs": runs}


def print_many_models(record: dict, size: int, steps: int) -> None:
    print(
        f"{size}x{size}, {steps} steps, {SCHEDULER}; {record['models']} models, Zipf s={record['zipf_s']}, "
        f"{record['concurrency']} clients"
    )
    header = f"{'server':>14} {'requests':>8} {'fail':>5} {'img/s':>7} {'vs single':>9} {'p50 s':>7} {'p99 s':>7}"
    print(f"{header} {'batch':>6} {'loads':>6} {'load s':>7} evictions")
    for r in record["runs"]:
        print(
            f"{r['server']:>14} {r['requests']:>8} {r['failures']:>5} {r['images_per_second']:>7.2f} "
            f"{r['throughput_vs_single']:>9.2f} {r['p50_seconds']:>7.2f} {r['p99_seconds']:>7.2f} "
            f"{r['mean_batch_images']:>6.2f} {r['loads']:>6} {r['load_seconds']:>7.1f} {r['evictions']}"
        )
    for r in record["runs"][1:]:
        print(f"{r['server']}: requests per model {r['requests_per_model']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", type=Path, default=None, help="artifact directory (default: a fresh demo)")
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=128, help="square image size in pixels (default 128)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    parser.add_argument("--concurrency", default="1,4,16", help="comma-separated client counts (default 1,4,16)")
    parser.add_argument("--requests", type=int, default=32, help="requests per level, at least 2x its clients")
    parser.add_argument("--seconds", type=float, default=120.0, help="time limit per level (default 120)")
    parser.add_argument("--max-batch", type=int, default=None, help="server --max-batch (default the artifact's)")
    parser.add_argument("--max-wait-ms", type=float, default=50.0, help="server --max-wait-ms (default 50)")
    parser.add_argument("--offline-runs", type=int, default=2, help="offline batches timed around each level")
    parser.add_argument("--out", type=Path, default=None, help="results JSON (default benchmarks/results/...)")
    parser.add_argument("--scenario", choices=("levels", "models"), default="levels", help="see above (levels)")
    parser.add_argument("--models", type=int, default=4, help="models: how many (default 4)")
    parser.add_argument(
        "--max-loaded-models", default="2,4", help="models: the server's limits, one run each (default 2,4)"
    )
    parser.add_argument("--zipf", type=float, default=1.1, help="models: Zipf exponent of the choice (default 1.1)")
    parser.add_argument("--models-concurrency", type=int, default=16, help="models: clients (default 16)")
    parser.add_argument("--offline-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--offline-sizes", default="1", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.offline_worker:
        return _offline_worker(args)
    levels = [int(c) for c in args.concurrency.split(",")]
    default_out = "serve-load-models-cpu-demo.json" if args.scenario == "models" else "serve-load-cpu-demo.json"
    args.out = args.out or Path("benchmarks/results") / default_out
    machine = {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()}

    with tempfile.TemporaryDirectory() as tmp:
        artifact = args.artifact
        if artifact is None:
            from sdrt.demo import write_demo_model
            from sdrt.export import ExportConfig, export_model

            artifact = Path(tmp) / "artifact"
            model = write_demo_model(Path(tmp) / "model")
            export_model(model, artifact, ExportConfig(max_batch=4, min_size=64, max_size=256, opt_size=128))
        if args.scenario == "models":
            record = many_models(artifact, args, Path(tmp))
            print_many_models(record, args.size, args.steps)
            settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
            record = {"settings": settings, **record, "machine": machine, "versions": library_versions()}
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(record, indent=2) + "\n")
            print(f"wrote {args.out}")
            return 0
        from sdrt.manifest import read_manifest

        batch = args.max_batch or read_manifest(artifact).ranges.max_batch
        sizes = sorted({1, batch})
        port = _free_port()
        server = start_server([str(artifact)], args, port)
        try:
            url = f"http://127.0.0.1:{port}"
            load_level(url, argparse.Namespace(**{**vars(args), "requests": 2, "seconds": 60}), 1, 10**6)  # warm-up
            results, first = [], 0
            for concurrency in levels:
                # offline just before and just after each level (the server idles): drift hits both alike
                before = offline_in_process_of_its_own(artifact, args, sizes)
                level = load_level(url, args, concurrency, first)
                after = offline_in_process_of_its_own(artifact, args, sizes)
                level["offline_images_per_second"] = {k: (before[k] + after[k]) / 2 for k in before}
                level["load_average_1min"] = os.getloadavg()[0]  # other work on the machine skews both figures
                results.append(level)
                first += 10_000
        finally:
            server.terminate()
            server.wait(120)

    print(f"{args.size}x{args.size}, {args.steps} steps, {SCHEDULER}, server batch {batch}, wait {args.max_wait_ms} ms")
    header = f"{'clients':>7} {'requests':>8} {'img/s':>7} {'p50 s':>7} {'p99 s':>7} {'batch':>6}"
    print(f"{header} {'offline img/s, batch 1':>23} {f'batch {batch}':>8} {f'vs batch {batch}':>11}")
    for r in results:
        off = r["offline_images_per_second"]
        print(
            f"{r['concurrency']:>7} {r['requests']:>8} {r['images_per_second']:>7.2f} {r['p50_seconds']:>7.2f} "
            f"{r['p99_seconds']:>7.2f} {r['mean_batch_images']:>6.2f} {off['1']:>23.2f} {off[str(batch)]:>8.2f} "
            f"{r['images_per_second'] / off[str(batch)]:>11.2f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "server_batch": batch,
        "levels": results,
        "machine": machine,
        "versions": library_versions(),
    }
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
