"""The engine cache: engines are verified against their recorded digests, built once under a lock, and may live
outside a read-only artifact."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sdrt import Pipeline, hashing
from sdrt.engines import build_engines
from sdrt.engines.cache import RECORD_FILE, EngineCache, engine_problem, ensure_engine
from sdrt.manifest import read_manifest
from sdrt.onnx_files import ONNX_FILE

KWARGS = {"height": 64, "width": 64, "num_inference_steps": 3, "seed": 5, "scheduler": "euler"}


def _build(path, **options):
    return {r.component: r for r in build_engines(path, read_manifest(path), "onnxruntime", **options)}


def _image(pipe) -> np.ndarray:
    return np.asarray(pipe.generate("a cat", **KWARGS).images[0])


def _sdrt(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sdrt.cli", *args], capture_output=True, text=True, check=check)


# --- the record and its checks ----------------------------------------------------------------------------------


def test_every_file_is_recorded_and_checked(tmp_path):
    cache = EngineCache(tmp_path)
    payload = bytes(range(256)) * 64

    def build(tmp: Path) -> dict:
        (tmp / "model.plan").write_bytes(payload)
        (tmp / "weights").mkdir()
        (tmp / "weights" / "w.bin").write_bytes(b"w" * 100)
        return {"settings": {"x": 1}}

    engine = ensure_engine(cache, "fake", "unet", "k" * 64, {"lib": "1.0"}, build)
    assert not engine.reused and engine.path == tmp_path / "engines" / "fake" / "unet" / ("k" * 16)
    record = json.loads((engine.path / RECORD_FILE).read_text())
    assert set(record["files"]) == {"model.plan", "weights/w.bin"} and record["files"]["model.plan"]["bytes"] == 16384
    assert [p.name for p in engine.path.parent.iterdir() if not p.name.endswith(".lock")] == ["k" * 16]

    expected = {"key": "k" * 64, "lib": "1.0"}
    assert engine_problem(engine.path, expected) is None
    assert "lib '1.0', not '2.0'" in engine_problem(engine.path, {**expected, "lib": "2.0"})
    assert "key" in engine_problem(engine.path, {**expected, "key": "other"})
    plan = engine.path / "model.plan"
    plan.write_bytes(payload[:1000])
    assert f"{plan} has 1000 bytes" in engine_problem(engine.path, expected)
    damaged = bytearray(payload)
    damaged[5000] ^= 0xFF
    plan.write_bytes(bytes(damaged))
    assert f"{plan} does not match the sha256" in engine_problem(engine.path, expected)
    (engine.path / "weights" / "w.bin").unlink()
    plan.write_bytes(payload)
    assert "w.bin is missing" in engine_problem(engine.path, expected)
    (engine.path / RECORD_FILE).write_text("{not json")
    assert "record is unusable" in engine_problem(engine.path, expected)
    (engine.path / RECORD_FILE).write_text(json.dumps({"key": "k" * 64, "lib": "1.0"}))
    assert "lists no file digests" in engine_problem(engine.path, expected)
    assert engine_problem(tmp_path / "nowhere", expected) == "not built yet"


def test_a_damaged_onnxruntime_engine_is_rebuilt_never_run(fresh_artifact, monkeypatch, caplog):
    """64 zeroed bytes in the middle of a cached engine: a warning naming the file, a rebuild, the clean image."""
    monkeypatch.setattr(hashing, "RACY_SECONDS", 0.0)  # let the memo remember the engine's digest first
    record = _build(fresh_artifact)["unet"]
    clean = _image(Pipeline.load(fresh_artifact))  # verifies (and memoizes) the engine's digests
    model = Path(record.path) / ONNX_FILE
    with model.open("r+b") as f:
        f.seek(model.stat().st_size // 2)
        f.write(bytes(64))
    with caplog.at_level(logging.WARNING, logger="sdrt"):
        pipe = Pipeline.load(fresh_artifact)
    assert f"{model} does not match the sha256 in its build record" in caplog.text
    assert engine_problem(Path(record.path), {"key": record.key}) is None, "rebuilt in place"
    assert np.array_equal(_image(pipe), clean)


def test_concurrent_builds_both_succeed_with_one_engine(fresh_artifact):
    """Two `sdrt build` processes at once: each component is built by one and reused by the other."""
    command = [sys.executable, "-m", "sdrt.cli", "build", str(fresh_artifact), "--backend", "onnxruntime"]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outputs]
    manifest = read_manifest(fresh_artifact)
    for name in manifest.components:
        rows = [line for out, _ in outputs for line in out.splitlines() if line.startswith(f"{name} ")]
        assert sorted("reused" in r for r in rows) == [False, True], rows
        engines = [p for p in (fresh_artifact / "engines" / "onnxruntime" / name).iterdir() if p.is_dir()]
        assert len(engines) == 1 and engine_problem(engines[0], {}) is None, engines
    leftovers = [p for p in (fresh_artifact / "engines").rglob(".*") if ".partial-" in p.name or ".old-" in p.name]
    assert leftovers == []


# --- a separate cache directory and read-only artifacts ------------------------------------------------------


def test_cache_dir_holds_new_engines_and_prebuilt_ones_are_used(fresh_artifact, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    built = _build(fresh_artifact, cache_dir=str(cache))
    assert all(Path(r.path).is_relative_to(cache) and not r.reused for r in built.values())
    assert not (fresh_artifact / "engines").exists(), "the artifact is left as it was"
    monkeypatch.setenv("SDRT_CACHE_DIR", str(cache))
    assert all(r.reused for r in _build(fresh_artifact).values()), "SDRT_CACHE_DIR names the same cache"
    monkeypatch.delenv("SDRT_CACHE_DIR")

    prebuilt = _build(fresh_artifact)  # into the artifact itself
    elsewhere = _build(fresh_artifact, cache_dir=str(tmp_path / "empty-cache"))
    assert all(r.reused and r.path == prebuilt[c].path for c, r in elsewhere.items())
    assert not (tmp_path / "empty-cache" / "engines" / "onnxruntime").exists()


def _read_only_reason() -> str | None:
    """Why a read-only bind mount cannot be made here (None when it can): the real test of a read-only artifact."""
    if shutil.which("unshare") is None:
        return "needs unshare(1) for a read-only bind mount"
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", "mount --bind -o ro /tmp /tmp"],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        return f"cannot make a read-only bind mount here (unshare -m; mount --bind -o ro): {probe.stderr.strip()}"
    return None


def _read_only(artifact: Path, *args: str) -> subprocess.CompletedProcess:
    """`sdrt ARGS` with `artifact` mounted read-only (in a private mount namespace)."""
    script = 'mount --bind -o ro "$0" "$0" && exec "$@"'
    return subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script, str(artifact)]
        + [sys.executable, "-m", "sdrt.cli", *args],
        capture_output=True,
        text=True,
    )


def test_read_only_artifact_runs_with_a_cache_dir_and_fails_clearly_without(fresh_artifact, tmp_path):
    reason = _read_only_reason()
    if reason:
        pytest.skip(reason)
    out = tmp_path / "cat.png"
    common = ["a cat", "--steps", "2", "--height", "64", "--width", "64", "--seed", "1"]
    without = _read_only(fresh_artifact, "generate", str(fresh_artifact), *common, "-o", str(out))
    assert without.returncode == 2 and not out.exists(), without.stderr[-2000:]
    assert f"artifact {fresh_artifact} is read-only and has no onnxruntime engine" in without.stderr
    assert "--cache-dir" in without.stderr and "Traceback" not in without.stderr

    cache = tmp_path / "cache"
    ok = _read_only(fresh_artifact, "generate", str(fresh_artifact), *common, "--cache-dir", str(cache), "-o", str(out))
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert out.is_file() and not (fresh_artifact / "engines").exists()
    assert {p.name for p in (cache / "engines" / "onnxruntime").iterdir() if p.is_dir()} == set(
        read_manifest(fresh_artifact).components
    )
