"""The engine cache: keyed on what produced an engine, reused when nothing changed, rebuilt otherwise."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch

from sdrt.engines import build_engines, load_engines
from sdrt.manifest import read_manifest


def _build(path, **options):
    return {r.component: r for r in build_engines(path, read_manifest(path), "onnxruntime", **options)}


def test_unchanged_inputs_reuse_the_engine(fresh_artifact):
    first = _build(fresh_artifact)
    assert not any(r.reused for r in first.values())
    second = _build(fresh_artifact)
    assert all(r.reused for r in second.values())
    assert {c: r.key for c, r in first.items()} == {c: r.key for c, r in second.items()}


def test_changed_setting_rebuilds(fresh_artifact):
    default = _build(fresh_artifact)
    basic = _build(fresh_artifact, optimization="basic")
    assert not any(r.reused for r in basic.values())
    assert all(basic[c].key != default[c].key and basic[c].path != default[c].path for c in default)
    assert all(r.reused for r in _build(fresh_artifact).values()), "the first build must still be cached"


def test_changed_onnx_rebuilds_only_that_component(fresh_artifact):
    before = _build(fresh_artifact)
    path = fresh_artifact / read_manifest(fresh_artifact).files["vae_decoder"].path
    model = onnx.load(str(path))
    model.doc_string = "edited after export"
    onnx.save(model, str(path))
    after = _build(fresh_artifact)
    assert not after["vae_decoder"].reused and after["vae_decoder"].key != before["vae_decoder"].key
    assert all(after[c].reused for c in ("text_encoder", "unet", "vae_encoder"))


def test_half_built_engine_is_not_used(fresh_artifact):
    built = _build(fresh_artifact)
    record = built["unet"]
    (Path(record.path) / "build.json").unlink()  # as if the build was cut short before its record was written
    again = _build(fresh_artifact)
    assert not again["unet"].reused and again["unet"].key == record.key


def test_engine_rejects_batch_outside_profile(artifact):
    manifest = read_manifest(artifact)
    unet = load_engines(artifact, manifest, "onnxruntime")["unet"]
    feeds = unet.spec.sample_inputs(
        {"cfg_batch": 5, "latent_height": 8, "latent_width": 8, "text_length": 77, "text_sequence": 77}
    )
    with pytest.raises(ValueError, match=r"cfg_batch 5 is outside the engine's profile 1\.\.4; rebuild with a larger"):
        unet(feeds)
    with pytest.raises(ValueError, match="must be float32"):
        unet({**feeds, "sample": feeds["sample"].to(torch.float16)})
    with pytest.raises(ValueError, match="missing"):
        unet({"sample": feeds["sample"]})


def test_unknown_option_and_levels(artifact):
    with pytest.raises(ValueError, match="has no option fast; its options: device, optimization, threads"):
        _build(artifact, fast=True)
    with pytest.raises(ValueError, match="optimization 'max' is not one of"):
        _build(artifact, optimization="max")


def test_cuda_device_without_cuda_is_a_clear_error(artifact):
    import onnxruntime as ort

    if torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine runs ONNX Runtime on CUDA; the error path is for machines that cannot")
    with pytest.raises(ValueError, match="device 'cuda' is not available|needs ONNX Runtime's CUDAExecutionProvider"):
        load_engines(artifact, read_manifest(artifact), "onnxruntime", device="cuda")
