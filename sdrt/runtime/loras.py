"""A directory of LoRA files that prompts name by file stem (`<lora:name:weight>`), as the web UI names them."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

LORA_SUFFIX = ".safetensors"  # LoRAs are read as safetensors only (sdrt.lora)


@dataclass(frozen=True)
class LoraLibrary:
    """The LoRA files under a directory, by name (their file stems, subfolders included)."""

    directory: Path | None = None
    files: Mapping[str, Path] = field(default_factory=dict)
    duplicates: Mapping[str, tuple[Path, ...]] = field(default_factory=dict)  # names several files share

    @classmethod
    def load(cls, directory: str | os.PathLike) -> LoraLibrary:
        """Index every .safetensors file under `directory` (nothing is read until a prompt names it)."""
        root = Path(directory)
        if not root.is_dir():
            raise ValueError(f"LoRA directory {root} does not exist or is not a directory")
        found: dict[str, list[Path]] = {}
        for path in sorted(root.rglob(f"*{LORA_SUFFIX}")):
            if path.is_file():
                found.setdefault(path.stem, []).append(path)
        files = {name: paths[0] for name, paths in found.items() if len(paths) == 1}
        duplicates = {name: tuple(paths) for name, paths in found.items() if len(paths) > 1}
        for name, paths in duplicates.items():
            log.warning("LoRA name %s is ambiguous: %s", name, ", ".join(map(str, paths)))
        return cls(root, files, duplicates)

    def resolve(self, name: str) -> Path:
        """The file a prompt's `<lora:name>` means; ValueError naming what there is instead."""
        if self.directory is None:
            raise ValueError(
                f"the prompt names LoRA {name!r}, but the pipeline was loaded without a LoRA directory "
                "(lora_dir / --lora-dir)"
            )
        if name in self.duplicates:
            raise ValueError(f"LoRA {name!r} is ambiguous: {', '.join(map(str, self.duplicates[name]))}")
        if name not in self.files:
            known = ", ".join(sorted(self.files)[:20]) or "none"
            raise ValueError(f"LoRA {name!r} is not in {self.directory} (it has: {known})")
        return self.files[name]

    def metadata(self, name: str) -> dict[str, str]:
        """The file's safetensors metadata (kohya's ss_* training notes), empty when it has none or is unreadable."""
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(self.files[name]), framework="pt") as f:
                return dict(f.metadata() or {})
        except (SafetensorError, OSError):
            return {}
