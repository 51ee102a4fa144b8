"""The OpenVINO backend: the artifact's ONNX on OpenVINO's CPU plugin gives ONNX Runtime's images, static shapes
compiled per call shape and cached as verified blobs."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from sdrt import Pipeline
from sdrt.engines import build_engines, load_engines
from sdrt.engines.cache import engine_problem
from sdrt.engines.openvino_backend import BLOB_FILE, OpenVinoOptions
from sdrt.manifest import read_manifest

pytest.importorskip("openvino", reason="the openvino backend needs the openvino package (pip install 'sdrt[openvino]')")

KWARGS = {"height": 72, "width": 104, "num_inference_steps": 6, "seed": 11}
# measured on the tiny model: UNet outputs within 1.1e-6 of ONNX Runtime's (random inputs, 3 shapes), VAE decoder
# 9.5e-6, text encoder 2.0e-6; images 0 or 1 of 255 apart
UNET_ATOL = 1e-5
IMAGE_BOUND = 1


@pytest.fixture(scope="module")
def openvino_artifact(artifact, tmp_path_factory):
    copy = tmp_path_factory.mktemp("openvino") / "artifact"
    shutil.copytree(artifact, copy, ignore=shutil.ignore_patterns("engines"))
    return copy


@pytest.fixture(scope="module")
def openvino_pipe(openvino_artifact):
    return Pipeline.load(openvino_artifact, backend="openvino")


def _max_diff(a, b) -> int:
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


@pytest.mark.parametrize("scheduler", ["euler_a", "dpmpp_2m", "ddim"])
def test_images_match_onnxruntime(openvino_pipe, pipelines, scheduler):
    args = {**KWARGS, "scheduler": scheduler}
    ours = openvino_pipe.generate(["a cat", "a dog"], negative_prompt="blurry", **args).images
    reference = pipelines["onnxruntime"].generate(["a cat", "a dog"], negative_prompt="blurry", **args).images
    for a, b in zip(ours, reference, strict=True):
        assert _max_diff(a, b) <= IMAGE_BOUND


def test_img2img_matches_onnxruntime(openvino_pipe, pipelines):
    from PIL import Image

    image = Image.fromarray((np.random.default_rng(3).random((72, 104, 3)) * 255).astype(np.uint8))
    args = {**KWARGS, "scheduler": "euler", "image": image, "strength": 0.6}
    ours = openvino_pipe.generate("a castle", **args).images[0]
    assert _max_diff(ours, pipelines["onnxruntime"].generate("a castle", **args).images[0]) <= IMAGE_BOUND


def test_unet_outputs_match_onnxruntime_at_several_shapes(openvino_pipe, pipelines):
    ours, reference = openvino_pipe.engines["unet"], pipelines["onnxruntime"].engines["unet"]
    gen = torch.Generator().manual_seed(0)
    for cfg_batch, h, w, chunks in ((2, 16, 16, 1), (4, 9, 13, 2), (1, 8, 32, 1)):
        values = {"cfg_batch": cfg_batch, "latent_height": h, "latent_width": w, "text_sequence": 77 * chunks}
        feeds = ours.spec.sample_inputs(values, gen)
        torch.testing.assert_close(ours(feeds), reference(feeds), rtol=0, atol=UNET_ATOL)


def test_static_models_are_per_shape_bounded_and_cached_as_verified_blobs(fresh_artifact, caplog):
    openvino_artifact = fresh_artifact
    manifest = read_manifest(openvino_artifact)
    built = {r.component: r for r in build_engines(openvino_artifact, manifest, "openvino")}
    unet = load_engines(openvino_artifact, manifest, "openvino", max_compiled=1)["unet"]
    gen = torch.Generator().manual_seed(1)
    shapes = [{"cfg_batch": 2, "latent_height": s, "latent_width": s, "text_sequence": 77} for s in (8, 16, 8)]
    for values in shapes:
        unet(unet.spec.sample_inputs(values, gen))
    assert len(unet._models) == 1, "at most max_compiled static models are kept in memory"
    blobs = sorted(p.parent.name for p in (openvino_artifact / "engines" / "openvino" / "unet").glob(f"*/{BLOB_FILE}"))
    assert len(blobs) == 2 and Path(built["unet"].path).name in blobs  # the opt shape (built) and 8x8
    assert len(list((openvino_artifact / "engines" / "openvino" / "text_encoder").glob(f"*/{BLOB_FILE}"))) == 1

    blob = Path(built["unet"].path) / BLOB_FILE
    with blob.open("r+b") as f:
        f.seek(blob.stat().st_size // 2)
        f.write(bytes(64))
    assert "does not match the sha256" in engine_problem(blob.parent, {})
    with caplog.at_level(logging.WARNING, logger="sdrt"):
        again = {r.component: r for r in build_engines(openvino_artifact, manifest, "openvino")}
    assert f"{blob} does not match the sha256 in its build record" in caplog.text
    assert not again["unet"].reused and engine_problem(blob.parent, {}) is None


def test_options_are_checked():
    with pytest.raises(ValueError, match="device 'cuda': the openvino backend needs OpenVINO .* runs on the CPU"):
        OpenVinoOptions(device="cuda")
    with pytest.raises(ValueError, match="max_compiled 0 must be at least 1"):
        OpenVinoOptions(max_compiled=0)
    assert OpenVinoOptions().settings()["inference_precision"] == "f32"  # never bf16: it would change the image
