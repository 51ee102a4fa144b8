"""Atomic writes and their leftovers: one cut short by SIGKILL is removed by the next write, a live writer's is not."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sdrt import files
from sdrt.files import atomic_directory, atomic_file, remove_leftovers, writer_tag


def _tag(pid: int) -> str:
    return f"{files._host()}~{pid}~{files._start_time(pid)}"


def test_leftovers_of_gone_writers_are_removed_and_live_ones_kept(tmp_path, caplog):
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        live = tmp_path / f".model.partial-{_tag(sleeper.pid)}-abc"
        reused = tmp_path / f".model.partial-{files._host()}~{sleeper.pid}~{files._start_time(sleeper.pid) + 1}-def"
        remote = tmp_path / f".model.partial-another-host~{sleeper.pid}~1-ghi"
        stale_file = tmp_path / f".model.old-{files._host()}~999999999~5-jkl"
        for d in (live, reused, remote):
            (d / "sub").mkdir(parents=True)
        stale_file.write_text("x")
        with caplog.at_level(logging.INFO, logger="sdrt"):
            removed = remove_leftovers(tmp_path)
        assert sorted(removed) == sorted([reused, stale_file]), "a reused pid is not the writer"
        assert live.is_dir() and remote.is_dir()
        assert "which is gone" in caplog.text and "host another-host" in caplog.text
    finally:
        sleeper.kill()
        sleeper.wait()
    assert remove_leftovers(tmp_path) == [live]
    assert [p.name for p in tmp_path.iterdir()] == [remote.name]


def test_a_writer_never_removes_its_own_temporaries_in_flight(tmp_path):
    with atomic_directory(tmp_path / "a") as tmp_a:
        (tmp_a / "x").write_text("1")
        with atomic_file(tmp_path / "b.json") as tmp_b:  # the write of b scans the directory a is being written in
            tmp_b.write_text("{}")
        assert tmp_a.is_dir() and writer_tag() in tmp_a.name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b.json"]
    with atomic_directory(tmp_path / "a") as tmp:  # replacing a directory leaves nothing behind either
        (tmp / "y").write_text("2")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["y"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b.json"]


def test_untagged_leftovers_of_older_sdrt_are_reported_not_removed(tmp_path, caplog):
    old = tmp_path / ".model.partial-x1y2z3"
    old.mkdir()
    with caplog.at_level(logging.WARNING, logger="sdrt"):
        assert remove_leftovers(tmp_path) == []
    assert old.is_dir() and "interrupted write by an older sdrt" in caplog.text


def test_an_export_killed_midway_is_cleaned_up_by_the_next(demo_model, tmp_path, caplog):
    out = tmp_path / "artifact"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sdrt.cli", "export", str(demo_model), "-o", str(out), "--max-batch", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    partials: list[Path] = []
    while time.monotonic() < deadline and not partials:
        partials = [p for p in tmp_path.glob(".artifact.partial-*") if any(p.iterdir())]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if not partials:
        pytest.fail("the export never started writing within 120 s")
    assert not out.exists() and all(p.is_dir() for p in partials), "killed mid-export: only its leftover exists"

    from sdrt.export import ExportConfig, export_model

    with caplog.at_level(logging.INFO, logger="sdrt"):
        export_model(demo_model, out, ExportConfig(max_batch=1, min_size=64, max_size=128))
    assert not any(p.exists() for p in partials)
    assert f"removing {partials[0]}, left by process {proc.pid}" in caplog.text
    assert (out / "manifest.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"]
