"""Content hashes for cache keys and provenance."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20
_memo: dict[tuple[str, int, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, memoized per process on (path, inode, size, mtime)."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _memo:
        digest = hashlib.sha256()
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                digest.update(chunk)
        _memo[key] = digest.hexdigest()
    return _memo[key]


def files_sha256(root: str | os.PathLike, paths: Iterable[str | os.PathLike]) -> str:
    """One sha256 over several files' relative names and contents, in sorted order."""
    root = Path(root)
    digest = hashlib.sha256()
    for rel in sorted(str(Path(p)) for p in paths):
        digest.update(rel.encode() + b"\0" + file_sha256(root / rel).encode() + b"\n")
    return digest.hexdigest()


def json_sha256(data: Any) -> str:
    """sha256 of a JSON-serializable value in canonical form."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
