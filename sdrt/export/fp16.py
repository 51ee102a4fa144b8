"""float32 ONNX graphs -> mixed-precision fp16 graphs with float32 IO, for TensorRT and ONNX Runtime CUDA.

Weights and most arithmetic become fp16 through ONNX Runtime's maintained converter
(`onnxruntime.transformers.float16`). Graph inputs and outputs stay float32 (a Cast at each end), so
every ComponentSpec and the runtime are the same for fp32 and fp16 artifacts. Kept in fp32, as
diffusers keeps them when it runs a model in fp16:

- the sinusoidal embeddings of the inputs a spec lists in `fp32_inputs`: the UNet's timestep, and
  SDXL's size and crop conditioning `time_ids` (diffusers computes them in float32 whatever the UNet's
  dtype; in fp16, sin(t * f) at t ~ 999 would be off by up to 0.25 rad). Measured on the tiny UNet
  at fractional timesteps: RMS error against fp32 1.0e-3 with it, 2.6e-3 without;
- for UNets with `upcast_attention` (SD 2.x), each attention's score MatMul and Softmax, whose values
  overflow fp16.

Graphs are folded and typed before conversion and tidied after it (round-trip casts removed, dead
nodes dropped, nodes sorted), with onnx-graphsurgeon and onnx's shape inference (graph_cleanup.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import onnx

from sdrt.export.graph_cleanup import fold_constants, quiet_graph_tools, tidy
from sdrt.onnx_files import ONNX_DATA_FILE, ONNX_FILE, OnnxFile, save_onnx
from sdrt.spec import ComponentSpec

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16")
# the first layers with weights after the timestep input: the embedding before them stays fp32
_WEIGHTED_OPS = frozenset({"Gemm", "MatMul", "Conv"})
# element-wise ops that may sit between an attention's score MatMul and its Softmax (scale, mask)
_SCORE_OPS = frozenset({"Mul", "Div", "Add", "Sub", "Cast", "Where"})


def convert_component(artifact_root: Path, onnx_file: OnnxFile, spec: ComponentSpec) -> OnnxFile:
    """Replace a component's float32 graph in the artifact by its fp16 conversion; return the new file record.

    Reads the weights from external data when the graph has them (a full-size fp32 UNet), and writes the
    fp16 graph as one file when it fits under protobuf's limit (a full-size fp16 UNet, 1.7 GB, does).
    """
    path = artifact_root / onnx_file.path
    log.info("converting %s to fp16", spec.name)
    model = convert_model(onnx.load(str(path), load_external_data=True), spec)
    for name in (ONNX_FILE, ONNX_DATA_FILE):
        (path.parent / name).unlink(missing_ok=True)
    return save_onnx(model, path.parent, artifact_root)


def convert_model(model: onnx.ModelProto, spec: ComponentSpec) -> onnx.ModelProto:
    """fp16 weights and arithmetic, float32 graph IO, with `spec`'s precision-critical nodes kept in fp32."""
    import onnx_graphsurgeon as gs
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = fold_constants(model)  # also infers the types the converter needs to place its casts
    _name_nodes(model.graph.node)
    with quiet_graph_tools():
        keep = fp32_nodes(gs.import_onnx(model), spec)  # a view: importing copies no weights, exporting would
    log.debug("%s: keeping %d nodes in fp32", spec.name, len(keep))
    model = convert_float_to_float16(
        model,
        keep_io_types=True,  # float32 IO: specs and runtime are unchanged
        disable_shape_infer=True,  # done above, for graphs of any size (onnx's in-memory inference stops at 2 GB)
        node_block_list=sorted(keep),
        # defaults, stated: weights below fp16's smallest subnormal keep their sign instead of becoming 0,
        # weights beyond fp16's range are clamped to it rather than becoming inf
        min_positive_val=5.96e-08,
        max_finite_val=65504.0,
    )
    return tidy(model)


def fp32_nodes(graph, spec: ComponentSpec) -> set[str]:
    """Names of the nodes of `graph` (an onnx-graphsurgeon graph) that must compute in fp32 for `spec`."""
    keep: set[str] = set()
    for name in sorted(spec.fp32_inputs):
        keep |= input_embedding_nodes(graph, name)
    if spec.attributes.get("upcast_attention"):
        scores = attention_score_nodes(graph)
        if not scores:  # an fp16 SD 2.x UNet without them overflows in attention: refuse rather than export it
            raise ValueError(
                f"{spec.name} needs its attention scores in fp32 (upcast_attention), but no attention "
                "(a Softmax fed by a MatMul) was found in its graph; export it with --precision fp32"
            )
        keep |= scores
    return keep


def input_embedding_nodes(graph, input_name: str) -> set[str]:
    """Nodes between graph input `input_name` and the first layers with weights that read from it."""
    tensors = {t.name: t for t in graph.inputs}
    if input_name not in tensors:
        raise ValueError(f"graph has no input {input_name!r}; inputs: {[t.name for t in graph.inputs]}")
    found: set[str] = set()
    frontier = [tensors[input_name]]
    while frontier:
        for node in frontier.pop().outputs:
            if node.op in _WEIGHTED_OPS or node.name in found:
                continue
            found.add(node.name)
            frontier.extend(node.outputs)
    return found


def attention_score_nodes(graph) -> set[str]:
    """Each attention's score path: Softmax and the element-wise ops back to the MatMul of queries and keys."""
    found: set[str] = set()
    for softmax in (n for n in graph.nodes if n.op == "Softmax"):
        chain = [softmax]
        producer = _producer(softmax.inputs[0])
        while producer is not None and producer.op in _SCORE_OPS:
            chain.append(producer)
            producer = _producer(producer.inputs[0])
        if producer is None or producer.op != "MatMul":
            log.debug("softmax %s is not fed by a MatMul; left as it is", softmax.name)
            continue
        found.update(n.name for n in (*chain, producer))
    return found


def _producer(tensor):
    return tensor.inputs[0] if len(tensor.inputs) == 1 else None


def _name_nodes(nodes: Iterable[onnx.NodeProto]) -> None:
    """Give unnamed or duplicate-named nodes unique names: the converter keeps nodes in fp32 by name."""
    seen: set[str] = set()
    for i, node in enumerate(nodes):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_sdrt_{i}"
        seen.add(node.name)
