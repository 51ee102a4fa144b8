"""Cold start, each in a fresh process: engine build from an empty cache, then load to first image.

The parent runs `python -m sdrt.bench.fresh_process IN.json OUT.json` once per phase. An artifact's
engines are built into a scratch copy of it (its files hard-linked, `engines/` empty), so the build is
timed from scratch without touching the artifact's own cache; the load then uses those engines, as a
deployment that ran `sdrt build` would. torch.compile's on-disk kernel caches are pointed at an empty
directory, so the compiled baseline compiles from nothing. The disk's page cache is not dropped (that
needs root and slows everyone else): "cold" means a fresh process, not a cold disk.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sdrt.bench.scenario import Scenario
from sdrt.bench.weights import ContenderSpec

log = logging.getLogger(__name__)

_STDERR_TAIL = 2000


@dataclass(frozen=True)
class ColdStart:
    """A fresh process's cost to serve its first image (seconds, bytes)."""

    load_seconds: float  # Pipeline.load (or diffusers' from_pretrained and .to(device)), engines already built
    first_image_seconds: float  # the first generation, synchronized (torch.compile compiles here)
    process_seconds: float  # the whole process, interpreter start to exit: imports + load + first image + exit
    peak_rss_bytes: int  # that process's peak RSS (ru_maxrss)
    peak_gpu_allocated_bytes: int | None  # torch.cuda.max_memory_allocated in that process
    gpu_used_bytes: int | None  # peak device memory in use minus that before loading (includes ONNX Runtime's)
    build_seconds: float | None  # engine build from an empty cache, all components; None: nothing to build
    build: tuple[dict[str, Any], ...] = ()  # per component: {"component", "seconds"}
    build_peak_rss_bytes: int | None = None  # the build process's peak RSS

    @property
    def load_to_first_image_seconds(self) -> float:
        return self.load_seconds + self.first_image_seconds

    def to_json(self) -> dict[str, Any]:
        data = {k: getattr(self, k) for k in self.__dataclass_fields__}
        data["build"] = list(self.build)
        data["load_to_first_image_seconds"] = self.load_to_first_image_seconds
        return data


def measure_cold_start(spec: ContenderSpec, scenario: Scenario) -> ColdStart:
    """Build (artifacts only) and load-to-first-image of `spec`, each in a fresh process; ValueError on failure."""
    from sdrt.manifest import MANIFEST_NAME

    path = Path(spec.path)
    if not (path / MANIFEST_NAME).is_file():
        return _cold_start(_child("run", spec, scenario), build=None)
    with scratch_artifact(path) as scratch:
        spec = replace(spec, path=str(scratch))
        build = _child("build", spec, scenario)
        run = _child("run", spec, scenario)
    return _cold_start(run, build)


def _cold_start(run: dict[str, Any], build: dict[str, Any] | None) -> ColdStart:
    built = tuple({"component": b["component"], "seconds": b["seconds"]} for b in (build or {}).get("build", []))
    return ColdStart(
        load_seconds=run["load_seconds"],
        first_image_seconds=run["first_image_seconds"],
        process_seconds=run["process_seconds"],
        peak_rss_bytes=run["peak_rss_bytes"],
        peak_gpu_allocated_bytes=run["peak_gpu_allocated_bytes"],
        gpu_used_bytes=run["gpu_used_bytes"],
        build_seconds=sum(b["seconds"] for b in built) if built else None,
        build=built,
        build_peak_rss_bytes=None if build is None else build["peak_rss_bytes"],
    )


@contextmanager
def scratch_artifact(artifact: Path) -> Iterator[Path]:
    """A temporary sibling of `artifact` with the same files (hard links where possible) and no engines."""
    scratch = Path(tempfile.mkdtemp(prefix=f".{artifact.name}.coldstart-", dir=artifact.parent))
    try:
        for source in artifact.rglob("*"):
            rel = source.relative_to(artifact)
            if rel.parts[0] == "engines" or not source.is_file():
                continue
            target = scratch / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source, target)
            except OSError:  # another filesystem, or links not allowed: copy
                shutil.copy2(source, target)
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _child(phase: str, spec: ContenderSpec, scenario: Scenario) -> dict[str, Any]:
    """Run one phase in a fresh interpreter; its JSON result, with the process's wall seconds added."""
    import sdrt

    with tempfile.TemporaryDirectory(prefix="sdrt-coldstart-") as tmp:
        request, result = Path(tmp) / "in.json", Path(tmp) / "out.json"
        request.write_text(json.dumps({"phase": phase, "spec": spec.to_json(), "scenario": scenario.to_json()}))
        env = dict(os.environ)
        # the child imports this same sdrt, wherever it lies
        here = str(Path(sdrt.__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
        # torch.compile keeps compiled kernels on disk between processes: a cold start compiles from nothing
        env["TORCHINDUCTOR_CACHE_DIR"] = str(Path(tmp) / "inductor")
        env["TRITON_CACHE_DIR"] = str(Path(tmp) / "triton")
        env.pop("SDRT_CACHE_DIR", None)  # the build must go into the empty scratch artifact, not a shared cache
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "sdrt.bench.fresh_process", str(request), str(result)],
            env=env,
            capture_output=True,
            text=True,
        )
        data_seconds = time.perf_counter() - start
        if proc.returncode != 0 or not result.is_file():
            raise ValueError(
                f"cold-start {phase} of {spec.backend} failed (exit {proc.returncode}): {proc.stderr[-_STDERR_TAIL:]}"
            )
        data = json.loads(result.read_text())
    data["process_seconds"] = data_seconds
    return data
