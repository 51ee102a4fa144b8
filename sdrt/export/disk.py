"""Free disk space against what an export will write, checked before the export starts (not an hour into it).

The estimate is read from the safetensors headers alone (no weights loaded): every floating-point
weight of every model part as float32 (the exported graphs' type, whatever the source's), which is
about the sum over the networks, since each holds the weights of its part (the VAE's two halves split
the VAE's). A network exported in fp16 is written in float32 first and converted beside it, so its
part counts twice. Tracing writes each network to a scratch file in the system's temporary directory
before moving it into the artifact: that needs room for the largest part there.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sdrt.model_dir import ModelDir

log = logging.getLogger(__name__)

MARGIN = 1.05  # ONNX graph structure, tokenizers, scheduler config, manifest
# bytes per element of each safetensors dtype once exported: floating point becomes float32
_EXPORTED_BYTES = {"F64": 4, "F32": 4, "F16": 4, "BF16": 4, "F8_E4M3": 4, "F8_E5M2": 4, "I64": 8, "I32": 4}
_GB = 1e9


def _size(n: int) -> str:
    return f"{n / _GB:.2f} GB" if n >= _GB / 10 else f"{n / 1e6:.1f} MB"


@dataclass(frozen=True)
class ExportSize:
    """Bytes an export needs, by model part and in all."""

    parts: Mapping[str, int]  # model part -> its weights as exported (float32)
    fp16_parts: frozenset[str]  # parts whose networks are converted to fp16 (written twice)

    @property
    def artifact_bytes(self) -> int:
        """Room needed beside the artifact directory (its temporary sibling holds everything until the rename)."""
        written = sum(size * (2 if part in self.fp16_parts else 1) for part, size in self.parts.items())
        return math.ceil(written * MARGIN)

    @property
    def scratch_bytes(self) -> int:
        """Room needed in the temporary directory: one traced network at a time."""
        return max(self.parts.values(), default=0)

    def describe(self) -> str:
        parts = ", ".join(
            f"{name} {_size(size)}{' (x2: fp16 conversion)' if name in self.fp16_parts else ''}"
            for name, size in self.parts.items()
        )
        return f"{parts}; {_size(self.artifact_bytes)} with {MARGIN - 1:.0%} margin"


def part_of(network: str, parts: list[str]) -> str | None:
    """The model part a network is traced from, by name: text_encoder_2 from text_encoder_2, vae_decoder from vae."""
    matches = [p for p in parts if network == p or network.startswith(f"{p}_")]
    return max(matches, key=len, default=None)


def export_size(model: ModelDir, fp16_networks: frozenset[str] = frozenset()) -> ExportSize:
    """What exporting `model` writes, from its weight files' headers; `fp16_networks` are converted to fp16."""
    from safetensors import safe_open

    names = [p.name for p in model.family.model_parts]
    fp16_parts = frozenset(p for p in (part_of(n, names) for n in fp16_networks) if p is not None)

    parts = {}
    for part in model.family.model_parts:
        total = 0
        with safe_open(str(model.path / model.weight_file(part.name)), framework="numpy") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                tensor = f.get_slice(name)
                total += math.prod(tensor.get_shape()) * _EXPORTED_BYTES.get(tensor.get_dtype(), 4)
        parts[part.name] = total
    return ExportSize(parts, fp16_parts)


def check_free_space(size: ExportSize, artifact_dir: Path) -> None:
    """ValueError with the numbers when the artifact's filesystem or the temporary directory lacks the room."""
    parent = artifact_dir.resolve().parent
    while not parent.exists():
        parent = parent.parent
    scratch = Path(tempfile.gettempdir())
    needs = {parent: size.artifact_bytes}
    if scratch.stat().st_dev == parent.stat().st_dev:
        needs[parent] += size.scratch_bytes
    else:
        needs[scratch] = size.scratch_bytes
    for where, needed in needs.items():
        free = shutil.disk_usage(where).free
        if free < needed:
            raise ValueError(
                f"the export needs about {_size(needed)} free in {where}, which has {_size(free)} "
                f"({size.describe()}); free some space or export elsewhere with -o"
            )
    log.info("the export will write about %s (%s)", _size(size.artifact_bytes), size.describe())
