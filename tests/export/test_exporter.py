"""Exports are atomic and refuse to clobber; bad model directories are named before any work."""

from __future__ import annotations

import json
import shutil

import pytest

from sdrt.export import ExportConfig, export_model
from sdrt.export import exporter as exporter_module

SMALL = ExportConfig(max_batch=1, min_size=64, max_size=128, opt_size=64)


def test_interrupted_export_leaves_nothing(demo_model, tmp_path, monkeypatch):
    real = exporter_module.export_component

    def fail_on_unet(module, spec, *args, **kwargs):
        if spec.name == "unet":
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-export
        return real(module, spec, *args, **kwargs)

    monkeypatch.setattr(exporter_module, "export_component", fail_on_unet)
    with pytest.raises(KeyboardInterrupt):
        export_model(demo_model, tmp_path / "out", SMALL)
    assert list(tmp_path.iterdir()) == [], "a partial export was left behind"


def test_existing_artifact_needs_overwrite(demo_model, tmp_path):
    target = tmp_path / "art"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="already exists; pass --overwrite"):
        export_model(demo_model, target, SMALL)
    assert (target / "keep.txt").read_text() == "x"


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: (d / "model_index.json").unlink(), "has no model_index.json"),
        (lambda d: shutil.rmtree(d / "unet"), "lacks unet/"),
        (lambda d: (d / "unet" / "config.json").write_text("{not json"), "is not valid JSON"),
        (
            lambda d: (d / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyPipeline"})),
            "pipeline 'KandinskyPipeline' is no model family sdrt runs",
        ),
        (
            lambda d: (d / "vae" / "diffusion_pytorch_model.safetensors").rename(
                d / "vae" / "diffusion_pytorch_model.bin"
            ),
            "pickle files that sdrt does not load",
        ),
    ],
)
def test_malformed_model_directory(demo_model, tmp_path, mutate, message):
    broken = tmp_path / "model"
    shutil.copytree(demo_model, broken)
    mutate(broken)
    with pytest.raises(ValueError, match=message):
        export_model(broken, tmp_path / "out", SMALL)
    assert not (tmp_path / "out").exists()


def test_missing_model_directory(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        export_model(tmp_path / "nope", tmp_path / "out", SMALL)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"opset": 13}, "opset 13 is too old"),
        ({"max_batch": 0}, "max_batch 0 must be at least 1"),
        ({"min_size": 512, "max_size": 256}, "min_size 512 is larger than max_size 256"),
    ],
)
def test_bad_export_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ExportConfig(**kwargs)


def test_large_graphs_keep_weights_in_one_external_file(demo_model, artifact, tmp_path, monkeypatch):
    """The >2 GB path (a full-size fp32 UNet), forced on the tiny model: export, build and run."""
    import numpy as np

    from sdrt import Pipeline
    from sdrt.export import onnx_export

    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 0)
    out = tmp_path / "external"
    manifest = export_model(demo_model, out, ExportConfig(max_batch=2, min_size=64, max_size=256, opt_size=128))
    for name, onnx_file in manifest.files.items():
        assert onnx_file.external_data == f"{name}/model.onnx.data"
        table = ["token_embeddings.safetensors"] if name in manifest.token_tables else []
        assert sorted(p.name for p in (out / name).iterdir()) == sorted(["model.onnx", "model.onnx.data", *table])
    kwargs = {"height": 64, "width": 64, "num_inference_steps": 3, "seed": 3}
    image = Pipeline.load(out).generate("a cat", **kwargs).images[0]
    assert list((out / "engines" / "onnxruntime" / "unet").glob("*/model.onnx.data")), "engine lost its weights file"
    reference = Pipeline.load(artifact).generate("a cat", **kwargs).images[0]
    assert np.array_equal(np.asarray(image), np.asarray(reference))
