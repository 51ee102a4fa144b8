"""The float32 copy of an fp16 network that every building backend falls back to (an fp16 VAE that overflowed).

The copy is the fp16 graph upcast (`sdrt.onnx_files.upcast_model`): fp16 weights widened, every cast
to fp16 made one to fp32. It is written once into the engine cache, keyed on the fp16 graph's bytes,
and each backend builds its own engine from it the usual way.
"""

from __future__ import annotations

from pathlib import Path

from sdrt.engines.cache import EngineCache, ensure_engine, onnx_digests, reading
from sdrt.hashing import json_sha256
from sdrt.onnx_files import OnnxFile, save_onnx, upcast_model

UPCAST = "float32"  # the cache's "backend" directory for upcast graphs
UPCAST_RECIPE = 1


def float32_name(component: str) -> str:
    """The name a component's float32 copy is cached and built under."""
    return f"{component}.float32"


def float32_onnx(cache: EngineCache, artifact: Path, component: str, onnx_file: OnnxFile) -> tuple[Path, OnnxFile]:
    """(root, file) of the upcast graph of `component`, written into the cache when missing; paths under root."""
    import onnx

    key = json_sha256({"recipe": UPCAST_RECIPE, **onnx_digests(artifact, component, onnx_file)})

    def write(tmp: Path) -> dict:
        model = onnx.load(str(artifact / onnx_file.path), load_external_data=True)
        described = save_onnx(upcast_model(model), tmp, tmp)
        return {"onnx": vars(described)}

    engine = ensure_engine(cache, UPCAST, component, key, {}, write, what=f"float32 copy of the {component} graph")
    with reading(engine.path):
        return engine.path, OnnxFile(**engine.record["onnx"])
