"""Every building backend has a float32 copy of an fp16 network: the VAE guard's fallback when fp16 overflows."""

from __future__ import annotations

import logging

import onnx
import pytest
import torch

from sdrt.engines import load_engines
from sdrt.manifest import read_manifest
from sdrt.onnx_files import upcast_model
from sdrt.runtime.vae_guard import VaeDecoderGuard
from tests.export.test_fp16 import export_fp16

BACKENDS = ["onnxruntime", "openvino"]
# the fallback must stay within one 8-bit level (2/255 in [-1, 1]) of the fp32 export; measured on the tiny VAE
# decoder, the upcast graph (fp16-rounded weights, fp32 math) is 6.0e-3 off on ONNX Runtime and OpenVINO alike
UPCAST_ATOL = 2 / 255


@pytest.fixture(scope="module")
def fp16_vae_artifact(demo_model, artifact, tmp_path_factory):
    return export_fp16(demo_model, artifact, tmp_path_factory.mktemp("artifacts") / "fp16-vae", vae_fp16=True)


def _backend(name: str) -> str:
    if name == "openvino":
        pytest.importorskip("openvino", reason="needs the openvino package")
    return name


def test_upcast_graph_has_no_fp16_left(fp16_vae_artifact):
    manifest = read_manifest(fp16_vae_artifact)
    model = onnx.load(str(fp16_vae_artifact / manifest.files["vae_decoder"].path))
    fp16 = onnx.TensorProto.FLOAT16
    assert any(i.data_type == fp16 for i in model.graph.initializer), "the export is fp16 to begin with"
    upcast = upcast_model(model)
    onnx.checker.check_model(upcast)
    assert not [i.name for i in upcast.graph.initializer if i.data_type == fp16]
    casts = [a.i for n in upcast.graph.node if n.op_type == "Cast" for a in n.attribute if a.name == "to"]
    assert casts and fp16 not in casts
    assert len(upcast.graph.node) == len(model.graph.node), "the graph is otherwise the same"


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_copy_matches_the_fp32_export(backend, fp16_vae_artifact, artifact):
    decoder = load_engines(fp16_vae_artifact, read_manifest(fp16_vae_artifact), _backend(backend))["vae_decoder"]
    fp32 = load_engines(artifact, read_manifest(artifact), backend)["vae_decoder"]
    assert fp32.float32_copy() is fp32, "an fp32 graph is its own float32 copy"
    copy = decoder.float32_copy()
    assert copy is not decoder
    feeds = {"latent": torch.randn(1, 4, 9, 13, generator=torch.Generator().manual_seed(0))}
    torch.testing.assert_close(copy(feeds), fp32(feeds), rtol=0, atol=UPCAST_ATOL)


class Overflowing:
    """The fp16 decoder with its output poisoned as an fp16 overflow would: ONNX Runtime and OpenVINO compute fp16
    graphs with fp32 kernels on the CPU, so no input makes them overflow here; the fallback below is the real one."""

    def __init__(self, engine) -> None:
        self.engine, self.spec, self.ranges, self.device = engine, engine.spec, engine.ranges, engine.device

    def __call__(self, feeds):
        images = self.engine(feeds)["images"].clone()
        images[0, 0, 0, 0] = float("inf")
        return {"images": images}


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_fp16_overflow_decodes_again_with_the_float32_copy(backend, fp16_vae_artifact, artifact, caplog):
    decoder = load_engines(fp16_vae_artifact, read_manifest(fp16_vae_artifact), _backend(backend))["vae_decoder"]
    fp32 = load_engines(artifact, read_manifest(artifact), backend)["vae_decoder"]
    guard = VaeDecoderGuard(Overflowing(decoder), fallback=decoder.float32_copy)
    feeds = {"latent": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))}
    with caplog.at_level(logging.WARNING, logger="sdrt"):
        images = guard(feeds)["images"]
    assert guard.fell_back and torch.isfinite(images).all() and "decoding in float32" in caplog.text
    torch.testing.assert_close(images, fp32(feeds)["images"], rtol=0, atol=UPCAST_ATOL)
