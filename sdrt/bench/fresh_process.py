"""Entry point of a cold-start child process: `python -m sdrt.bench.fresh_process IN.json OUT.json`.

Phase "build" builds an artifact's engines and reports each component's build time; phase "run" loads
the contender and makes its first image, reporting both times and the process's peak memory.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from sdrt.bench.scenario import Scenario
from sdrt.bench.weights import ContenderSpec


def main(request: Path, result: Path) -> None:
    """Run the phase that `request` names and write its JSON result to `result`."""
    import torch

    from sdrt.bench.memory import MemorySampler, process_peak_rss
    from sdrt.bench.runners import load_runner, sync
    from sdrt.library_logging import quiet_third_party

    quiet_third_party()
    data = json.loads(request.read_text())
    spec = ContenderSpec.from_json(data["spec"])
    fields = dict(data["scenario"])
    fields.pop("contender")
    scenario = Scenario(**fields)
    if data["phase"] == "build":
        from sdrt.engines import build_engines
        from sdrt.manifest import read_manifest

        records = build_engines(spec.path, read_manifest(spec.path), spec.backend, spec.device)
        out: dict[str, Any] = {
            "build": [{"component": r.component, "seconds": r.seconds, "reused": r.reused} for r in records],
            "peak_rss_bytes": process_peak_rss(),
        }
    else:
        device = torch.device(spec.device)
        if device.type == "cuda":  # the CUDA context is not the pipeline's memory: create it before measuring
            torch.zeros(1, device=device)
            torch.cuda.synchronize(device)
        with MemorySampler(device) as sampler, sampler.window() as window:
            start = time.perf_counter()
            runner = load_runner(spec)
            sync(device)
            loaded = time.perf_counter()
            runner.run(scenario, seed=0)
            sync(device)
            done = time.perf_counter()
        out = {
            "load_seconds": loaded - start,
            "first_image_seconds": done - loaded,
            "peak_rss_bytes": process_peak_rss(),
            "peak_gpu_allocated_bytes": window.gpu_allocated_peak,
            "gpu_used_bytes": None if window.gpu_used_peak is None else window.gpu_used_peak - window.gpu_used_start,
        }
    result.write_text(json.dumps(out))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
