"""The engine cache every building backend shares: where engines live, how one is trusted, how one is built.

An engine is a directory `engines/<backend>/<component>/<key16>/` holding the backend's files and a
`build.json` record. The key hashes what produced the engine (ONNX bytes, settings, library version,
hardware); the record repeats the key and lists every file of the engine with its size and sha256. A
load trusts an engine only when its record names the key and every file matches its digest (the hash
memo makes that a `stat` for unchanged files); anything else is logged, naming the file, and rebuilt.

The cache lives in the artifact, or with `cache_dir` (`--cache-dir`, `SDRT_CACHE_DIR`) in a directory
of its own, so the artifact may be read-only: engines are then looked for in the cache directory
first, then among the artifact's own prebuilt ones, and built into the cache directory. A build holds
an exclusive lock on its engine (a second process building the same engine waits, then reuses it);
a load verifies and opens an engine under a shared lock, so it never sees one being replaced.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdrt.engines.base import Networks
from sdrt.files import atomic_directory, file_lock, read_json_object
from sdrt.hashing import file_sha256, json_sha256
from sdrt.onnx_files import OnnxFile

log = logging.getLogger(__name__)

CACHE_ENV = "SDRT_CACHE_DIR"
ENGINES_DIR = "engines"
RECORD_FILE = "build.json"


@dataclass(frozen=True)
class EngineCache:
    """Where one artifact's engines are looked for and built."""

    artifact: Path  # the artifact directory
    cache_dir: Path | None = None  # a separate cache root (None: the artifact is the cache)

    @classmethod
    def for_artifact(cls, artifact: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> EngineCache:
        """The cache for `artifact`: `cache_dir`, else $SDRT_CACHE_DIR, else the artifact itself."""
        chosen = cache_dir if cache_dir is not None else os.environ.get(CACHE_ENV) or None
        return cls(Path(artifact), None if chosen is None else Path(chosen).expanduser())

    @property
    def root(self) -> Path:
        """Where engines are built."""
        return self.cache_dir if self.cache_dir is not None else self.artifact

    def backend_dir(self, backend: str) -> Path:
        """A backend's own corner of the cache (engines, timing caches, weight maps)."""
        return self.root / ENGINES_DIR / backend

    def engine_dir(self, backend: str, component: str, key: str) -> Path:
        return self.backend_dir(backend) / component / key[:16]

    def candidates(self, backend: str, component: str, key: str) -> list[Path]:
        """Directories that may hold the engine, in the order they are tried."""
        dirs = [self.engine_dir(backend, component, key)]
        if self.cache_dir is not None:  # engines prebuilt into the artifact serve a separate cache too
            dirs.append(self.artifact / ENGINES_DIR / backend / component / key[:16])
        return dirs

    def require_writable(self, what: str) -> None:
        """ValueError saying how to proceed when the cache root cannot be written (a read-only artifact)."""
        probe = self.root
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if os.access(probe, os.W_OK) and not _read_only_mount(probe):
            return
        if self.cache_dir is None:
            raise ValueError(
                f"artifact {self.artifact} is read-only and has no {what}: build engines into a separate cache "
                f"with --cache-dir DIR (or {CACHE_ENV}=DIR), or run 'sdrt build' on a writable copy first"
            )
        raise ValueError(f"cache directory {self.cache_dir} is not writable, so the {what} cannot be built there")


def _read_only_mount(path: Path) -> bool:
    """True on a read-only filesystem (root's os.access ignores that)."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def lock_path(directory: Path) -> Path:
    return directory.with_name(f".{directory.name}.lock")


def file_digests(directory: Path) -> dict[str, dict[str, Any]]:
    """Every file of an engine directory but its record, with its size and sha256."""
    return {
        str(p.relative_to(directory)): {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != RECORD_FILE
    }


def engine_problem(directory: Path, expected: Mapping[str, Any]) -> str | None:
    """Why the engine in `directory` must not be used (None when it may): record fields and file digests.

    `expected` holds record fields that must be equal (the key, library version, GPU ...).
    """
    if not directory.is_dir():
        return "not built yet"
    try:
        record = read_json_object(directory / RECORD_FILE)
    except ValueError as exc:
        return f"its record is unusable ({exc})"
    for field, value in expected.items():
        if record.get(field) != value:
            return f"it was built for {field} {record.get(field)!r}, not {value!r}"
    files = record.get("files")
    if not isinstance(files, dict) or not files:
        return f"its record lists no file digests (built by an older sdrt): {directory / RECORD_FILE}"
    for name, recorded in sorted(files.items()):
        path = directory / name
        if not path.is_file():
            return f"{path} is missing"
        size = path.stat().st_size
        if size != recorded.get("bytes"):
            return f"{path} has {size} bytes, its record says {recorded.get('bytes')} (truncated or replaced)"
        if file_sha256(path) != recorded.get("sha256"):
            return f"{path} does not match the sha256 in its build record (damaged or replaced)"
    return None


@dataclass(frozen=True)
class CachedEngine:
    """An engine directory that passed its checks."""

    path: Path  # the engine directory
    reused: bool  # True when it was already built
    seconds: float  # build time (0 when reused)
    record: Mapping[str, Any]  # its build.json


# fills an empty directory with an engine's files and returns the record fields to store with them
Builder = Callable[[Path], Mapping[str, Any]]


def ensure_engine(
    cache: EngineCache,
    backend: str,
    component: str,
    key: str,
    expected: Mapping[str, Any],
    build: Builder,
    what: str | None = None,
    rebuild: bool = False,
) -> CachedEngine:
    """The trusted engine for `key`: found in the cache, or built (once, under a lock) and recorded.

    An engine that fails its checks is logged with the reason and never used; it is rebuilt in place
    when it lies in the cache root. `rebuild=True` rebuilds even an engine that passes (one the backend
    itself refused to load).
    """
    what = what or f"{backend} engine for {component}"
    expected = {"key": key, **expected}
    if not rebuild:
        for directory in cache.candidates(backend, component, key):
            if not directory.is_dir():
                continue
            with file_lock(lock_path(directory), shared=True):
                problem = engine_problem(directory, expected)
            if problem is None:
                return CachedEngine(directory, True, 0.0, read_json_object(directory / RECORD_FILE))
            if directory.exists():
                log.warning("not using the %s in %s: %s; rebuilding it", what, directory, problem)
    target = cache.engine_dir(backend, component, key)
    cache.require_writable(what)
    with file_lock(lock_path(target)):
        if not rebuild:
            problem = engine_problem(target, expected)
            if problem is None:  # another process built it while this one waited for the lock
                log.info("reusing the %s another process just built in %s", what, target)
                return CachedEngine(target, True, 0.0, read_json_object(target / RECORD_FILE))
        log.info("building the %s", what)
        start = time.perf_counter()
        with atomic_directory(target) as tmp:
            fields = dict(build(tmp))
            seconds = time.perf_counter() - start
            record = {**fields, **expected, "component": component, "seconds": seconds, "files": file_digests(tmp)}
            (tmp / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return CachedEngine(target, False, seconds, record)


@contextmanager
def reading(directory: Path) -> Iterator[None]:
    """Hold the engine in `directory` against replacement while a backend opens its files."""
    with file_lock(lock_path(directory), shared=True):
        yield


def onnx_digests(artifact: Path, component: str, onnx_file: OnnxFile) -> dict[str, str | None]:
    """sha256 of a component's ONNX graph and external weights, the start of every engine key.

    A file that no longer matches the manifest's record was edited after export: the engine is built from
    the file as it is (its key follows the bytes), with a warning, since the manifest no longer describes it.
    """
    digests = {"onnx": file_sha256(artifact / onnx_file.path), "external_data": None}
    if onnx_file.external_data:
        digests["external_data"] = file_sha256(artifact / onnx_file.external_data)
    for field, rel, recorded in (
        ("onnx", onnx_file.path, onnx_file.sha256),
        ("external_data", onnx_file.external_data, onnx_file.external_data_sha256),
    ):
        if rel and recorded and digests[field] != recorded:
            log.warning("%s of %s differs from the sha256 in the manifest (edited after export?)", rel, component)
    return digests


def require_onnx(artifact: Path, manifest: Networks, backend: str) -> None:
    """ValueError unless every component of the manifest has its ONNX file (a model directory has none)."""
    missing = [n for n in manifest.components if n not in manifest.files]
    if missing:
        raise ValueError(
            f"{artifact} has no ONNX files for {', '.join(missing)}: the {backend} backend builds from an exported "
            "artifact (create one with 'sdrt export MODEL_DIR -o ARTIFACT_DIR')"
        )


def hardware_id(device: Any) -> str:
    """What an engine built for `device` (a torch.device) is specific to: the GPU model, or the CPU's features."""
    if device.type == "cuda":
        import torch

        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return f"{platform.machine()}:{json_sha256(sorted(line.split(':', 1)[1].split()))[:16]}"
    except OSError:
        pass
    return platform.machine()
