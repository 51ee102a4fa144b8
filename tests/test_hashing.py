"""The hash memo: an unchanged file is not read again (in this process or the next), a touched one is."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from sdrt import hashing
from sdrt.hashing import file_sha256


@pytest.fixture()
def memo(tmp_path, monkeypatch):
    """A fresh memo file, digests remembered at once (no racy window), and a count of the files actually read."""
    path = tmp_path / "memo.json"
    monkeypatch.setenv("SDRT_HASH_MEMO", str(path))
    monkeypatch.setattr(hashing, "RACY_SECONDS", 0.0)
    monkeypatch.setattr(hashing, "_memo", None)
    reads = []
    digest = hashing._digest
    monkeypatch.setattr(hashing, "_digest", lambda p: reads.append(p.name) or digest(p))
    return path, reads


def test_unchanged_files_are_read_once_and_touched_ones_again(tmp_path, memo):
    path, reads = memo
    data = tmp_path / "weights.bin"
    data.write_bytes(b"a" * 1000)
    expected = hashlib.sha256(b"a" * 1000).hexdigest()
    assert file_sha256(data) == expected and file_sha256(data) == expected
    assert reads == ["weights.bin"]

    hashing._memo = None  # a new process: the digest comes from the memo file
    assert file_sha256(data) == expected and reads == ["weights.bin"]
    (entry,) = json.loads(path.read_text())["entries"].values()
    assert entry["sha256"] == expected and entry["path"] == str(data.resolve())

    os.utime(data)  # touched, same bytes: read again (and remembered under its new identity)
    assert file_sha256(data) == expected and reads == ["weights.bin"] * 2
    with data.open("r+b") as f:  # changed in place, same size
        f.seek(500)
        f.write(b"b")
    assert file_sha256(data) == hashlib.sha256(b"a" * 500 + b"b" + b"a" * 499).hexdigest()
    assert reads == ["weights.bin"] * 3
    assert len(json.loads(path.read_text())["entries"]) == 1, "entries of replaced versions are dropped"


def test_a_just_written_file_is_not_remembered(tmp_path, memo, monkeypatch):
    """Within the racy window a rewrite may keep every timestamp, so the digest is used once, not remembered."""
    path, reads = memo
    monkeypatch.setattr(hashing, "RACY_SECONDS", 60.0)
    data = tmp_path / "fresh.bin"
    data.write_bytes(b"x")
    file_sha256(data)
    file_sha256(data)
    assert reads == ["fresh.bin"] * 2 and not path.exists()


def test_memo_off_and_a_broken_memo_file(tmp_path, memo, monkeypatch):
    path, reads = memo
    data = tmp_path / "w.bin"
    data.write_bytes(b"y")
    path.write_text("{broken")
    assert file_sha256(data) == hashlib.sha256(b"y").hexdigest()  # a broken memo is only a cache: replaced
    assert json.loads(path.read_text())["version"] == hashing.MEMO_VERSION
    monkeypatch.setenv("SDRT_HASH_MEMO", "off")
    file_sha256(data)
    file_sha256(data)
    assert reads == ["w.bin"] * 3
