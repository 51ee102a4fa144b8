"""The models a server can serve: artifacts named on the command line and the subdirectories of `--model-dir`.

Each entry is read from its manifest (or, for the torch backend, its diffusers model directory) when the catalog
is scanned: its name (the directory's), its web UI title and hash, its family and the bytes of weights it loads.
Nothing is loaded here; `sdrt.serve.model_pool` loads and evicts. An entry whose files cannot be read stays in
the catalog with the reason, so a request naming it gets that reason rather than "unknown model".
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sdrt.excerpt import excerpt
from sdrt.manifest import MANIFEST_NAME, read_manifest
from sdrt.model_dir import ModelDir
from sdrt.serve.errors import InputError

log = logging.getLogger(__name__)

MAX_LISTED = 20  # most model names an "unknown model" error lists


@dataclass(frozen=True)
class CatalogEntry:
    """One servable model, as its files describe it."""

    name: str  # the artifact (or model) directory's name: unique in a catalog
    path: Path  # where it is loaded from
    sha256: str = ""  # the source model's weights hash (the web UI's hash is its first 10 digits); "" if unreadable
    family: str = ""  # sdrt family name (sd1, sdxl, unclip, ...)
    weight_bytes: int = 0  # bytes of the weight files a load reads: the estimate of its memory
    error: str | None = None  # why it cannot be served (its manifest or model files are unreadable)

    @property
    def title(self) -> str:
        """The web UI's checkpoint title, "name [hash]"."""
        return f"{self.name} [{self.sha256[:10]}]" if self.sha256 else self.name

    def aliases(self) -> set[str]:
        """What clients may call it: title, name, name with a file suffix, short or full hash."""
        names = {self.title, self.name, f"{self.name}.safetensors", f"{self.name}.ckpt"}
        return names | ({self.sha256[:10], self.sha256} if self.sha256 else set())


def describe(path: str | os.PathLike, name: str | None = None) -> CatalogEntry:
    """A catalog entry for an artifact or a diffusers model directory; an entry with `error` if it is unreadable."""
    root = Path(path)
    name = name or Path(os.path.abspath(root)).name  # a link's own name, not its target's
    try:
        if (root / MANIFEST_NAME).is_file():
            manifest = read_manifest(root)
            rels = [f.path for f in manifest.token_tables.values()]
            rels += [rel for f in manifest.files.values() for rel in (f.path, f.external_data) if rel is not None]
            return CatalogEntry(name, root, manifest.source_sha256, manifest.family, _bytes(root, rels))
        if (root / "model_index.json").is_file():
            model = ModelDir.open(root)
            return CatalogEntry(
                name, root, model.weights_sha256(), model.family.name, _bytes(root, model.weight_files())
            )
        raise ValueError(f"{root} is neither an sdrt artifact (no {MANIFEST_NAME}) nor a diffusers model directory")
    except (ValueError, OSError) as exc:
        return CatalogEntry(name, root, error=f"{type(exc).__name__}: {exc}")


def _bytes(root: Path, rels: Iterable[str]) -> int:
    return sum((root / rel).stat().st_size for rel in rels)


def is_model_directory(path: Path) -> bool:
    return (path / MANIFEST_NAME).is_file() or (path / "model_index.json").is_file()


class ModelCatalog:
    """The servable models by name: the given artifacts (the first is the default) and a model directory's."""

    def __init__(self, paths: Sequence[str | os.PathLike] = (), model_dir: str | os.PathLike | None = None) -> None:
        if not paths and model_dir is None:
            raise ValueError("no models to serve: give artifacts, or a model directory (--model-dir)")
        self.paths = tuple(Path(p) for p in paths)
        self.model_dir = None if model_dir is None else Path(model_dir)
        if self.model_dir is not None and not self.model_dir.is_dir():
            raise ValueError(f"model directory {self.model_dir} does not exist or is not a directory")
        self.entries: dict[str, CatalogEntry] = {}
        self.scan()

    @classmethod
    def of(cls, entries: Sequence[CatalogEntry]) -> ModelCatalog:
        """A fixed catalog of these entries (a server around pipelines already loaded)."""
        catalog = cls.__new__(cls)
        catalog.paths, catalog.model_dir = tuple(e.path for e in entries), None
        catalog.entries = {e.name: e for e in entries}
        return catalog

    def scan(self) -> tuple[list[str], list[str], list[str]]:
        """Read the entries again (the web UI's refresh-checkpoints): names added, removed and changed."""
        found: dict[str, CatalogEntry] = {}
        for path in self.paths:
            entry = describe(path)
            if entry.name in found:
                raise ValueError(
                    f"two models are named {entry.name!r} ({found[entry.name].path} and {path}): "
                    "models are named by their directory, which must differ"
                )
            found[entry.name] = entry
        if self.model_dir is not None:
            for child in sorted(self.model_dir.iterdir()):
                if child.is_dir() and child.name not in found and is_model_directory(child):
                    found[child.name] = describe(child)
        for entry in found.values():
            if entry.error is not None:
                log.warning("model %s cannot be served: %s", entry.name, entry.error)
        old = self.entries
        self.entries = found
        added = [n for n in found if n not in old]
        removed = [n for n in old if n not in found]
        changed = [n for n in found if n in old and found[n] != old[n]]
        return added, removed, changed

    @property
    def default(self) -> str:
        """The first given artifact, else the model directory's first servable model by name."""
        if not self.entries:
            raise ValueError(f"model directory {self.model_dir} holds no sdrt artifacts or diffusers models")
        servable = [e.name for e in self.entries.values() if e.error is None]
        first = next(iter(self.entries))
        if self.paths or not servable:
            return first
        return servable[0]

    def servable(self) -> list[CatalogEntry]:
        return [e for e in self.entries.values() if e.error is None]

    def get(self, name: str) -> CatalogEntry | None:
        return self.entries.get(name)

    def resolve(self, value: object, field: str) -> CatalogEntry:
        """The entry a client's model name means (name, title, file name or hash); InputError naming the names."""
        if isinstance(value, str):
            entry = self.entries.get(value)
            if entry is not None:
                return entry
            for entry in self.entries.values():
                if value in entry.aliases():
                    return entry
        names = [e.title for e in self.servable()]
        shown = ", ".join(repr(n) for n in names[:MAX_LISTED]) + (" ..." if len(names) > MAX_LISTED else "")
        raise InputError(field, f"{field} {excerpt(value)} is not a model this server has; it has {shown}")
