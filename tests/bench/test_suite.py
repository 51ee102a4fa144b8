"""benchmarks/suite.py: when an artifact is re-exported, and how results land in the README."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.suite import _stale, _update_readme, suites
from sdrt.export import ExportConfig
from sdrt.runtime.deep_cache import DeepCache

ROOT = Path(__file__).resolve().parents[2]


def test_an_artifact_is_re_exported_only_when_missing_or_different(artifact, demo_model, tmp_path):
    same = ExportConfig(max_batch=2, min_size=64, max_size=256, opt_size=128)  # how conftest exported it
    assert _stale(artifact, demo_model, same) is None
    wider = ExportConfig(max_batch=4, min_size=64, max_size=256, opt_size=128)
    assert "ranges 2, 64..256 (128) differ" in _stale(artifact, demo_model, wider)
    assert "is not an sdrt artifact" in _stale(tmp_path, demo_model, same)


def test_results_replace_their_own_block_in_the_readme(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# Benchmarks\n\nintro\n")
    _update_readme(readme, "cpu-2core-x86-64", "first table\n")
    text = readme.read_text()
    assert text.startswith("# Benchmarks\n\nintro\n\n## Results: cpu-2core-x86-64\n\n<!-- results:cpu-2core-x86-64 -->")
    _update_readme(readme, "nvidia-h100", "gpu table\n")
    _update_readme(readme, "cpu-2core-x86-64", "second table\n")
    text = readme.read_text()
    assert "first table" not in text and text.count("second table") == 1 and "gpu table" in text
    assert text.index("second table") < text.index("gpu table")  # replaced where it was


def test_the_suites_time_what_the_issue_asks():
    cpu, gpu = suites(artifact_on_gpu=False)["cpu"], suites(artifact_on_gpu=True)["gpu"]
    assert [(m.preset, m.sizes, m.batches, m.steps, m.refiner) for m in cpu] == [
        ("tiny", ((128, 128),), (1, 2, 4), 20, None),
        ("sd15", ((256, 256),), (1,), 4, None),
        ("sdxl-small", ((256, 256),), (1,), 4, None),  # SDXL's topology at half widths, exported for onnxruntime
        ("unclip-tiny", ((128, 128),), (1,), 20, None),
        ("tiny", ((128, 128),), (1,), 20, None),  # ControlNet: none, one and two nets
        ("sd15", ((256, 256),), (1,), 4, None),  # one and two full-size ControlNets against diffusers'
        ("x4", ((512, 512),), (1,), 4, None),  # the x4 upscaler, 128x128 in, against diffusers' pipeline
        ("sd15", ((256, 256),), (1,), 20, None),  # DeepCache: exact vs intervals 3 and 5, one run
        ("sdxl-small", ((256, 256),), (1,), 20, None),
    ]
    assert cpu[6].mode == "upscale" and cpu[6].export.max_size == 512
    assert [(m.controlnets, m.control_counts) for m in cpu[4:6]] == [
        (("controlnet-tiny", "controlnet-tiny"), (0, 1, 2)),
        (("sd15-controlnet", "sd15-controlnet"), (1, 2)),
    ]
    assert cpu[5].baselines == ("diffusers",) and cpu[5].label == "sd15-random + ControlNet"
    assert cpu[3].mode == "variation" and gpu[3].mode == "variation"
    assert cpu[2].export is not None
    assert [(m.preset, m.sizes, m.batches, m.steps, m.refiner, m.refiner_switch_at) for m in gpu] == [
        ("sd15", ((512, 512),), (1, 8), 50, None, None),
        ("sdxl", ((1024, 1024),), (1,), 30, None, None),
        ("sdxl", ((1024, 1024),), (1,), 30, "sdxl-refiner", 0.8),
        ("unclip", ((768, 768),), (1,), 20, None, None),
        ("sd15", ((512, 512),), (1,), 50, None, None),  # with one ControlNet
        ("sd15", ((512, 512),), (1,), 50, None, None),  # DeepCache
        ("sdxl", ((1024, 1024),), (1,), 30, None, None),  # DeepCache
    ]
    intervals = (DeepCache(3, 0), DeepCache(5, 0))
    assert [m.deep_caches for m in cpu[7:]] == [intervals] * 2 and [m.deep_caches for m in gpu[5:]] == [intervals] * 2
    assert not any(m.deep_caches for m in cpu[:7] + gpu[:5])
    assert gpu[4].controlnets == ("sd15-controlnet",) and gpu[4].control_counts == (1,)
    assert gpu[0].export.max_batch == 8  # throughput up to batch 8 needs an artifact that takes it
    # the artifacts the DeepCache rows run on carry the branch-0 graphs
    assert cpu[1].export.deep_cache == cpu[2].export.deep_cache == gpu[0].export.deep_cache == (0,)
    assert cpu[7].export is cpu[1].export and cpu[8].export is cpu[2].export
    assert suites(artifact_on_gpu=False)["gpu"][0].export is None  # nothing would run an export


@pytest.mark.parametrize("script", ["cpu.sh", "gpu.sh"])
def test_the_scripts_dry_run_without_a_gpu(script):
    """Each script's bench commands are built and checked (gpu.sh cannot run here: this is what checks it)."""
    env = os.environ | {"PY": sys.executable, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / script), "--dry-run"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    commands = done.stdout.splitlines()
    assert len(commands) == (9 if script == "cpu.sh" else 7) and all(c.startswith("sdrt bench ") for c in commands)
    cached = [c for c in commands if "--deep-cache" in c]
    size, steps = ("256x256", "20") if script == "cpu.sh" else ("512x512", "50")
    backends = "--backend onnxruntime,torch" if script == "cpu.sh" else "--backend tensorrt,torch"
    assert len(cached) == 2 and all("--deep-cache 3:0,5:0" in c for c in cached)
    assert backends in cached[0] and (backends in cached[1]) == (script == "cpu.sh")
    assert f"--sizes {size} --batch 1 --steps {steps}" in cached[0]
