"""ONNX files as an artifact holds them: where a graph lies, its weights file, their hashes, and writing them.

Shared by the exporter (which writes graphs) and the engines (which read them, and write the float32 copy of
an fp16 graph), so neither room imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sdrt.hashing import file_sha256
from sdrt.lazy import deferred

if TYPE_CHECKING:
    import onnx
else:
    onnx = deferred("onnx")

ONNX_FILE = "model.onnx"  # a component's graph, in its own directory (exported or engine-optimized)
ONNX_DATA_FILE = "model.onnx.data"  # its weights, when the graph passes 2 GB
# protobuf cannot serialize a message over 2 GiB; stay clear of it
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


@dataclass(frozen=True)
class OnnxFile:
    """Where a component's ONNX graph lies in the artifact, and a hash of its bytes."""

    path: str  # relative to the artifact root, e.g. "unet/model.onnx"
    sha256: str  # of the .onnx file
    external_data: str | None = None  # relative path of the external weights file, when the graph passed 2 GB
    external_data_sha256: str | None = None  # of the external weights file


def tensor_bytes(tensor: onnx.TensorProto) -> int:
    """Size of a tensor's data from its shape and type, without reading (and copying) the data."""
    count = 1
    for dim in tensor.dims:
        count *= dim
    return count * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def write_onnx(model: onnx.ModelProto, out_dir: Path, external_data: bool) -> None:
    """Write `out_dir/model.onnx`, with every weight in one `model.onnx.data` beside it when asked."""
    target = out_dir / ONNX_FILE
    if external_data:
        onnx.save_model(
            model,
            str(target),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=ONNX_DATA_FILE,
            size_threshold=1024,
        )
    else:
        onnx.save_model(model, str(target))


def describe_onnx(out_dir: Path, artifact_root: Path) -> OnnxFile:
    """Check the graph in `out_dir`, make it readable to all, and describe it with paths relative to the artifact."""
    target = out_dir / ONNX_FILE
    onnx.checker.check_model(str(target))
    for written in out_dir.iterdir():  # onnx writes external data owner-only; deployments read as other users
        written.chmod(0o644)
    external = out_dir / ONNX_DATA_FILE
    return OnnxFile(
        path=str(target.relative_to(artifact_root)),
        sha256=file_sha256(target),
        external_data=str(external.relative_to(artifact_root)) if external.exists() else None,
        external_data_sha256=file_sha256(external) if external.exists() else None,
    )


def save_onnx(model: onnx.ModelProto, out_dir: Path, artifact_root: Path) -> OnnxFile:
    """Write `out_dir/model.onnx` (weights in one external file past protobuf's limit), check it, and describe it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    big = sum(tensor_bytes(t) for t in model.graph.initializer) > EXTERNAL_DATA_THRESHOLD
    write_onnx(model, out_dir, external_data=big)
    return describe_onnx(out_dir, artifact_root)


def upcast_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """An fp16 graph computing in float32: its fp16 weights and constants upcast, every cast to fp16 made one to fp32.

    The inverse of the fp16 conversion (`sdrt.export.fp16`) up to the weights' fp16 rounding, as diffusers'
    upcast_vae runs a float16 VAE in float32: the fallback when an fp16 network overflows (an overflow is in
    the activations; the weights' rounding moves a VAE's pixels by well under one 8-bit level).
    """
    from onnx import numpy_helper

    fp16, fp32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    out = onnx.ModelProto()
    out.CopyFrom(model)

    def upcast(tensor: onnx.TensorProto) -> None:
        if tensor.data_type == fp16:
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype("float32"), tensor.name))

    graph = out.graph
    for initializer in graph.initializer:
        upcast(initializer)
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                upcast(attr.t)
            elif attr.type == onnx.AttributeProto.INT and attr.name in ("to", "dtype") and attr.i == fp16:
                attr.i = fp32  # Cast's target, and the dtype of generator ops
        if any(attr.type == onnx.AttributeProto.GRAPH for attr in node.attribute):
            raise ValueError(f"node {node.name} ({node.op_type}) has a subgraph; upcasting those is not supported")
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.type.tensor_type.elem_type == fp16:
            value.type.tensor_type.elem_type = fp32
    return out
