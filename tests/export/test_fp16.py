"""fp16 export: graphs with fp16 weights and math but float32 IO, close to the fp32 graphs, with the
precision-critical parts kept in fp32, for any graph size; and images close to the fp32 artifact's.

Tolerances come from measurements on the tiny demo model at the two shapes below (fp16 keeps about
3 decimal digits: its unit roundoff is 4.9e-4):

- ONNX Runtime CPU runs the fp16 graph against the fp32 graph with RMS relative error 0.7e-3 (text
  encoder) to 1.1e-3 (UNet), largest error 1.2e-3 / 1.3e-3 of the largest output. ONNX Runtime's CPU
  provider has few fp16 kernels and computes most nodes in fp32 between casts, so this checks the
  graph and its rounded weights, not fp16 arithmetic;
- onnx's reference evaluator (numpy) computes every fp16 node in fp16: RMS relative error 2.5e-3,
  largest 1.9e-3 of the largest output, for the UNet.

The bounds (RMS 5e-3, largest 1e-2 of the largest output) sit 2-5x above those; a broken
conversion (a cast missing or misplaced, an fp32 node fed fp16, a corrupt weight) is off by O(0.1)
or NaN.
"""

from __future__ import annotations

import shutil
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from sdrt import Pipeline, onnx_files
from sdrt.cli import main
from sdrt.export import ExportConfig, onnx_export
from sdrt.export import exporter as exporter_module
from sdrt.export.fp16 import convert_component, convert_model
from sdrt.manifest import read_manifest
from sdrt.onnx_files import ONNX_DATA_FILE, OnnxFile
from tests.conftest import RANGES

RMS_BOUND = 5e-3
MAX_BOUND = 1e-2
# pixel PSNR of the fp16 artifact's image against the fp32 artifact's, same request. Measured on the
# tiny model: 64.2 dB for this request (largest 8-bit difference 1); 46.1 dB (largest 6) for a
# 64x64, 10-step DPM++ 2M Karras request; 68.3 dB at 128x128, 20 steps. A wrong graph gives < 20 dB.
PSNR_BOUND_DB = 40.0
REQUEST = {"height": 72, "width": 104, "num_inference_steps": 6, "seed": 11, "scheduler": "euler_a"}
SHAPES = [
    {"batch": 1, "cfg_batch": 1, "latent_height": 8, "latent_width": 32, "text_length": 77, "text_sequence": 77},
    {"batch": 2, "cfg_batch": 4, "latent_height": 23, "latent_width": 17, "text_length": 77, "text_sequence": 231},
]
FP16_COMPONENTS = ("text_encoder", "unet")
# scales queries and keys so attention scores pass fp16's largest value (65504) while they stay small
SCORE_OVERFLOW_FACTOR = 300.0


def export_fp16(demo_model: Path, artifact: Path, out: Path, vae_fp16: bool = False) -> Path:
    """`demo_model` exported through `sdrt export --precision fp16` (and `--vae-precision fp16`) for conftest's RANGES.

    Tracing is taken from the fp32 session `artifact` (the same model exported for the same ranges):
    export_component is replaced by a copy of its graphs, so the fp16 path itself runs for real
    without tracing everything a second time.
    """
    fp32 = read_manifest(artifact)

    def traced(module, spec, ranges, out_dir, opset=17):
        assert ranges == fp32.ranges and spec.inputs == fp32.components[spec.name].inputs
        shutil.copytree(artifact / spec.name, out_dir, dirs_exist_ok=True)
        return fp32.files[spec.name]

    args = ["--max-batch", str(RANGES.max_batch), "--min-size", str(RANGES.min_size)]
    args += ["--max-size", str(RANGES.max_size), "--opt-size", str(RANGES.opt_size)]
    if vae_fp16:
        args += ["--vae-precision", "fp16"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(exporter_module, "export_component", traced)
        assert main(["-q", "export", str(demo_model), "-o", str(out), "--precision", "fp16", *args]) == 0
    return out


@pytest.fixture(scope="module")
def fp16_artifact(demo_model, artifact, tmp_path_factory) -> Path:
    return export_fp16(demo_model, artifact, tmp_path_factory.mktemp("artifacts") / "fp16")


@pytest.fixture(scope="module")
def sessions(fp16_artifact, artifact) -> dict[tuple[str, str], ort.InferenceSession]:
    """(precision, component) -> ONNX Runtime CPU session of the text encoder and UNet graphs."""
    roots = {"fp16": fp16_artifact, "fp32": artifact}
    return {(p, c): _session(_graph(root, c)) for p, root in roots.items() for c in FP16_COMPONENTS}


def _graph(root: Path, component: str) -> onnx.ModelProto:
    return onnx.load(str(root / read_manifest(root).files[component].path))


def _errors(reference: np.ndarray, out: np.ndarray) -> tuple[float, float]:
    """RMS error relative to the reference's RMS; largest error relative to the reference's largest value."""
    err = np.abs(out.astype(np.float64) - reference)
    return float(np.sqrt((err**2).mean() / (reference.astype(np.float64) ** 2).mean())), float(
        err.max() / np.abs(reference).max()
    )


def psnr(a, b) -> float:
    """PSNR in dB of two 8-bit images (inf when equal). Shared by the GPU tests, which compare fp16 to fp32 too."""
    mse = ((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2).mean()
    return float("inf") if mse == 0 else float(10 * np.log10(255**2 / mse))


def _feeds(spec, values, seed):
    return {k: v.numpy() for k, v in spec.sample_inputs(values, torch.Generator().manual_seed(seed)).items()}


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # no fusions: the graph as written
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def test_manifest_records_precision_and_vae_stays_fp32(fp16_artifact, artifact):
    manifest, fp32 = read_manifest(fp16_artifact), read_manifest(artifact)
    assert {n: s.attributes["precision"] for n, s in manifest.components.items()} == {
        "text_encoder": "fp16",
        "unet": "fp16",
        "vae_decoder": "fp32",
        "vae_encoder": "fp32",
    }
    assert {n: s.attributes["precision"] for n, s in fp32.components.items()} == dict.fromkeys(fp32.components, "fp32")
    for name in ("vae_decoder", "vae_encoder"):
        assert manifest.files[name].sha256 == fp32.files[name].sha256, f"{name} must be the fp32 graph itself"
    # the specs the runtime reads are unchanged apart from the precision attribute
    for name, spec in manifest.components.items():
        assert spec.inputs == fp32.components[name].inputs and spec.outputs == fp32.components[name].outputs


def _size(tensor) -> int:
    return int(np.prod(tensor.dims)) if tensor.dims else 1


@pytest.mark.parametrize("component", FP16_COMPONENTS)
def test_weights_are_fp16_and_io_float32(fp16_artifact, artifact, component):
    model, fp32 = _graph(fp16_artifact, component), _graph(artifact, component)
    floats = [t for t in model.graph.initializer if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)]
    half = [t for t in floats if t.data_type == onnx.TensorProto.FLOAT16]
    # fp32 initializers left: only those read by nodes kept in fp32 (the timestep embedding's frequencies)
    assert len(floats) - len(half) <= 1, [t.name for t in floats if t not in half]
    assert len(half) > 50
    assert sum(len(t.raw_data) for t in half) > 0.99 * sum(len(t.raw_data) for t in floats)
    # the weights (initializers of 1024+ values) take half the bytes; the folded scalar constants, which the two
    # graphs lay out differently, are left out (the tiny text encoder's weights no longer dwarf them: its token
    # table is outside the graph)
    fp32_bytes = sum(
        len(t.raw_data) for t in fp32.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and _size(t) >= 1024
    )
    assert sum(len(t.raw_data) for t in half if _size(t) >= 1024) < 0.51 * fp32_bytes
    ours_io, fp32_io = (*model.graph.input, *model.graph.output), (*fp32.graph.input, *fp32.graph.output)
    for ours, theirs in zip(ours_io, fp32_io, strict=True):
        assert ours.name == theirs.name and ours.type == theirs.type  # float32 IO, the same dimension names


@pytest.mark.parametrize("component", FP16_COMPONENTS)
def test_fp16_graph_matches_fp32_on_onnxruntime(sessions, artifact, component):
    spec = read_manifest(artifact).components[component]
    fp16, fp32 = sessions["fp16", component], sessions["fp32", component]
    for i, values in enumerate(SHAPES):
        feeds = _feeds(spec, values, 100 + i)
        (reference,), (out,) = fp32.run(None, feeds), fp16.run(None, feeds)
        assert out.dtype == np.float32 and np.isfinite(out).all()
        rms, largest = _errors(reference, out)
        assert rms <= RMS_BOUND and largest <= MAX_BOUND, f"{component} at {values}: rms {rms:.2e}, max {largest:.2e}"


def test_fp16_unet_arithmetic_matches_fp32(sessions, fp16_artifact, artifact):
    """onnx's reference evaluator computes fp16 nodes in fp16, as a GPU does (up to accumulation)."""
    from onnx.reference import ReferenceEvaluator

    spec = read_manifest(artifact).components["unet"]
    feeds = _feeds(spec, SHAPES[0], 100)
    (reference,) = sessions["fp32", "unet"].run(None, feeds)
    (out,) = ReferenceEvaluator(_graph(fp16_artifact, "unet")).run(None, feeds)
    rms, largest = _errors(reference, out)
    assert rms <= RMS_BOUND and largest <= MAX_BOUND, f"rms {rms:.2e}, max {largest:.2e}"


def test_timestep_embedding_stays_fp32(fp16_artifact):
    """diffusers computes sin/cos of timestep x frequency in float32; the graph reads the float32 input directly."""
    graph = _graph(fp16_artifact, "unet").graph
    readers = [n for n in graph.node if "timestep" in n.input]
    assert readers and all(n.op_type != "Cast" for n in readers), [n.op_type for n in readers]
    types = {v.name: v.type.tensor_type.elem_type for v in graph.value_info}
    trig = [n for n in graph.node if n.op_type in ("Sin", "Cos")]
    assert trig and all(types[n.output[0]] == onnx.TensorProto.FLOAT for n in trig)


def _scale_attention_projections(model: onnx.ModelProto, factor: float) -> onnx.ModelProto:
    """A copy of a UNet graph whose query and key projection weights are multiplied by `factor`."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    weights = {t.name: t for t in model.graph.initializer}
    scaled = 0
    for node in model.graph.node:
        if node.op_type == "MatMul" and ("/to_q/" in node.name or "/to_k/" in node.name):
            t = weights[node.input[1]]
            values = numpy_helper.to_array(t)
            t.CopyFrom(numpy_helper.from_array((values * factor).astype(values.dtype), t.name))
            scaled += 1
    assert scaled >= 4
    return model


def test_upcast_attention_keeps_scores_in_fp32(sd2_model, fp16_artifact, tmp_path):
    """SD 2.x (upcast_attention): each score MatMul and Softmax computes in fp32, so scores past fp16's range stay
    finite; SD 1.x's fp16 UNet, which has no upcast, overflows to NaN on the same scaling (the control)."""
    from onnx.reference import ReferenceEvaluator

    from sdrt.manifest import Manifest
    from sdrt.model_dir import ModelDir

    model_dir = ModelDir.open(sd2_model)
    spec = Manifest.for_model(model_dir, RANGES).components["unet"]
    assert spec.attributes["upcast_attention"]
    unet = model_dir.load_modules()["unet"]
    onnx_file = onnx_export.export_component(unet, spec, RANGES, tmp_path / "unet")
    fp16 = convert_model(onnx.load(str(tmp_path / onnx_file.path)), spec)

    graph = fp16.graph
    types = {v.name: v.type.tensor_type.elem_type for v in graph.value_info}
    producers = {o: n for n in graph.node for o in n.output}
    softmaxes = [n for n in graph.node if n.op_type == "Softmax"]
    assert softmaxes
    for softmax in softmaxes:
        scores = producers[softmax.input[0]]
        assert scores.op_type == "MatMul", "no cast may round the scores to fp16 between MatMul and Softmax"
        assert types[softmax.input[0]] == types[softmax.output[0]] == onnx.TensorProto.FLOAT

    feeds = _feeds(spec, {"cfg_batch": 1, "latent_height": 8, "latent_width": 8, "text_sequence": 77}, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy reports the control's overflow
        (upcast,) = ReferenceEvaluator(_scale_attention_projections(fp16, SCORE_OVERFLOW_FACTOR)).run(None, feeds)
        sd1 = _scale_attention_projections(_graph(fp16_artifact, "unet"), SCORE_OVERFLOW_FACTOR)
        sd1_spec = read_manifest(fp16_artifact).components["unet"]
        (control,) = ReferenceEvaluator(sd1).run(None, _feeds(sd1_spec, {**SHAPES[0], "latent_width": 8}, 1))
    assert np.isfinite(upcast).all()
    assert not np.isfinite(control).all(), "the control should overflow; raise SCORE_OVERFLOW_FACTOR"


@pytest.mark.parametrize("threshold", [None, 0], ids=["fp16-one-file", "fp16-external"])
def test_graphs_with_external_data(artifact, tmp_path, monkeypatch, threshold):
    """A full-size fp32 UNet (3.4 GB) comes with external data, its fp16 conversion (1.7 GB) fits in one file;
    both directions are forced here on the small text encoder."""
    fp32 = read_manifest(artifact)
    spec = fp32.components["text_encoder"]
    src = (tmp_path / "art" / "text_encoder").resolve()
    src.mkdir(parents=True)
    fp32_path = str(artifact / fp32.files["text_encoder"].path)
    onnx.save_model(onnx.load(fp32_path), str(src / "model.onnx"), save_as_external_data=True, location=ONNX_DATA_FILE)
    onnx_file = OnnxFile(path="text_encoder/model.onnx", sha256="", external_data=f"text_encoder/{ONNX_DATA_FILE}")
    if threshold is not None:
        monkeypatch.setattr(onnx_files, "EXTERNAL_DATA_THRESHOLD", threshold)
    converted = convert_component(src.parent, onnx_file, spec)

    assert (converted.external_data is None) == (threshold is None)
    assert sorted(p.name for p in src.iterdir()) == (
        ["model.onnx"] if threshold is None else ["model.onnx", ONNX_DATA_FILE]
    )
    session = ort.InferenceSession(str(src / "model.onnx"), providers=["CPUExecutionProvider"])
    in_memory = _session(convert_model(onnx.load(fp32_path), spec))
    feeds = _feeds(spec, SHAPES[1], 7)
    np.testing.assert_array_equal(session.run(None, feeds)[0], in_memory.run(None, feeds)[0])


def test_fp16_artifact_generates_the_fp32_image(fp16_artifact, pipelines):
    fp16 = Pipeline.load(fp16_artifact).generate("a cat", **REQUEST).images[0]
    fp32 = pipelines["onnxruntime"].generate("a cat", **REQUEST).images[0]
    db = psnr(fp16, fp32)
    assert db > PSNR_BOUND_DB, f"PSNR {db:.1f} dB"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"precision": "int8"}, "precision 'int8' is not one of fp32, fp16"),
        ({"vae_precision": "bf16"}, "vae_precision 'bf16' is not one of fp32, fp16"),
    ],
)
def test_bad_precision(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ExportConfig(**kwargs)


def test_component_precision(artifact):
    """The precision option applies by a network's role: the VAE's halves follow vae_precision, the rest precision."""
    specs = read_manifest(artifact).components
    config = replace(ExportConfig(), precision="fp16")
    names = ("text_encoder", "unet", "vae_decoder", "vae_encoder")
    assert [config.component_precision(specs[n]) for n in names] == ["fp16", "fp16", "fp32", "fp32"]
    assert ExportConfig(vae_precision="fp16").component_precision(specs["vae_decoder"]) == "fp16"


def test_an_upcast_network_without_attention_is_refused():
    """upcast_attention promises fp32 attention scores; a graph where none is found must not be exported in fp16."""
    import onnx_graphsurgeon as gs
    from onnx import TensorProto, helper

    from sdrt.components import unet_spec
    from sdrt.export.fp16 import fp32_nodes

    weight = numpy_helper.from_array(np.ones((4, 4), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="proj")],
        "no-attention",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        [weight],
    )
    spec = unet_spec(in_channels=4, out_channels=4, text_hidden_size=32, num_train_timesteps=1000)
    upcast = replace(spec, attributes={**spec.attributes, "upcast_attention": True, "fp32_inputs": ()})
    with pytest.raises(ValueError, match="unet needs its attention scores in fp32 .* export it with --precision fp32"):
        fp32_nodes(gs.import_onnx(helper.make_model(graph)), upcast)
