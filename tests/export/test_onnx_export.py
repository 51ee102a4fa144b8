"""Each exported ONNX graph computes what its torch module computes, at shapes across the dynamic range."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from sdrt.manifest import FORMAT_VERSION, read_manifest
from sdrt.model_dir import ModelDir

# float32 graph vs float32 eager: only operation order differs. Observed max abs error: 2e-6 (text
# encoder, UNet, VAE encoder) to 1.5e-5 (VAE decoder, outputs up to ~3). A real defect (a wrong
# axis, a frozen shape, a dropped op) is off by O(0.1) or more.
ATOL = 1e-4

# two points inside the artifact's range (64..256 px, 1..2 images, 1..4 text chunks) other than the traced one:
# odd and even latents, h != w, one and three text chunks
SHAPES = [
    {"batch": 1, "cfg_batch": 1, "latent_height": 8, "latent_width": 32, "text_length": 77, "text_sequence": 77},
    {"batch": 2, "cfg_batch": 4, "latent_height": 23, "latent_width": 17, "text_length": 77, "text_sequence": 231},
]


@pytest.fixture(scope="module")
def modules(demo_model):
    return ModelDir.open(demo_model).load_modules()


@pytest.mark.parametrize("component", ["text_encoder", "unet", "vae_decoder", "vae_encoder"])
def test_onnx_matches_torch_at_two_shapes(artifact, modules, component):
    manifest = read_manifest(artifact)
    spec = manifest.components[component]
    session = ort.InferenceSession(str(artifact / manifest.files[component].path), providers=["CPUExecutionProvider"])
    for i, values in enumerate(SHAPES):
        feeds = spec.sample_inputs(values, torch.Generator().manual_seed(100 + i))
        (out,) = session.run(None, {k: v.numpy() for k, v in feeds.items()})
        with torch.no_grad():
            ref = modules[component](**feeds).numpy()
        assert out.shape == spec.output_shapes(values)[spec.output_names[0]]
        assert np.isfinite(out).all()
        err = np.abs(out - ref).max()
        assert err <= ATOL, f"{component} at {values}: max abs error {err} > {ATOL}"


def test_graphs_have_spec_names_dynamic_axes_and_opset(artifact):
    manifest = read_manifest(artifact)
    for name, spec in manifest.components.items():
        model = onnx.load(str(artifact / manifest.files[name].path), load_external_data=False)
        assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
        graph_inputs = {i.name: i for i in model.graph.input}
        graph_outputs = {o.name: o for o in model.graph.output}
        assert list(graph_inputs) == spec.input_names and list(graph_outputs) == spec.output_names
        for tensor in (*spec.inputs, *spec.outputs):
            proto = (graph_inputs | graph_outputs)[tensor.name]
            dims = proto.type.tensor_type.shape.dim
            for axis, symbol in tensor.symbols().items():
                assert dims[axis].dim_param == symbol, f"{name}.{tensor.name} axis {axis} is not dynamic"


def test_manifest_describes_the_artifact(artifact, demo_model):
    manifest = read_manifest(artifact)
    data = manifest.to_json()
    assert data["format_version"] == FORMAT_VERSION and data["family"] == "sd1"
    assert data["support"] == ["tokenizer", "scheduler"] and data["extras"] == {}
    assert data["text_encoders"] == [{"tokenizer": "tokenizer", "network": "text_encoder"}]
    assert {n: c["role"] for n, c in data["components"].items()} == {
        "text_encoder": "text_encoder",
        "unet": "denoiser",
        "vae_decoder": "vae_decoder",
        "vae_encoder": "vae_encoder",
    }
    assert data["inpainting"] is False and data["prediction_type"] == "epsilon"
    assert data["dims"]["cfg_batch"] == {"min": 1, "opt": 2, "max": 4}
    assert data["dims"]["latent_height"] == {"min": 8, "opt": 16, "max": 32}
    assert data["vae_scaling_factor"] == pytest.approx(0.18215)
    assert data["source_sha256"] == ModelDir.open(demo_model).weights_sha256()
    assert {"torch", "diffusers", "transformers", "onnx", "sdrt"} <= set(data["versions"])
    unet = data["components"]["unet"]
    residuals = [f"down_block_residual_{i}" for i in range(8)] + ["mid_block_residual"]  # ControlNets' (zeros)
    assert [i["name"] for i in unet["inputs"]] == ["sample", "timestep", "encoder_hidden_states", *residuals]
    assert unet["attributes"]["residuals"] == residuals
    shapes = {i["name"]: i["shape"] for i in unet["inputs"]}
    assert shapes["down_block_residual_0"] == ["cfg_batch", 32, "latent_height", "latent_width"]
    assert shapes["mid_block_residual"] == ["cfg_batch", 64, "latent_height/8", "latent_width/8"]  # rounded up
    assert unet["inputs"][0]["shape"] == ["cfg_batch", 4, "latent_height", "latent_width"]
    assert unet["inputs"][2]["shape"] == ["cfg_batch", "text_sequence", 32]  # 1..4 chunks of 77 tokens
    assert data["dims"]["text_sequence"] == {"min": 77, "opt": 77, "max": 308}
    text = data["components"]["text_encoder"]
    assert [i["name"] for i in text["inputs"]] == ["inputs_embeds", "clip_skip"]
    assert text["inputs"][0]["shape"] == ["cfg_batch", "text_length", 32]
    table = data["components"]["text_encoder"]["token_embeddings"]  # the lookup the engine no longer does
    assert table["path"] == "text_encoder/token_embeddings.safetensors" and (artifact / table["path"]).is_file()
    assert text["attributes"]["num_layers"] == 3 and text["outputs"][0]["name"] == "text_embeddings"
    assert data["components"]["vae_decoder"]["outputs"][0]["shape"] == ["batch", 3, "8*latent_height", "8*latent_width"]
    assert (artifact / "tokenizer").is_dir() and (artifact / "scheduler" / "scheduler_config.json").is_file()


def test_external_weights_are_consolidated_byte_for_byte(tmp_path):
    """torch writes a >2 GB graph's weights one file each; they are copied into one file, never loaded whole."""
    from onnx import helper, numpy_helper

    from sdrt.export.onnx_export import consolidate_external_data

    rng = np.random.default_rng(0)
    weights = {f"w{i}": rng.standard_normal((64, 64)).astype(np.float32) for i in range(3)}
    nodes, last = [], "x"
    for i, name in enumerate(weights):
        nodes.append(helper.make_node("MatMul", [last, name], [f"y{i}"]))
        last = f"y{i}"
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info(last, onnx.TensorProto.FLOAT, [1, 64])],
        [numpy_helper.from_array(w, name) for name, w in weights.items()],
    )
    raw_dir = tmp_path / "raw"
    raw_dir.mkdir()
    model = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save_model(
        model, str(raw_dir / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=False, size_threshold=0
    )
    assert len(list(raw_dir.iterdir())) == 4  # the graph and one file per weight, as torch writes them
    out = tmp_path / "out"
    out.mkdir()
    consolidate_external_data(raw_dir / "model.onnx", out)
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "model.onnx.data"]
    loaded = onnx.load(str(out / "model.onnx"), load_external_data=True)
    for tensor in loaded.graph.initializer:
        np.testing.assert_array_equal(numpy_helper.to_array(tensor), weights[tensor.name])
    x = rng.standard_normal((1, 64)).astype(np.float32)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    expected = x @ weights["w0"] @ weights["w1"] @ weights["w2"]
    np.testing.assert_allclose(session.run(None, {"x": x})[0], expected, rtol=1e-5, atol=1e-4)
