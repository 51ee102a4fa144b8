"""Backends are picked by name; unknown names and wrong sources get errors that list what is allowed."""

from __future__ import annotations

import pytest

from sdrt import Pipeline
from sdrt.engines import Engine, backend_module, load_engines
from sdrt.manifest import read_manifest


def test_unknown_backend_lists_known_names():
    with pytest.raises(ValueError, match="unknown backend 'tensorrt2'; known backends: torch, onnxruntime, tensorrt"):
        backend_module("tensorrt2")


def test_unknown_device():
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        Pipeline.load("/nonexistent", device="tpu")


def test_every_backend_speaks_the_protocol(pipelines):
    for pipe in pipelines.values():
        engines = pipe.engines
        assert set(engines) == {"text_encoder", "unet", "vae_decoder", "vae_encoder"}
        assert all(isinstance(e, Engine) for e in engines.values())


def test_torch_backend_needs_a_model_directory(artifact):
    with pytest.raises(ValueError, match="the torch backend runs a diffusers model directory"):
        load_engines(artifact, read_manifest(artifact), "torch")


def test_onnxruntime_backend_needs_an_export(demo_model):
    with pytest.raises(ValueError, match=r"has no ONNX files .* \(create one with 'sdrt export"):
        Pipeline.load(demo_model, backend="onnxruntime")
