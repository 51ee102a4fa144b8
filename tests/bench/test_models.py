"""benchmarks/models.py: the published SDXL architecture, and a tiny SDXL that the diffusers baseline runs."""

from __future__ import annotations

import pytest

from benchmarks.models import sdxl_modules, write_model
from sdrt.bench import BenchConfig, run_bench


def _parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_sdxl_has_the_published_parameter_counts():
    modules = sdxl_modules("sdxl", device="meta")  # shapes only: nothing is allocated
    counts = {name: _parameters(m) for name, m in modules.items()}
    assert counts == {
        "unet": 2_567_463_684,
        "vae": 83_653_863,
        "text_encoder": 123_060_480,  # CLIP ViT-L/14
        "text_encoder_2": 694_659_840,  # OpenCLIP ViT-bigG/14, with its projection
    }


def test_sdxl_runs_as_a_baseline_and_sdrt_says_it_is_not_supported(tmp_path):
    model = write_model(tmp_path / "sdxl-tiny", "sdxl-tiny", device="cpu")
    config = BenchConfig(
        path=model, sizes=((64, 64),), steps=2, runs=1, warmup=0, device="cpu", cold_start=False, settle_seconds=0.0
    )
    result = run_bench(config)
    status = {r.scenario.contender: (r.status, r.reason) for r in result.records}
    for backend in ("onnxruntime", "torch", "tensorrt"):
        state, reason = status[f"sdrt-{backend}"]
        assert state == "skipped" and reason.startswith("not supported yet: ")
        assert "pipeline 'StableDiffusionXLPipeline' is no model family sdrt runs" in reason
    assert status["diffusers"] == ("ok", None)
    (diffusers,) = [r for r in result.records if r.scenario.contender == "diffusers"]
    assert diffusers.scenario.family == "sdxl"
    sample = diffusers.samples[0]
    assert sample.unet_calls == 2 and sample.steps == 2 and sample.text_encoder > 0 and sample.vae_decode > 0
    assert "sdrt does not run this model" in result.notes[0]


def test_unknown_preset_is_refused(tmp_path):
    with pytest.raises(ValueError, match="preset 'sd3' is not one of tiny, sd15, sdxl, sdxl-tiny"):
        write_model(tmp_path / "x", "sd3")
