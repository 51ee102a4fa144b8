"""The CUDA paths give the CPU's images. These need a GPU; on a machine without one they skip, saying why."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdrt import Pipeline
from tests.conftest import RANGES

pytestmark = pytest.mark.gpu

KWARGS = {"height": 72, "width": 104, "num_inference_steps": 6, "seed": 11, "scheduler": "euler_a"}


def _needs_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU and a CUDA build of torch; this machine has neither")


def _assert_close(a, b, bound):
    diff = np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max()
    assert diff <= bound, f"max 8-bit difference {diff} > {bound}"


def test_onnxruntime_cuda_matches_cpu(artifact, pipelines):
    _needs_cuda()
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"needs onnxruntime-gpu; this onnxruntime has {ort.get_available_providers()}")
    gpu = Pipeline.load(artifact, backend="onnxruntime", device="cuda")
    assert gpu.engines["unet"].device.type == "cuda"
    _assert_close(
        gpu.generate("a cat", **KWARGS).images[0], pipelines["onnxruntime"].generate("a cat", **KWARGS).images[0], 2
    )


def test_torch_cuda_matches_cpu(demo_model, pipelines):
    _needs_cuda()
    gpu = Pipeline.load(demo_model, backend="torch", device="cuda", ranges=RANGES)
    _assert_close(
        gpu.generate("a cat", **KWARGS).images[0], pipelines["torch"].generate("a cat", **KWARGS).images[0], 2
    )
