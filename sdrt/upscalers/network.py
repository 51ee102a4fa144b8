"""An upscaler network described once as data (its `ComponentSpec`), and its exported artifact on disk.

The spec is what the exporter traces, every backend builds and checks feeds against, and the tiled runner
sizes its calls by: images (B, 3, h, w) in [0, 1] -> (B, 3, s*h, s*w). Shapes use the specs' image symbols at
latent factor 1, so an upscaler's "latent" height and width are its input's pixels and an artifact's size range
counts input pixels. An exported artifact (`upscaler.json` beside `upscaler/model.onnx`) is what the engines
read (`engines.base.Networks`): the spec, its ONNX file, its shapes and the hash of the weights it came from.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdrt.files import read_json_object
from sdrt.onnx_files import OnnxFile
from sdrt.spec import ComponentSpec, ShapeRanges, TensorSpec

UPSCALER = "upscaler"  # the network's name in an upscaler artifact
ARTIFACT_FILE = "upscaler.json"
FORMAT_VERSION = 1
# the shapes an upscaler artifact accepts by default: the web UI's 192-pixel tiles (opt), whole images up to 512
DEFAULT_RANGES = ShapeRanges(max_batch=4, min_size=16, max_size=512, opt_size=192, latent_factor=1)


def upscaler_spec(scale: int, multiple: int = 1) -> ComponentSpec:
    """Images (B, 3, h, w) float32 in [0, 1] -> upscaled images (B, 3, scale*h, scale*w), h and w multiples of
    `multiple` (a SwinIR's window, a pixel-unshuffling ESRGAN's block)."""
    return ComponentSpec(
        name=UPSCALER,
        inputs=(TensorSpec("image", "float32", ("batch", 3, "latent_height", "latent_width")),),
        outputs=(TensorSpec("upscaled", "float32", ("batch", 3, f"{scale}*latent_height", f"{scale}*latent_width")),),
        role="upscaler",
        attributes={"scale": scale, "multiple": multiple},
    )


@dataclass(frozen=True)
class UpscalerArtifact:
    """An exported upscaler: what it is, its one network's spec and ONNX file, and the shapes it accepts."""

    name: str  # the file stem it was exported from
    architecture: str  # "ESRGAN", "Compact" or "SwinIR"
    description: str  # e.g. "ESRGAN x4 (23 blocks, 64 features)"
    source_sha256: str  # sha256 of the upscaler file
    ranges: ShapeRanges  # input sizes (pixels) and batch
    components: Mapping[str, ComponentSpec]  # {"upscaler": its spec}
    files: Mapping[str, OnnxFile] = field(default_factory=dict)  # {"upscaler": its ONNX file}
    versions: Mapping[str, str] = field(default_factory=dict)  # library versions of the export
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.format_version != FORMAT_VERSION:
            raise ValueError(f"upscaler artifact format {self.format_version} is not {FORMAT_VERSION}; export again")
        if set(self.components) != {UPSCALER} or self.components[UPSCALER].role != "upscaler":
            raise ValueError(f"an upscaler artifact holds one network named {UPSCALER!r}, not {list(self.components)}")
        if self.ranges.latent_factor != 1:
            raise ValueError(f"upscaler ranges count input pixels (latent factor 1), not {self.ranges.latent_factor}")

    @property
    def spec(self) -> ComponentSpec:
        return self.components[UPSCALER]

    @property
    def scale(self) -> int:
        return int(self.spec.attributes["scale"])

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "name": self.name,
            "architecture": self.architecture,
            "description": self.description,
            "source_sha256": self.source_sha256,
            "ranges": self.ranges.to_json(),
            "components": {
                n: {**s.to_json(), "onnx": vars(self.files[n]) if n in self.files else None}
                for n, s in self.components.items()
            },
            "versions": dict(self.versions),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> UpscalerArtifact:
        try:
            return cls(
                name=str(data["name"]),
                architecture=str(data["architecture"]),
                description=str(data["description"]),
                source_sha256=str(data["source_sha256"]),
                ranges=ShapeRanges.from_json(data["ranges"]),
                components={n: ComponentSpec.from_json(c) for n, c in data["components"].items()},
                files={n: OnnxFile(**c["onnx"]) for n, c in data["components"].items() if c.get("onnx")},
                versions=dict(data.get("versions", {})),
                format_version=int(data["format_version"]),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"upscaler artifact description is malformed: {exc!r}") from exc

    def write(self, directory: Path) -> None:
        (directory / ARTIFACT_FILE).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def read(cls, directory: str | os.PathLike) -> UpscalerArtifact:
        """The artifact in `directory`; ValueError when it is missing, malformed or incomplete."""
        root = Path(directory)
        artifact = cls.from_json(read_json_object(root / ARTIFACT_FILE))
        for name, onnx_file in artifact.files.items():
            if not (root / onnx_file.path).is_file():
                raise ValueError(f"upscaler artifact {root} is incomplete: {name} file {onnx_file.path} is missing")
        return artifact
