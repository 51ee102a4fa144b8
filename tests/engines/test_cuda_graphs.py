"""The CUDA graph state every backend shares, in the parts a CPU can check: the bounded cache and the TF32 switch.

Capturing and replaying need a GPU (test_tensorrt.py, test_torch_cuda.py and test_cuda.py's gpu tests).
"""

from __future__ import annotations

import logging

import pytest
import torch

from sdrt.engines.cuda_graphs import GraphCache, shape_key
from sdrt.engines.torch_backend import float32_math


def test_graph_cache_keeps_the_most_recently_used(caplog):
    cache: GraphCache[str] = GraphCache(2, "unet")
    cache.put("a", "graph a")
    cache.put("b", "graph b")
    assert cache.get("a") == "graph a"  # a is now the most recent
    with caplog.at_level(logging.INFO, logger="sdrt"):
        cache.put("c", "graph c")
    assert cache.keys() == ["a", "c"] and cache.get("b") is None and cache.evictions == 1
    assert "unet: dropping the CUDA graph for b (at most 2 kept)" in caplog.text
    cache.fail("d", RuntimeError("operation not permitted when stream is capturing"))
    assert "d" in cache.failed and "d" not in cache and "running that shape without one" in caplog.text
    with pytest.raises(ValueError, match="max_cuda_graphs 0 must be at least 1"):
        GraphCache(0, "unet")


def test_shape_keys_tell_shapes_and_dtypes_apart():
    a = {"sample": torch.zeros(2, 4, 8, 8), "timestep": torch.zeros(2)}
    assert shape_key(a) == shape_key({"timestep": torch.ones(2), "sample": torch.ones(2, 4, 8, 8)})
    assert shape_key(a) != shape_key({**a, "sample": torch.zeros(2, 4, 8, 16)})
    assert shape_key(a) != shape_key({**a, "timestep": torch.zeros(2, dtype=torch.float64)})


def test_float32_math_switches_tf32_off_around_a_cuda_call_and_restores_it():
    """torch's cuDNN convolutions default to TF32; a float32 engine on CUDA must compute in IEEE float32."""
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    before = (conv.fp32_precision, matmul.fp32_precision)
    with float32_math(torch.device("cuda", 0), tf32=False):
        assert (conv.fp32_precision, matmul.fp32_precision) == ("ieee", "ieee")
    assert (conv.fp32_precision, matmul.fp32_precision) == before
    with float32_math(torch.device("cuda", 0), tf32=True):
        assert (conv.fp32_precision, matmul.fp32_precision) == ("tf32", "tf32")
    with float32_math(torch.device("cpu"), tf32=True):  # nothing to switch on the CPU
        assert (conv.fp32_precision, matmul.fp32_precision) == before
