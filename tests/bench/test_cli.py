"""`sdrt bench` end to end on the demo artifact, cold start included, and its errors."""

from __future__ import annotations

import json

from PIL import Image

from sdrt.cli import main


def _engine_files(artifact):
    return {p.relative_to(artifact): p.stat().st_mtime_ns for p in (artifact / "engines").rglob("*") if p.is_file()}


def test_bench_end_to_end_with_cold_start(artifact, demo_model, tmp_path, capsys):
    from sdrt.engines import build_engines
    from sdrt.manifest import read_manifest

    build_engines(artifact, read_manifest(artifact), "onnxruntime")  # the artifact's own cache is full
    before = _engine_files(artifact)
    out, chart = tmp_path / "bench.json", tmp_path / "bench.png"
    argv = ["bench", str(artifact), "--model", str(demo_model), "--backend", "onnxruntime,tensorrt"]
    argv += ["--baseline", "none", "--sizes", "64x64", "--steps", "2", "--runs", "1", "--device", "cpu"]
    assert main([*argv, "--json", str(out), "--plot", str(chart)]) == 0
    printed = capsys.readouterr().out
    assert "demo (sd1) on cpu: 64x64, batch 1, 2 steps" in printed
    assert "sdrt-tensorrt" in printed and "Cold start, each in a fresh process" in printed
    assert f"wrote {out}" in printed and f"wrote {chart}" in printed

    data = json.loads(out.read_text())
    assert data["command"].startswith(f"sdrt bench {artifact} --model {demo_model} --backend onnxruntime,tensorrt")
    ran, skipped = data["records"]
    assert ran["status"] == "ok" and skipped["status"] == "skipped"
    cold = ran["cold_start"]
    assert [b["component"] for b in cold["build"]] == ["text_encoder", "unet", "vae_decoder", "vae_encoder"]
    assert cold["build_seconds"] == sum(b["seconds"] for b in cold["build"]) > 0
    assert 0 < cold["load_seconds"] < cold["process_seconds"]
    assert cold["first_image_seconds"] > 0
    assert cold["load_to_first_image_seconds"] == cold["load_seconds"] + cold["first_image_seconds"]
    assert cold["peak_rss_bytes"] > 100 * 2**20 and cold["build_peak_rss_bytes"] > 0
    assert cold["gpu_used_bytes"] is None
    with Image.open(chart) as image:
        assert image.format == "PNG"
    # the build was timed from scratch in a scratch copy: the artifact's own engine cache is untouched, no copy left
    assert _engine_files(artifact) == before
    assert not [p for p in artifact.parent.iterdir() if ".coldstart-" in p.name]


def test_bench_errors_exit_nonzero_with_the_reason(artifact, capsys):
    assert main(["bench", str(artifact), "--sizes", "64x100", "--no-cold-start"]) == 2
    assert "height 100 is not a multiple of 8" in capsys.readouterr().err
    assert main(["bench", str(artifact), "--batch", "1,x", "--no-cold-start"]) == 2
    assert "--batch '1,x' is not a comma-separated list of integers" in capsys.readouterr().err
    assert main(["bench", str(artifact), "--backend", "none", "--baseline", "none"]) == 2
    assert "nothing to time" in capsys.readouterr().err
    assert main(["bench", str(artifact), "--controlnets", "0,1", "--no-cold-start"]) == 2
    assert "1 ControlNets per image, but 0 are given (--controlnet)" in capsys.readouterr().err


def test_a_contender_that_fails_is_reported_and_the_run_exits_nonzero(demo_model, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(demo_model, broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not safetensors")
    out = tmp_path / "bench.json"
    argv = ["bench", str(broken), "--backend", "torch", "--no-compile", "--sizes", "64x64", "--steps", "1"]
    assert main([*argv, "--runs", "1", "--no-cold-start", "--device", "cpu", "--json", str(out)]) == 1
    err = capsys.readouterr().err
    assert "sdrt bench: failed: sdrt-torch: loading failed:" in err
    assert "sdrt bench: failed: diffusers: loading failed:" in err
    records = json.loads(out.read_text())["records"]
    assert [(r["scenario"]["contender"], r["status"]) for r in records] == [
        ("sdrt-torch", "failed"),
        ("diffusers", "failed"),
    ]
