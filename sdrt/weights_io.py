"""Reading weight files as data: safetensors, and pickles only through torch's weights-only unpickler."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
# torch.save stores its archive's members uncompressed; a member that inflates past this many times its stored
# size (plus some slack for small members) is a decompression bomb, not a torch file
MAX_INFLATION = 64
_SLACK = 1 << 20


def load_pickle_weights_only(path: Path, max_bytes: int | None = None) -> Any:
    """A pickled file's tensors through torch's weights-only unpickler, which refuses anything that would run code.

    A zip archive whose members would inflate far past their stored size (a zip bomb), or past `max_bytes` in
    all, is refused before anything is read from it.
    """
    check_archive(path, max_bytes)
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise ValueError(f"{path.name} cannot be read ({exc})") from exc
    if not head.startswith((b"PK\x03\x04", b"\x80")):  # torch's zip archive, or a pickle (torch's legacy format)
        raise ValueError(f"{path.name} is not a readable torch file (neither a torch archive nor a pickle)")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"{path.name} needs code to unpickle, which sdrt never runs (torch's weights-only loader refused it: "
            f"{str(exc).splitlines()[0]})"
        ) from exc
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as exc:
        raise ValueError(f"{path.name} is not a readable torch file ({exc})") from exc


def check_archive(path: Path, max_bytes: int | None = None) -> None:
    """ValueError for a torch zip archive that would inflate like a zip bomb (or past `max_bytes`); other files
    (torch's legacy format, plain pickles) inflate nothing and pass."""
    try:
        if not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (OSError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path.name} is not a readable torch file ({exc})") from exc
    total = 0
    for member in members:
        total += member.file_size
        if member.file_size > MAX_INFLATION * member.compress_size + _SLACK:
            raise ValueError(
                f"{path.name} is a decompression bomb: its member {member.filename} inflates from "
                f"{member.compress_size} to {member.file_size} bytes"
            )
    if max_bytes is not None and total > max_bytes:
        raise ValueError(f"{path.name} would take {total} bytes when read, more than the {max_bytes} allowed")
