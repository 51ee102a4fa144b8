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
    refiner = {name: _parameters(m) for name, m in sdxl_modules("sdxl", "sdxl-refiner", device="meta").items()}
    assert refiner["vae"] == counts["vae"] and refiner["text_encoder_2"] == counts["text_encoder_2"]
    # the refiner's published fp16 UNet file holds 4.52 GB of weights: 2.26 B parameters at 2 bytes each
    assert abs(2 * refiner["unet"] - 4.52e9) / 4.52e9 < 0.005


def test_sdxl_runs_on_sdrt_and_as_a_baseline(tmp_path):
    model = write_model(tmp_path / "sdxl-tiny", "sdxl-tiny", device="cpu")
    config = BenchConfig(
        path=model, sizes=((64, 64),), steps=2, runs=1, warmup=0, device="cpu", cold_start=False, settle_seconds=0.0
    )
    result = run_bench(config)
    status = {r.scenario.contender: (r.status, r.reason) for r in result.records}
    assert status["sdrt-torch"] == ("ok", None) and status["diffusers"] == ("ok", None)
    assert status["sdrt-onnxruntime"][0] == "skipped" and "runs an exported artifact" in status["sdrt-onnxruntime"][1]
    for contender in ("sdrt-torch", "diffusers"):
        (record,) = [r for r in result.records if r.scenario.contender == contender]
        assert record.scenario.family == "sdxl"
        sample = record.samples[0]
        assert sample.unet_calls == 2 and sample.steps == 2 and sample.text_encoder > 0 and sample.vae_decode > 0


def test_a_model_sdrt_does_not_run_is_timed_on_the_baselines_alone(tmp_path):
    import json
    import shutil

    model = write_model(tmp_path / "tiny", "tiny", device="cpu")
    other = tmp_path / "other"
    shutil.copytree(model, other)
    index = json.loads((other / "model_index.json").read_text())
    (other / "model_index.json").write_text(json.dumps({**index, "_class_name": "AltDiffusionPipeline"}))
    from sdrt.bench.weights import contender, resolve_weights

    weights = resolve_weights(other)
    spec, reason = contender("torch", weights, "cpu")
    assert spec is None and reason.startswith("not supported yet: ")
    assert "pipeline 'AltDiffusionPipeline' is no model family sdrt runs" in reason


def test_unknown_preset_is_refused(tmp_path):
    with pytest.raises(ValueError, match="preset 'sd3' is not one of tiny, sd15, sdxl, sdxl-refiner, sdxl-small"):
        write_model(tmp_path / "x", "sd3")


def test_sdxl_base_and_refiner_are_timed_together(tmp_path):
    base = write_model(tmp_path / "sdxl-tiny", "sdxl-tiny", device="cpu")
    refiner = write_model(tmp_path / "sdxl-refiner-tiny", "sdxl-refiner-tiny", device="cpu")
    config = BenchConfig(
        path=base, refiner=refiner, refiner_switch_at=0.5, backends=("torch",), sizes=((64, 64),), steps=4, runs=1,
        warmup=0, device="cpu", cold_start=False, settle_seconds=0.0, scheduler="euler",
    )  # fmt: skip
    result = run_bench(config)
    status = {r.scenario.contender: r.status for r in result.records}
    assert status == {"sdrt-torch": "ok", "diffusers": "ok", "diffusers-compile": "skipped"}
    for record in (r for r in result.records if r.status == "ok"):
        sample = record.samples[0]
        assert record.scenario.refiner_switch_at == 0.5
        # Euler's 4 steps: the base runs 2 (timesteps 751, 501), the refiner 2 (251, 1)
        assert sample.steps == 4 and sample.unet_calls == 4
        assert 0 < sample.unet <= sample.denoise and sample.text_encoder > 0
    assert "--refiner" in config.command() and "--refiner-switch-at 0.5" in config.command()
    with pytest.raises(ValueError, match="a refiner and refiner_switch_at go together"):
        BenchConfig(path=base, refiner=refiner)


def test_unclip_variations_are_timed_against_diffusers(tmp_path):
    model = write_model(tmp_path / "unclip-tiny", "unclip-tiny", device="cpu")
    config = BenchConfig(
        path=model, mode="variation", backends=("torch",), sizes=((64, 64),), steps=2, runs=1, warmup=0,
        device="cpu", cold_start=False, settle_seconds=0.0, scheduler="ddim", guidance_scale=10.0,
    )  # fmt: skip
    result = run_bench(config)
    ok = [r for r in result.records if r.status == "ok"]
    assert {r.scenario.contender for r in ok} == {"sdrt-torch", "diffusers"}
    for record in ok:
        sample = record.samples[0]
        # the image encoder is part of the conditioning stage in both
        assert sample.steps == 2 and sample.unet_calls == 2 and sample.text_encoder > 0


def test_the_x4_upscaler_is_timed_against_diffusers(tmp_path):
    """An x4 model runs upscale by default: a 16x16 low-res image in, 64x64 out, on sdrt and diffusers' pipeline."""
    model = write_model(tmp_path / "x4-tiny", "x4-tiny", device="cpu")
    config = BenchConfig(
        path=model, backends=("torch",), sizes=((64, 64),), steps=2, runs=1, warmup=0, device="cpu",
        cold_start=False, settle_seconds=0.0, scheduler="ddim",
    )  # fmt: skip
    result = run_bench(config)
    ok = [r for r in result.records if r.status == "ok"]
    assert {r.scenario.contender for r in ok} == {"sdrt-torch", "diffusers"}
    for record in ok:
        assert record.scenario.mode == "upscale" and record.scenario.input_size == (16, 16)
        sample = record.samples[0]
        assert sample.steps == 2 and sample.unet_calls == 2 and sample.vae_decode > 0
    with pytest.raises(ValueError, match="mode img2img is not for the x4 upscaler"):
        run_bench(BenchConfig(path=model, mode="img2img", backends=("torch",), cold_start=False))
