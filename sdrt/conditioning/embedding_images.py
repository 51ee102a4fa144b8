"""Textual-inversion embeddings the web UI saves as images (`.png`, `.webp`), read as data.

The web UI writes an embedding's dictionary (`string_to_param`, `name`, `step`, ...) as JSON whose tensors are
`{"TORCHTENSOR": nested lists}` in two places: base64 in the PNG text chunk `sd-ti-embedding`, and hidden in
the pixels of two blocks beside the picture. There the zlib-compressed JSON's bytes are split into low and high
nibbles, laid out row by row in blocks as tall as the picture (three bytes a pixel), each nibble XORed with the
low nibble of a linear congruential sequence (x <- (1664525 x + 1013904223) mod 2^32 from 0, each value taken
mod 255), the high nibbles' place drawn over with a pattern; black columns separate the blocks from the picture.
Reading takes the text chunk if there is one, else the pixels; an image with neither is a preview image, not an
embedding. Nothing is executed: JSON and numbers only, the inflated size bounded.
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

IMAGE_SUFFIXES = (".png", ".webp")
TEXT_CHUNK = "sd-ti-embedding"
MAX_DATA_BYTES = 64 << 20  # the JSON an embedding image may inflate to
MAX_PIXELS = 64 << 20  # larger images are not read at all
_LCG_A, _LCG_C, _LCG_M = 1664525, 1013904223, 1 << 32


def read_embedding_image(path: Path) -> dict[str, Any] | None:
    """The embedding dictionary an image carries (tensors as float32), or None for an image that carries none.

    ValueError for an image that cannot be read or whose data is not an embedding's.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_PIXELS:
                raise ValueError(f"it is {image.width}x{image.height} pixels, more than an embedding image has")
            text = getattr(image, "text", {}).get(TEXT_CHUNK)
            if text is not None:
                return _decoded(_from_base64(text))
            pixels = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise ValueError(f"it cannot be read as an image ({exc})") from exc
    data = hidden_data(pixels)
    return None if data is None else _decoded(data)


def _from_base64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"its {TEXT_CHUNK} text is not base64 ({exc})") from exc


def lcg_nibbles(count: int) -> np.ndarray:
    """The first `count` values of the web UI's sequence (mod 255), as uint8, computed in vectorised strides."""
    lanes = min(count, 4096)
    first = np.empty(lanes, dtype=np.uint64)
    seed = 0
    for i in range(lanes):
        seed = (_LCG_A * seed + _LCG_C) % _LCG_M
        first[i] = seed
    # x[n + lanes] = A x[n] + C (mod 2^32): the affine map applied `lanes` times
    a, c = 1, 0
    for _ in range(lanes):
        a, c = (_LCG_A * a) % _LCG_M, (_LCG_A * c + _LCG_C) % _LCG_M
    rows = -(-count // lanes)
    states = np.empty((rows, lanes), dtype=np.uint64)
    states[0] = first
    for r in range(1, rows):  # uint64 products wrap mod 2^64, a multiple of 2^32: the low 32 bits stay exact
        states[r] = (states[r - 1] * np.uint64(a) + np.uint64(c)) & np.uint64(_LCG_M - 1)
    return (states.reshape(-1)[:count] % np.uint64(255)).astype(np.uint8)


def hidden_data(pixels: np.ndarray) -> bytes | None:
    """The inflated JSON hidden in an embedding image's pixels ((H, W, 3) uint8), or None when there is none."""
    keep = (pixels > 0).all(axis=2)
    rows, cols = np.flatnonzero(keep.any(axis=1)), np.flatnonzero(keep.any(axis=0))
    if rows.size == 0:
        return None
    block = pixels[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] & 0x0F
    black = np.flatnonzero(block.sum(axis=(0, 2)) == 0)
    if black.size < 2:
        return None
    low, high = block[:, : black.min()], block[:, black.max() + 1 :]
    if low.shape != high.shape or low.size == 0:
        return None
    noise = lcg_nibbles(low.size).reshape(low.shape) & 0x0F
    packed = (((high ^ noise) << 4) | (low ^ noise)).astype(np.uint8).tobytes()
    inflater = zlib.decompressobj()
    try:
        data = inflater.decompress(packed, MAX_DATA_BYTES)
    except zlib.error:
        return None  # pixels that happen to have black columns, but no compressed data: a picture, not an embedding
    if inflater.unconsumed_tail:
        raise ValueError(f"its hidden data inflates past {MAX_DATA_BYTES} bytes")
    return data


def _decoded(data: bytes) -> dict[str, Any]:
    """The embedding dictionary of the web UI's JSON, its tensors made from their numbers."""

    def tensor(value: Any) -> Any:
        if isinstance(value, dict) and "TORCHTENSOR" in value:
            try:
                return torch.tensor(value["TORCHTENSOR"], dtype=torch.float32)
            except (TypeError, ValueError, RuntimeError) as exc:
                raise ValueError(f"a tensor in its data is not a rectangle of numbers ({exc})") from None
        return value

    try:
        decoded = json.loads(data, object_hook=tensor)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"its embedding data is not the web UI's JSON ({exc})") from exc
    if not isinstance(decoded, dict):
        raise ValueError(f"its embedding data is a {type(decoded).__name__}, not a dictionary")
    return decoded
