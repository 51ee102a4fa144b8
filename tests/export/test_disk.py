"""The export checks free disk space against its estimate before loading any weights."""

from __future__ import annotations

import shutil
from collections import namedtuple

import pytest

from sdrt.export import ExportConfig, disk, export_model
from sdrt.model_dir import ModelDir

Usage = namedtuple("Usage", "total used free")


def test_estimate_counts_fp16_parts_twice(demo_model):
    model = ModelDir.open(demo_model)
    fp32 = disk.export_size(model)
    assert set(fp32.parts) == {"text_encoder", "unet", "vae"} and all(v > 0 for v in fp32.parts.values())
    weights = sum((demo_model / model.weight_file(p)).stat().st_size for p in fp32.parts)
    assert 0.95 * weights <= sum(fp32.parts.values()) <= weights  # float32 weights: the files less their headers
    fp16 = disk.export_size(model, frozenset({"unet", "text_encoder"}))
    assert fp16.fp16_parts == {"unet", "text_encoder"}
    assert fp16.artifact_bytes > fp32.artifact_bytes + fp32.parts["unet"]
    assert disk.part_of("vae_decoder", ["text_encoder", "text_encoder_2", "vae"]) == "vae"
    assert disk.part_of("text_encoder_2", ["text_encoder", "text_encoder_2", "vae"]) == "text_encoder_2"


def test_export_fails_early_with_the_numbers(demo_model, tmp_path, monkeypatch):
    monkeypatch.setattr(disk.shutil, "disk_usage", lambda path: Usage(10**12, 10**12 - 5_000_000, 5_000_000))
    monkeypatch.setattr(ModelDir, "load_modules", lambda self: pytest.fail("weights loaded before the check"))
    with pytest.raises(ValueError, match=r"the export needs about [\d.]+ MB free in .*, which has 5\.0 MB") as err:
        export_model(demo_model, tmp_path / "out", ExportConfig())
    assert "unet" in str(err.value) and not (tmp_path / "out").exists()
    assert shutil.disk_usage(tmp_path).free > 0  # the real one is untouched
