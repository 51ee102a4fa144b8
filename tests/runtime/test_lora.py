"""LoRAs on a pipeline: fused into the torch backend's modules, switched exactly, refused where weights are baked in."""

from __future__ import annotations

import numpy as np
import pytest

from sdrt import Pipeline
from tests.conftest import RANGES
from tests.test_lora import lora_factors, write_kohya_lora

KWARGS = dict(height=64, width=64, num_inference_steps=3, seed=9, scheduler="euler")


@pytest.fixture(scope="module")
def torch_pipe(demo_model):
    return Pipeline.load(demo_model, backend="torch", ranges=RANGES)  # its own: a LoRA changes its weights


def test_lora_changes_the_image_and_switching_back_is_exact(torch_pipe, tmp_path):
    pipe = torch_pipe
    modules = {
        "text_encoder": pipe.engines["text_encoder"].module.text_encoder,
        "unet": pipe.engines["unet"].module.unet,
    }
    lora_a = write_kohya_lora(tmp_path / "a.safetensors", lora_factors(modules, seed=1))
    lora_b = write_kohya_lora(tmp_path / "b.safetensors", lora_factors(modules, seed=2))
    base = np.asarray(pipe.generate("a cat", **KWARGS).images[0])
    pipe.set_lora(lora_a, scale=0.5)
    with_a = np.asarray(pipe.generate("a cat", **KWARGS).images[0])
    assert not np.array_equal(with_a, base)
    pipe.set_lora(lora_b)
    assert not np.array_equal(np.asarray(pipe.generate("a cat", **KWARGS).images[0]), with_a)
    pipe.set_lora(lora_a, scale=0.5)
    assert np.array_equal(np.asarray(pipe.generate("a cat", **KWARGS).images[0]), with_a)
    pipe.set_lora(None)
    assert np.array_equal(np.asarray(pipe.generate("a cat", **KWARGS).images[0]), base)


def test_a_bad_lora_leaves_the_base_weights(torch_pipe, tmp_path):
    base = np.asarray(torch_pipe.generate("a cat", **KWARGS).images[0])
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="cannot be read as safetensors"):
        torch_pipe.set_lora(bad)
    assert np.array_equal(np.asarray(torch_pipe.generate("a cat", **KWARGS).images[0]), base)


def test_onnxruntime_refuses_lora_switching(pipelines, tmp_path):
    with pytest.raises(ValueError, match="LoRAs need the torch backend or the tensorrt.*fuse the LoRA at export"):
        pipelines["onnxruntime"].set_lora(tmp_path / "x.safetensors")
