"""The CUDA paths give the CPU's images. These need a GPU; on a machine without one they skip, saying why.

The bookkeeping of ONNX Runtime CUDA graphs (static buffers and a graph id per shape) runs on the CPU too.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdrt import Pipeline
from tests.conftest import RANGES
from tests.export.test_fp16 import export_fp16, psnr

KWARGS = {"height": 72, "width": 104, "num_inference_steps": 6, "seed": 11, "scheduler": "euler_a"}
# 8-bit PSNR of an fp16 GPU image against the fp32 CPU image; fp16 ONNX graphs run on the CPU give
# 46-68 dB against fp32 (tests/export/test_fp16.py). Not yet measured on a GPU.
FP16_PSNR_DB = 35.0


def _has_ort_cuda() -> bool:
    import onnxruntime as ort

    return torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers()


def _gpu(condition: bool, reason: str):
    """The gpu mark and a skip evaluated before any fixture exports or loads anything."""

    def mark(test):
        return pytest.mark.gpu(pytest.mark.skipif(not condition, reason=reason)(test))

    return mark


needs_cuda = _gpu(torch.cuda.is_available(), "needs a CUDA GPU and a CUDA build of torch; this machine has neither")
needs_ort_cuda = _gpu(
    _has_ort_cuda(), "needs a CUDA GPU and onnxruntime-gpu (CUDAExecutionProvider); this machine lacks them"
)


def _assert_close(a, b, bound):
    diff = np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max()
    assert diff <= bound, f"max 8-bit difference {diff} > {bound}"


@pytest.fixture(scope="module")
def fp16_artifact(demo_model, artifact, tmp_path_factory):
    return export_fp16(demo_model, artifact, tmp_path_factory.mktemp("artifacts") / "fp16-cuda")


@needs_ort_cuda
def test_onnxruntime_cuda_matches_cpu(artifact, pipelines):
    gpu = Pipeline.load(artifact, backend="onnxruntime", device="cuda")
    assert gpu.engines["unet"].device.type == "cuda"
    _assert_close(
        gpu.generate("a cat", **KWARGS).images[0], pipelines["onnxruntime"].generate("a cat", **KWARGS).images[0], 2
    )


@needs_ort_cuda
@pytest.mark.parametrize("cuda_graphs", [False, True], ids=["fp16", "fp16-cuda-graphs"])
def test_onnxruntime_cuda_fp16_matches_cpu(fp16_artifact, pipelines, cuda_graphs):
    gpu = Pipeline.load(fp16_artifact, backend="onnxruntime", device="cuda", cuda_graphs=cuda_graphs)
    reference = pipelines["onnxruntime"].generate("a cat", **KWARGS).images[0]
    first = gpu.generate("a cat", **KWARGS).images[0]
    again = gpu.generate("a cat", **KWARGS).images[0]  # with CUDA graphs: replayed, not captured
    assert psnr(first, reference) > FP16_PSNR_DB
    _assert_close(again, first, 2)  # a stale or shared replay buffer would be far off
    other = {**KWARGS, "height": 64, "width": 64}  # a second shape: a second graph
    assert (
        psnr(gpu.generate("a cat", **other).images[0], pipelines["onnxruntime"].generate("a cat", **other).images[0])
        > FP16_PSNR_DB
    )


@needs_cuda
def test_torch_cuda_matches_cpu(demo_model, pipelines):
    """float32 on the GPU is the reference path: within 2 of 255 of the CPU."""
    gpu = Pipeline.load(demo_model, backend="torch", device="cuda", ranges=RANGES, dtype="float32")
    _assert_close(
        gpu.generate("a cat", **KWARGS).images[0], pipelines["torch"].generate("a cat", **KWARGS).images[0], 2
    )


def test_cuda_graph_option_needs_cuda():
    from sdrt.engines.onnxruntime_backend import options

    with pytest.raises(ValueError, match="cuda_graphs needs a CUDA device, not 'cpu'"):
        options(cuda_graphs=True)


def _graph_engine(artifact, max_cuda_graphs: int):
    """An engine whose CUDA graph bookkeeping runs on the CPU provider (which ignores the graph ids), with the
    run options of every run recorded."""
    from sdrt.engines import load_engines
    from sdrt.engines.onnxruntime_backend import OnnxRuntimeEngine, options
    from sdrt.manifest import read_manifest

    plain = load_engines(artifact, read_manifest(artifact), "onnxruntime")["vae_decoder"]
    opts = options(max_cuda_graphs=max_cuda_graphs)
    graphs = OnnxRuntimeEngine(plain.session, plain.spec, plain.ranges, opts, cuda_graphs=True)
    ids = []
    execute = graphs._execute
    graphs._execute = lambda binding, run_options=None: (
        ids.append(run_options.get_run_config_entry("gpu_graph_id")) or execute(binding, run_options)
    )
    return plain, graphs, ids


def test_cuda_graph_bindings_keep_buffers_per_shape(artifact):
    """What a CUDA graph replay needs, checked on the CPU provider: one set of fixed buffers and one graph id per
    input shape, fresh inputs copied in, outputs returned as copies."""
    plain, graphs, ids = _graph_engine(artifact, max_cuda_graphs=8)
    gen = torch.Generator().manual_seed(0)
    small, large = torch.randn(1, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 16, generator=gen)
    for latent in (small, large, small + 1, large):
        expected = plain({"latent": latent})["images"]
        out = graphs({"latent": latent})["images"]
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert len(graphs._graphs._by_shape) == 2, "one binding per input shape"
    assert ids == ["1", "2", "1", "2"]
    first = graphs({"latent": small})["images"]
    graphs({"latent": small + 1})
    torch.testing.assert_close(first, plain({"latent": small})["images"], msg="outputs must be copies")


def test_cuda_graphs_beyond_the_cap_run_without_one(artifact):
    """ONNX Runtime cannot release a captured graph, so past the cap a new shape runs with gpu_graph_id -1."""
    plain, graphs, ids = _graph_engine(artifact, max_cuda_graphs=1)
    gen = torch.Generator().manual_seed(0)
    small, large = torch.randn(1, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 16, generator=gen)
    for latent in (small, large, small, large):
        torch.testing.assert_close(graphs({"latent": latent})["images"], plain({"latent": latent})["images"])
    assert ids == ["1", "-1", "1", "-1"] and len(graphs._graphs._by_shape) == 1
