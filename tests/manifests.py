"""Manifests of every model family, as `sdrt export` writes them, for the tests of the manifest's JSON Schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sdrt
from sdrt.manifest import DataFile, Manifest
from sdrt.model_dir import ModelDir
from sdrt.onnx_files import OnnxFile
from sdrt.spec import ShapeRanges

SCHEMA_PATH = Path(sdrt.__file__).parent / "manifest.schema.json"  # shipped with the package (setup.py)
FAKE_SHA = "0" * 64
# every family, every kind (the ControlNets for SD 1.x and SDXL: family controlnet)
VARIANTS = ["sd1", "sd2", "inpaint", "sdxl", "sdxl-refiner", "sdxl-inpaint", "unclip", "controlnet", "controlnet-sdxl"]


def family_manifest(model: Path, latent_factor: int = 8) -> dict[str, Any]:
    """The manifest an export of `model` writes (its files named as the exporter names them, their hashes made up)."""
    ranges = ShapeRanges(max_batch=2, min_size=64, max_size=256, opt_size=128, latent_factor=latent_factor)
    manifest = Manifest.for_model(ModelDir.open(model), ranges)
    files = {name: OnnxFile(f"{name}/model.onnx", FAKE_SHA) for name in manifest.components}
    tables = {
        name: DataFile(f"{name}/token_embeddings.safetensors", FAKE_SHA)
        for name, spec in manifest.components.items()
        if spec.role == "text_encoder"
    }
    return manifest.with_files(files, {"sdrt": "0.1.0", "onnx_opset": "17"}, tables).to_json()


def schema_validator():
    import json

    import jsonschema

    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)
