"""A directory of upscaler files, listed by file stem with each model's true scale, loaded onto engines on first
use (the web UI's `--esrgan-models-path` and friends, as one `--upscaler-dir`).

Engines come from a factory the caller picks for its backend: the torch module itself here
(`torch_engines`), or an ONNX export on any other backend (`sdrt.export.upscalers`). At most `max_loaded`
upscalers stay loaded, the least recently used dropped first: each holds its weights.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdrt.engines import Engine, load_engines
from sdrt.excerpt import excerpt
from sdrt.spec import ShapeRanges
from sdrt.upscalers.models import SUFFIXES, UpscalerModel, load_upscaler
from sdrt.upscalers.network import DEFAULT_RANGES, UPSCALER, upscaler_spec
from sdrt.upscalers.upscaler import Tiling, Upscaler

log = logging.getLogger(__name__)

EngineFactory = Callable[[UpscalerModel], Engine]
DEFAULT_TILING = Tiling()


@dataclass(frozen=True)
class UpscalerEntry:
    """One file of the directory as listings show it."""

    name: str  # the file's stem
    path: Path
    architecture: str
    scale: int
    description: str


@dataclass(frozen=True)
class _ModuleNetworks:
    """The `Networks` a torch engine is loaded from: one upscaler spec, no ONNX."""

    components: dict
    ranges: ShapeRanges
    files: dict
    source_sha256: str = ""


def torch_engines(device: str = "cpu", ranges: ShapeRanges = DEFAULT_RANGES, **options: Any) -> EngineFactory:
    """Engines that run an upscaler's torch module itself (the reference; fast on a GPU too)."""

    def make(model: UpscalerModel) -> Engine:
        networks = _ModuleNetworks({UPSCALER: upscaler_spec(model.scale, model.multiple)}, ranges, {})
        engines = load_engines(model.path.parent, networks, "torch", device, modules=lambda: {UPSCALER: model.module()},
                               **options)  # fmt: skip
        return engines[UPSCALER]

    return make


class UpscalerLibrary:
    """The upscalers of a directory by name; thread-safe."""

    def __init__(
        self,
        directory: str | os.PathLike,
        engines: EngineFactory | None = None,
        tiling: Tiling = DEFAULT_TILING,
        max_loaded: int = 2,
    ) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise ValueError(f"upscaler directory {self.directory} does not exist or is not a directory")
        if max_loaded < 1:
            raise ValueError(f"max_loaded {max_loaded} must be at least 1")
        self.engines = engines or torch_engines()
        self.tiling = tiling
        self.max_loaded = max_loaded
        self._entries: dict[Path, tuple[tuple[int, int], UpscalerEntry | None]] = {}
        self._loaded: OrderedDict[str, Upscaler] = OrderedDict()
        self._lock = threading.Lock()

    def files(self) -> dict[str, Path]:
        """Stem -> file of every upscaler file in the directory (sorted by name)."""
        found = sorted(p for p in self.directory.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
        return {p.stem: p for p in found}

    def entries(self) -> list[UpscalerEntry]:
        """Every readable upscaler file, detected (cached until the file changes); unreadable ones are logged."""
        out = []
        for path in self.files().values():
            entry = self._entry(path)
            if entry is not None:
                out.append(entry)
        return out

    def _entry(self, path: Path) -> UpscalerEntry | None:
        stat = path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            cached = self._entries.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            model = load_upscaler(path)
            entry: UpscalerEntry | None = UpscalerEntry(
                model.name, path, model.architecture, model.scale, model.describe()
            )
        except ValueError as exc:
            log.warning("skipping upscaler file %s: %s", path.name, exc)
            entry = None
        with self._lock:
            self._entries[path] = (stamp, entry)
        return entry

    def names(self) -> list[str]:
        return [e.name for e in self.entries()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.files()

    def check(self, name: str) -> None:
        """ValueError unless `name` is a file here sdrt can run (its weights read and detected)."""
        path = self.files().get(name)
        if path is None:
            raise ValueError(
                f"no upscaler {excerpt(name)} in {self.directory}; it has {', '.join(self.names()) or 'none'}"
            )
        if self._entry(path) is None:
            raise ValueError(f"upscaler file {path.name} cannot be read as an upscaler (see the server's log)")

    def get(self, name: str) -> Upscaler:
        """The upscaler of file stem `name`, loaded onto its engine on first use."""
        with self._lock:
            if name in self._loaded:
                self._loaded.move_to_end(name)
                return self._loaded[name]
        self.check(name)
        model = load_upscaler(self.files()[name])
        log.info("loading upscaler %s: %s", name, model.describe())
        upscaler = Upscaler(name, self.engines(model), self.tiling)
        with self._lock:
            self._loaded[name] = upscaler
            while len(self._loaded) > self.max_loaded:
                self._loaded.popitem(last=False)
        return upscaler
