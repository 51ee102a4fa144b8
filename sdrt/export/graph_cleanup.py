"""ONNX graph clean-up for graphs of any size: constant folding and dead-node removal (onnx-graphsurgeon),
type and shape inference (onnx), round-trip casts removed, nodes in topological order.

Graphs over 2 GB (a full-size fp32 UNet) cannot be serialized as one protobuf message, which onnx's
in-memory shape inference does; polygraphy's large-graph path also starts by asking the message its
size, which protobuf 7 refuses past 2 GB (polygraphy then skips inference with a warning, and an fp16
conversion built on the missing types produced a UNet ONNX Runtime refused to load). Here inference
runs on a copy of the graph without its large weights, since it needs only their types and shapes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import onnx

from sdrt.onnx_files import tensor_bytes

# Passes of folding + inference: on sdrt's UNet export the node count goes 2895 -> 1621 -> 1461, and a
# third pass folds nothing more (shapes inferred after a pass let the next fold more shape arithmetic).
FOLD_PASSES = 2
# Fold no tensor larger than this: folding an Expand or Tile of a small constant could bloat the file,
# and TensorRT and ONNX Runtime fold what is left themselves.
FOLD_SIZE_LIMIT = 1 << 26
# Initializers larger than this stay out of type inference's copy of the graph (only their type and shape
# go in). Tensors whose values inference reads (Reshape targets, Slice bounds, ...) are a few bytes.
_LIFT_BYTES = 1 << 16
_STUB = "sdrt-type-inference-stub"


@contextlib.contextmanager
def quiet_graph_tools() -> Iterator[None]:
    """Keep onnx-graphsurgeon's and ONNX Runtime's messages (printed, not logged) off the terminal.

    Constant folding runs ONNX Runtime sessions, whose optimizer warns about nodes it leaves alone.
    ONNX Runtime's default logger has no getter: it is put back to its default level (warnings).
    """
    import onnxruntime as ort
    from onnx_graphsurgeon.logger import G_LOGGER

    ort.set_default_logger_severity(3)
    try:
        with G_LOGGER.suppress(G_LOGGER.ERROR):
            yield
    finally:
        ort.set_default_logger_severity(2)


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold constant subgraphs (shape arithmetic included) and type every tensor, in FOLD_PASSES passes.

    The result carries a type for every intermediate tensor (ValueError otherwise): an fp16 converter
    places its casts by them. The graph's inputs and outputs keep their declared types and dimension names.
    """
    import onnx_graphsurgeon as gs

    io = {
        v.name: onnx.TypeProto.FromString(v.type.SerializeToString()) for v in (*model.graph.input, *model.graph.output)
    }
    for _ in range(FOLD_PASSES):
        model = infer_types(model)
        with quiet_graph_tools():
            graph = gs.import_onnx(model)
            del model  # the graph holds the weights; let each pass keep one copy of them
            graph.fold_constants(size_threshold=FOLD_SIZE_LIMIT, error_ok=False).cleanup()
            model = gs.export_onnx(graph)
            del graph
    model = infer_types(model)
    for value in (*model.graph.input, *model.graph.output):
        value.type.CopyFrom(io[value.name])
    check_typed(model)
    return model


def infer_types(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnx's type and shape inference, on graphs of any size: returns `model` with its value_info replaced.

    Inference runs on a skeleton of the graph whose large initializers carry their type and shape but
    point at data that does not exist, so the message it serializes stays small; the model's own
    tensors are never touched (protobuf keeps a cleared field's memory until the whole message goes).
    """
    skeleton = onnx.ModelProto()
    skeleton.ir_version = model.ir_version
    skeleton.opset_import.extend(model.opset_import)
    skeleton.functions.extend(model.functions)
    graph = skeleton.graph
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.DEFAULT and tensor_bytes(tensor) <= _LIFT_BYTES:
            graph.initializer.append(tensor)
            continue
        stub = graph.initializer.add()
        stub.name, stub.data_type = tensor.name, tensor.data_type
        stub.dims.extend(tensor.dims)
        stub.data_location = onnx.TensorProto.EXTERNAL
        entry = stub.external_data.add()
        entry.key, entry.value = "location", _STUB
    inferred = onnx.shape_inference.infer_shapes(skeleton, strict_mode=True, data_prop=True)
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
    return model


def check_typed(model: onnx.ModelProto) -> None:
    """Raise ValueError unless every tensor a node produces has a known element type."""
    typed = {v.name for v in model.graph.value_info if v.type.tensor_type.elem_type}
    typed |= {v.name for v in model.graph.output}
    untyped = [o for node in model.graph.node for o in node.output if o and o not in typed]
    if untyped:
        raise ValueError(f"type inference left {len(untyped)} tensors untyped, e.g. {untyped[:3]}")


def tidy(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop round-trip casts, unused nodes and tensors, and sort the nodes topologically (TensorRT needs the order)."""
    import onnx_graphsurgeon as gs

    with quiet_graph_tools():
        graph = gs.import_onnx(model)
        del model
        remove_round_trip_casts(graph)
        graph.cleanup().toposort()
        return gs.export_onnx(graph)


_FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}


def remove_round_trip_casts(graph) -> int:
    """Let readers of Cast(Cast(x, to=A), to=type(x)) read x itself, for x and A float32/float16; return how many.

    An fp16 converter leaves such pairs between two nodes kept in fp32 (fp32 -> fp16 -> fp32 loses
    precision for nothing) and around graph inputs read by fp32 nodes. Pairs the other way round
    (fp16 -> fp32 -> fp16) are exact no-ops. The unused casts are left for `cleanup`.
    """
    removed = 0
    for node in graph.nodes:
        if node.op != "Cast" or len(node.inputs[0].inputs) != 1:
            continue
        first = node.inputs[0].inputs[0]
        if first.op != "Cast":
            continue
        source = first.inputs[0]
        source_type = _onnx_type(source.dtype)
        middle, final = int(first.attrs["to"]), int(node.attrs["to"])
        if source_type not in _FLOATS or middle not in _FLOATS or final != source_type:
            continue
        out = node.outputs[0]
        if out in graph.outputs:
            continue  # a graph output keeps its name and its producer
        for reader in list(out.outputs):
            for i, tensor in enumerate(reader.inputs):
                if tensor is out:
                    reader.inputs[i] = source
        removed += 1
    return removed


def _onnx_type(dtype) -> int | None:
    """ONNX element type of an onnx-graphsurgeon dtype (numpy dtype or ONNX enum), None when unknown."""
    if dtype is None:
        return None
    if isinstance(dtype, int):
        return dtype
    try:
        return onnx.helper.np_dtype_to_tensor_dtype(dtype)
    except (KeyError, TypeError, ValueError):
        return None
