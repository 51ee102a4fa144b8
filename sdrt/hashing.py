"""Content hashes for cache keys and provenance, with a memo that skips re-hashing files that have not changed.

`file_sha256` hashes a file's bytes once per file identity: (device, inode, size, mtime_ns, ctime_ns).
Any write to a file moves its change time (ctime), which user code cannot set back, so an unchanged
identity means unchanged bytes, with two exceptions the memo guards against:

- a file written again within one tick of the filesystem's coarse clock keeps its timestamps (git's
  "racily clean" problem); a digest is only remembered when the file's last change is at least
  `RACY_SECONDS` older than the moment hashing began;
- bytes changed underneath the filesystem (bit rot, a raw block write) are not seen after the first hash.
  Set `SDRT_HASH_MEMO=off` to hash every time.

The memo persists across processes in one JSON file (`SDRT_HASH_MEMO=PATH`; default
`$XDG_CACHE_HOME/sdrt/hash-memo.json`), so a full-size model's gigabytes are hashed once, not at every
load. A memo that cannot be read or written is only an in-process memo; nothing in it is executed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MEMO_ENV = "SDRT_HASH_MEMO"
MEMO_OFF = ("off", "0", "none", "")
MEMO_VERSION = 1
MEMO_MAX_ENTRIES = 4096  # oldest-used entries beyond this are dropped at save
RACY_SECONDS = 2.0  # coarse filesystem clocks tick every few ms; FAT's every 2 s
_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileIdentity:
    """What identifies one version of a file's bytes without reading them."""

    device: int  # st_dev
    inode: int  # st_ino
    size: int  # st_size in bytes
    mtime_ns: int  # last modification
    ctime_ns: int  # last change of bytes or metadata (set by the kernel only)

    @classmethod
    def of(cls, st: os.stat_result) -> FileIdentity:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    @property
    def key(self) -> str:
        return f"{self.device}:{self.inode}:{self.size}:{self.mtime_ns}:{self.ctime_ns}"

    def settled(self, at: float) -> bool:
        """True when the file last changed at least RACY_SECONDS before `at` (time.time())."""
        return at - max(self.mtime_ns, self.ctime_ns) / 1e9 >= RACY_SECONDS


class HashMemo:
    """sha256 digests by file identity, persisted as JSON at `path` (None: this process only)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._entries: dict[str, dict[str, Any]] = {}
        self._loaded = path is None
        self._writable = path is not None
        self._lock = threading.Lock()

    def lookup(self, identity: FileIdentity) -> str | None:
        with self._lock:
            self._load()
            entry = self._entries.get(identity.key)
            if entry is None:
                return None
            entry["used"] = time.time()
            return str(entry["sha256"])

    def remember(self, identity: FileIdentity, path: Path, digest: str) -> None:
        with self._lock:
            self._load()
            self._entries[identity.key] = {"sha256": digest, "path": str(path), "used": time.time()}
            self._save()

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        self._entries = {**_read_memo(self.path), **self._entries}

    def _save(self) -> None:
        if not self._writable:
            return
        from sdrt.files import atomic_file  # files imports nothing from here; this keeps it so

        merged = {**_read_memo(self.path), **self._entries}  # other processes' entries are kept
        live = {k: e for k, e in merged.items() if _still_there(k, e)}
        newest = sorted(live.items(), key=lambda item: item[1].get("used", 0.0), reverse=True)[:MEMO_MAX_ENTRIES]
        self._entries = dict(newest)
        try:
            with atomic_file(self.path) as tmp:
                tmp.write_text(json.dumps({"version": MEMO_VERSION, "entries": self._entries}) + "\n")
        except OSError as exc:
            log.info("hash memo %s cannot be written (%s); remembering digests in this process only", self.path, exc)
            self._writable = False


def _read_memo(path: Path | None) -> dict[str, dict[str, Any]]:
    """The entries of a memo file; {} for a missing, unreadable or malformed one (it is only a cache)."""
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        entries = data["entries"] if data.get("version") == MEMO_VERSION else {}
        return {
            str(k): dict(e)
            for k, e in entries.items()
            if isinstance(e, dict) and isinstance(e.get("sha256"), str) and len(e["sha256"]) == 64
        }
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        log.info("ignoring the unreadable hash memo %s (%s)", path, exc)
        return {}


def _still_there(key: str, entry: dict[str, Any]) -> bool:
    """True while the entry's file still has the identity it was hashed at (entries of replaced files are dropped)."""
    try:
        return FileIdentity.of(os.stat(entry["path"])).key == key
    except (OSError, KeyError, TypeError):
        return False


def memo_path() -> Path | None:
    """Where the memo persists: $SDRT_HASH_MEMO, else $XDG_CACHE_HOME/sdrt/hash-memo.json; None when switched off."""
    value = os.environ.get(MEMO_ENV)
    if value is not None:
        return None if value.strip().lower() in MEMO_OFF else Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sdrt" / "hash-memo.json"


_memo: HashMemo | None = None


def default_memo() -> HashMemo | None:
    """The process's memo for the current SDRT_HASH_MEMO setting; None when the memo is switched off."""
    global _memo
    path = memo_path()
    if path is None:
        return None
    if _memo is None or _memo.path != path:
        _memo = HashMemo(path)
    return _memo


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, read only when the memo has no digest for the file's identity."""
    p = Path(path)
    memo = default_memo()
    before = FileIdentity.of(p.stat())
    if memo is not None:
        known = memo.lookup(before)
        if known is not None:
            return known
    started = time.time()
    digest = _digest(p)
    after = FileIdentity.of(p.stat())
    if memo is not None and after == before and before.settled(started):
        memo.remember(before, p.resolve(), digest)
    return digest


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
