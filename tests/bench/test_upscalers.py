"""`sdrt bench UPSCALER_FILE`: a GAN upscaler's backends timed against its torch module, each image compared."""

from __future__ import annotations

import json

from sdrt.cli import main


def test_an_upscaler_file_is_timed_against_its_torch_module(upscaler_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SDRT_CACHE_DIR", str(tmp_path / "cache"))  # the ONNX export goes here, not to ~/.cache
    out = tmp_path / "bench.json"
    argv = [
        "bench", str(upscaler_dir / "realesrgan-x2plus.safetensors"), "--backend", "onnxruntime,torch,tensorrt",
        "--sizes", "48x40", "--runs", "2", "--warmup", "0", "--device", "cpu", "--upscaler-tile", "16",
        "--upscaler-tile-overlap", "4", "--json", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "realesrgan-x2plus.safetensors: 48x40 in" in table and "vs torch module" in table
    records = {r["contender"]: r for r in json.loads(out.read_text())["records"]}
    assert list(records) == ["torch-module", "sdrt-onnxruntime", "sdrt-torch", "sdrt-tensorrt"]
    for name in ("torch-module", "sdrt-onnxruntime", "sdrt-torch"):
        record = records[name]
        assert record["status"] == "ok" and len(record["seconds"]) == 2 and record["median_seconds"] > 0
        assert record["output_size"] == [96, 80] and record["max_diff"] <= 1, record
    assert records["sdrt-tensorrt"]["status"] == "skipped" and records["sdrt-tensorrt"]["reason"]
