"""Load test of `sdrt serve` on loopback: throughput and p50/p99 latency per concurrency, against offline batches.

The server runs as its own process (`sdrt serve`, 127.0.0.1 only); this process is the clients, each sending
single-image requests with distinct prompts and seeds back to back. Every level is bounded in requests and in
seconds. The offline figure is `Pipeline.run_batch` on the same artifact, size, steps and sampler with the
server's batch size (and of batch 1), each in a fresh process of its own just before and just after each level
while the server idles, so the two never share the CPU and drift on a noisy machine hits both alike.

Usage: python benchmarks/serve_load.py [--artifact DIR] [--size 128] [--steps 20] [--concurrency 1,4,16]
           [--requests 32] [--seconds 120] [--max-wait-ms 50] [--out benchmarks/results/serve-load-cpu-demo.json]
Without --artifact, the demo model is written to a temporary directory and exported (batch 4, 64..256 px).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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


def start_server(artifact: Path, args, port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "sdrt.cli", "-q", "serve", str(artifact), "--host", "127.0.0.1"]
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


def load_level(url: str, args, concurrency: int, first: int) -> dict:
    """`concurrency` clients, back to back, until `requests` are sent or `seconds` pass."""
    total = max(args.requests, 2 * concurrency)
    latencies: list[float] = []
    batch_images: list[int] = []
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
                start = time.perf_counter()
                response = http.post(f"{url}/v1/generate", json=_request(i, args.size, args.steps))
                elapsed = time.perf_counter() - start
                with lock:
                    if response.status_code == 200:
                        latencies.append(elapsed)
                        batch_images.append(response.json()["batch"]["images"])
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
    }


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
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/serve-load-cpu-demo.json"))
    parser.add_argument("--offline-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--offline-sizes", default="1", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.offline_worker:
        return _offline_worker(args)
    levels = [int(c) for c in args.concurrency.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        artifact = args.artifact
        if artifact is None:
            from sdrt.demo import write_demo_model
            from sdrt.export import ExportConfig, export_model

            artifact = Path(tmp) / "artifact"
            model = write_demo_model(Path(tmp) / "model")
            export_model(model, artifact, ExportConfig(max_batch=4, min_size=64, max_size=256, opt_size=128))
        from sdrt.manifest import read_manifest

        batch = args.max_batch or read_manifest(artifact).ranges.max_batch
        sizes = sorted({1, batch})
        port = _free_port()
        server = start_server(artifact, args, port)
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
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()},
        "versions": library_versions(),
    }
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
