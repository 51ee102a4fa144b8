"""Writing files and directories atomically, cleaning up after writers that died, locks, and reading JSON.

A write goes to a hidden temporary sibling, `.NAME.partial-HOST~PID~START-XXXX`, renamed into place when
complete. The name records the writer (host, process id and the process's start time, so a reused pid is
not mistaken for the writer), and the next write into the same directory removes every leftover whose
writer is gone: `kill -9` in the middle of an export costs nothing the next time. A leftover written on
another host is left alone, as its writer may still be alive there.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# .NAME.partial-HOST~PID~START-random (and .NAME.old-... for a directory being replaced)
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>partial|old)-(?P<host>[A-Za-z0-9._-]+)~(?P<pid>\d+)~(?P<start>\d+)-")
_UNTAGGED = re.compile(r"^\..+\.(partial|old)-")  # written by an sdrt from before writer tags
_active: set[str] = set()  # temporaries this process is writing now (absolute paths)
_active_lock = threading.Lock()
_warned_untagged: set[str] = set()


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "localhost"


def _start_time(pid: int) -> int:
    """A process's start time in clock ticks since boot (Linux); 0 where /proc cannot tell."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
    return int(fields[19])  # field 22 of proc(5), counted from field 3


def writer_tag() -> str:
    """This process as a leftover's name records it: HOST~PID~START."""
    pid = os.getpid()
    return f"{_host()}~{pid}~{_start_time(pid)}"


def writer_alive(host: str, pid: int, start: int) -> bool:
    """Whether the process that named a temporary may still be writing it (True when this cannot be known)."""
    if host != _host():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    recorded = _start_time(pid)
    return not (start and recorded and recorded != start)  # a different start time: the pid was reused


def remove_leftovers(directory: Path) -> list[Path]:
    """Remove the temporaries in `directory` whose writers are gone; return what was removed."""
    removed = []
    try:
        entries = list(directory.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _LEFTOVER.match(entry.name)
        if match is None:
            if _UNTAGGED.match(entry.name) and str(entry) not in _warned_untagged:
                _warned_untagged.add(str(entry))
                log.warning(
                    "%s looks like an interrupted write by an older sdrt; remove it by hand if no export or "
                    "build is running",
                    entry,
                )
            continue
        with _active_lock:
            if str(entry.resolve()) in _active:
                continue
        host, pid, start = match["host"], int(match["pid"]), int(match["start"])
        ours = host == _host() and pid == os.getpid()  # ours but not active: a write of ours that was cut short
        if not ours and writer_alive(host, pid, start):
            if host != _host():
                log.info("leaving %s alone: it is being written (or was) on host %s", entry, host)
            continue
        log.info("removing %s, left by process %d on %s, which is gone", entry, pid, host)
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


@contextmanager
def _temporary(path: Path) -> Iterator[Path]:
    """Mark `path` as being written by this process while the block runs."""
    key = str(path.resolve())
    with _active_lock:
        _active.add(key)
    try:
        yield path
    finally:
        with _active_lock:
            _active.discard(key)


@contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of `target` to fill; on success it replaces `target`, on failure it is removed.

    Readers see either the old directory or the complete new one, never a half-written one.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(target.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-{writer_tag()}-", dir=target.parent))
    with _temporary(tmp):
        tmp.chmod(0o755)
        try:
            yield tmp
            if target.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-{writer_tag()}-", dir=target.parent))
                os.replace(target, old)  # onto the empty directory just made: rename replaces an empty one
                os.replace(tmp, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


@contextmanager
def scratch_directory(parent: str | os.PathLike | None, name: str) -> Iterator[Path]:
    """A temporary directory under `parent` (default: the system's) for the block, removed after it.

    Named like every sdrt temporary, so one a killed process left is removed by the next write in `parent`.
    """
    where = Path(parent) if parent is not None else Path(tempfile.gettempdir())
    where.mkdir(parents=True, exist_ok=True)
    remove_leftovers(where)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.partial-{writer_tag()}-", dir=where))
    with _temporary(tmp):
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_file(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `target` to write; on success it is renamed to `target`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(target.parent)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.partial-{writer_tag()}-", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    with _temporary(tmp):
        try:
            yield tmp
            tmp.chmod(0o644)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


@contextmanager
def file_lock(path: Path, shared: bool = False) -> Iterator[bool]:
    """Hold an flock on `path` (created when missing) for the block; yields False when no lock could be made.

    The kernel drops the lock when its process dies, so a killed build never leaves a stale lock. On a
    read-only filesystem no lock can be made, and none is needed: nothing there can be written.
    """
    if shared and not path.parent.is_dir():
        yield False  # nothing to read there; a reader creates no directories
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            yield False
            return
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield True
    finally:
        os.close(fd)  # closing releases the lock


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in `path`; ValueError naming the file when it is missing, malformed or not an object."""
    if not path.is_file():
        raise ValueError(f"{path} is missing")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data
