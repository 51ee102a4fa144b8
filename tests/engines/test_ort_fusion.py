"""ONNX Runtime's UNet fusions (CPU kernels only): what they fuse, that the fused graph computes the same, the cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import torch

from sdrt.engines import build_engines, load_engines
from sdrt.engines.ort_fusion import fuse_unet
from sdrt.manifest import read_manifest

CPU_OPS = {"Attention", "MultiHeadAttention", "SkipLayerNormalization", "LayerNormalization"}
CUDA_ONLY = {"GroupNorm", "SkipGroupNorm", "BiasSplitGelu", "BiasAdd", "NhwcConv"}


def _feeds(artifact: Path) -> dict[str, np.ndarray]:
    spec = read_manifest(artifact).components["unet"]
    values = {"cfg_batch": 2, "latent_height": 8, "latent_width": 10, "text_sequence": 77}
    feeds = spec.sample_inputs(values, torch.Generator().manual_seed(0))
    return {name: t.numpy() for name, t in feeds.items()}


def _run(path: Path, feeds) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the graph as written
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def test_demo_unet_fuses_attention_and_computes_the_same(artifact, tmp_path):
    source = artifact / read_manifest(artifact).files["unet"].path
    fused = fuse_unet(source, tmp_path / "fused")
    assert fused.get("Attention", 0) > 0 and fused.get("MultiHeadAttention", 0) > 0, fused
    ops = {
        node.op_type for node in onnx.load(str(tmp_path / "fused" / "model.onnx"), load_external_data=False).graph.node
    }
    assert CPU_OPS <= ops and not ops & CUDA_ONLY
    feeds = _feeds(artifact)
    expected, got = _run(source, feeds), _run(tmp_path / "fused" / "model.onnx", feeds)
    assert np.abs(got - expected).max() < 1e-4 * max(1.0, float(np.abs(expected).max()))


def test_engine_build_fuses_the_cpu_unet_only_when_asked_and_keys_the_cache(fresh_artifact):
    manifest = read_manifest(fresh_artifact)
    plain = {r.component: r for r in build_engines(fresh_artifact, manifest, "onnxruntime")}  # the default
    fused = {r.component: r for r in build_engines(fresh_artifact, manifest, "onnxruntime", fusions=True)}
    records = {c: json.loads((Path(r.path) / "build.json").read_text()) for c, r in fused.items()}
    assert records["unet"]["fused"].get("Attention", 0) > 0
    assert all(records[c]["fused"] == {} for c in records if c != "unet")  # only the denoiser is fused
    assert not (Path(fused["unet"].path) / "fused").exists()  # the intermediate graph is not kept
    assert plain["unet"].key != fused["unet"].key and plain["text_encoder"].key == fused["text_encoder"].key
    plain_record = json.loads((Path(plain["unet"].path) / "build.json").read_text())
    assert plain_record["fused"] == {}
    feeds = {k: torch.from_numpy(v) for k, v in _feeds(fresh_artifact).items()}
    out_fused = load_engines(fresh_artifact, manifest, "onnxruntime", fusions=True)["unet"](feeds)
    out_plain = load_engines(fresh_artifact, manifest, "onnxruntime")["unet"](feeds)
    (name,) = out_fused
    scale = max(1.0, float(out_plain[name].abs().max()))
    assert (out_fused[name] - out_plain[name]).abs().max().item() < 1e-4 * scale


def test_fused_unet_images_match_diffusers(fresh_artifact, diffusers_pipe):
    """With fusions=True the pipeline's images stay within the parity tests' tolerance of diffusers'."""
    from sdrt import Pipeline
    from tests.runtime.compare import HEIGHT, STEPS, WIDTH, assert_images_close

    pipe = Pipeline.load(fresh_artifact, backend="onnxruntime", fusions=True)
    prompt, negative = "a photo of an astronaut riding a horse", "blurry, low quality"
    size = {"height": HEIGHT, "width": WIDTH, "num_inference_steps": STEPS}
    ours = pipe.generate(prompt, negative_prompt=negative, **size, guidance_scale=7.5, seed=123)
    diffusers_pipe.scheduler = diffusers_pipe.original_scheduler
    theirs = diffusers_pipe(
        [prompt], negative_prompt=[negative], **size, guidance_scale=7.5,
        generator=[torch.Generator("cpu").manual_seed(123)],
    ).images  # fmt: skip
    assert_images_close(ours.images, theirs)
