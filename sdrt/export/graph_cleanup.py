"""ONNX graph clean-up with polygraphy and onnx-graphsurgeon: constant folding, shape inference, dead nodes, order."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import onnx

# Passes of folding + shape inference: on sdrt's UNet export the node count goes 2895 -> 1944 -> 1641 and
# a third pass (polygraphy's default runs until nothing changes) folds nothing more, at a full pass's cost.
FOLD_PASSES = 2
# Fold no tensor larger than this: folding an Expand or Tile of a small constant could bloat the file,
# and TensorRT and ONNX Runtime fold what is left themselves.
FOLD_SIZE_LIMIT = 1 << 26


@contextlib.contextmanager
def quiet_graph_tools() -> Iterator[None]:
    """Keep polygraphy's, onnx-graphsurgeon's and ONNX Runtime's messages (printed, not logged) off the terminal.

    Constant folding runs ONNX Runtime sessions, whose optimizer warns about nodes it leaves alone.
    ONNX Runtime's default logger has no getter: it is put back to its default level (warnings).
    """
    import onnxruntime as ort
    from onnx_graphsurgeon.logger import G_LOGGER as GS_LOGGER
    from polygraphy.logger import G_LOGGER

    ort.set_default_logger_severity(3)
    try:
        with G_LOGGER.verbosity(G_LOGGER.ERROR), GS_LOGGER.suppress(GS_LOGGER.ERROR):
            yield
    finally:
        ort.set_default_logger_severity(2)


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold constant subgraphs and infer every tensor's type and shape, in FOLD_PASSES passes.

    Polygraphy runs onnx's shape inference between passes (through a file for graphs over 2 GB), so
    the result carries a type for every intermediate tensor. onnx's inference, not ONNX Runtime's
    symbolic one: 3x faster on the UNet, and the symbolic one renames the graph outputs' dimensions
    (`images` of the VAE decoder became `floor(2.0*...latent_height)` instead of `8*latent_height`).
    The graph's inputs and outputs keep their declared types and dimension names.
    """
    from polygraphy.backend.onnx import fold_constants as polygraphy_fold_constants

    io = {
        v.name: onnx.TypeProto.FromString(v.type.SerializeToString()) for v in (*model.graph.input, *model.graph.output)
    }
    with quiet_graph_tools():
        model = polygraphy_fold_constants(
            model,
            num_passes=FOLD_PASSES,
            size_threshold=FOLD_SIZE_LIMIT,
            error_ok=False,
            do_shape_inference=True,
            allow_onnxruntime_shape_inference=False,
        )
    for value in (*model.graph.input, *model.graph.output):
        value.type.CopyFrom(io[value.name])
    return model


def tidy(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop round-trip casts, unused nodes and tensors, and sort the nodes topologically (TensorRT needs the order)."""
    import onnx_graphsurgeon as gs

    with quiet_graph_tools():
        graph = gs.import_onnx(model)
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
