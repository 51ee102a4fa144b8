"""Directories of network files that prompts name by file stem, as the web UI names them: LoRAs
(`<lora:name:weight>`, `.safetensors`) and hypernetworks (`<hypernet:name:multiplier>`, `.pt`).

Each library also gives a file's short hash as the web UI writes it in infotexts: a LoRA's is the first 12 hex
digits of its `sshs_model_hash` metadata or of the sha256 of its tensor data (kohya's and the Additional
Networks extension's hash: the file without its safetensors header); a hypernetwork's the first 10 of the
file's sha256.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from sdrt.hashing import file_sha256

log = logging.getLogger(__name__)

LORA_SUFFIX = ".safetensors"  # LoRAs are read as safetensors only (sdrt.lora)
HYPERNETWORK_SUFFIX = ".pt"  # the web UI's hypernetwork files
_CHUNK = 1 << 20


@dataclass(frozen=True)
class NetworkLibrary:
    """The files of one kind under a directory, by name (their file stems, subfolders included)."""

    kind: ClassVar[str] = "network"
    suffix: ClassVar[str] = ""
    option: ClassVar[str] = ""  # the Pipeline.load argument and CLI flag that give the directory

    directory: Path | None = None
    files: Mapping[str, Path] = field(default_factory=dict)
    duplicates: Mapping[str, tuple[Path, ...]] = field(default_factory=dict)  # names several files share
    _hashes: dict = field(default_factory=dict, compare=False, repr=False)  # (path, mtime, size) -> short hash

    @classmethod
    def load(cls, directory: str | os.PathLike):
        """Index every file of this kind under `directory` (nothing is read until a prompt names it)."""
        root = Path(directory)
        if not root.is_dir():
            raise ValueError(f"{cls.kind} directory {root} does not exist or is not a directory")
        found: dict[str, list[Path]] = {}
        for path in sorted(root.rglob(f"*{cls.suffix}")):
            if path.is_file():
                found.setdefault(path.stem, []).append(path)
        files = {name: paths[0] for name, paths in found.items() if len(paths) == 1}
        duplicates = {name: tuple(paths) for name, paths in found.items() if len(paths) > 1}
        for name, paths in duplicates.items():
            log.warning("%s name %s is ambiguous: %s", cls.kind, name, ", ".join(map(str, paths)))
        return cls(root, files, duplicates)

    def reloaded(self):
        """The library read again from its directory (new files picked up, removed ones dropped)."""
        return self if self.directory is None else type(self).load(self.directory)

    def resolve(self, name: str) -> Path:
        """The file a prompt's tag means; ValueError naming what there is instead."""
        if self.directory is None:
            raise ValueError(
                f"the prompt names {self.kind} {name!r}, but the pipeline was loaded without a {self.kind} directory "
                f"({self.option})"
            )
        if name in self.duplicates:
            raise ValueError(f"{self.kind} {name!r} is ambiguous: {', '.join(map(str, self.duplicates[name]))}")
        if name not in self.files:
            known = ", ".join(sorted(self.files)[:20]) or "none"
            raise ValueError(f"{self.kind} {name!r} is not in {self.directory} (it has: {known})")
        return self.files[name]

    def short_hash(self, path: Path) -> str:
        """The web UI's short hash of one of the library's files, computed once per file version."""
        stat = path.stat()
        key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
        if key not in self._hashes:
            self._hashes[key] = self._hash(path)
        return self._hashes[key]

    def _hash(self, path: Path) -> str:
        return file_sha256(path)[:10]


@dataclass(frozen=True)
class LoraLibrary(NetworkLibrary):
    """The LoRA (and LyCORIS) files under a directory."""

    kind: ClassVar[str] = "LoRA"
    suffix: ClassVar[str] = LORA_SUFFIX
    option: ClassVar[str] = "lora_dir / --lora-dir"

    def metadata(self, name: str) -> dict[str, str]:
        """The file's safetensors metadata (kohya's ss_* training notes), empty when it has none or is unreadable."""
        return safetensors_metadata(self.files[name])

    def _hash(self, path: Path) -> str:
        recorded = safetensors_metadata(path).get("sshs_model_hash", "")
        return (recorded or addnet_sha256(path))[:12]


@dataclass(frozen=True)
class HypernetworkLibrary(NetworkLibrary):
    """The hypernetwork files under a directory."""

    kind: ClassVar[str] = "hypernetwork"
    suffix: ClassVar[str] = HYPERNETWORK_SUFFIX
    option: ClassVar[str] = "hypernetwork_dir / --hypernetwork-dir"


def safetensors_metadata(path: Path) -> dict[str, str]:
    """A safetensors file's metadata; empty when it has none or cannot be read."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError):
        return {}


def addnet_sha256(path: Path) -> str:
    """sha256 of a safetensors file's tensor data: the bytes after its 8-byte length and JSON header (kohya's hash)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        header = int.from_bytes(f.read(8), "little")
        f.seek(8 + header)
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()
