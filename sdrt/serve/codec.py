"""Images over HTTP: base64 input images decoded in memory (never read as paths), PNG outputs with infotext."""

from __future__ import annotations

import base64
import binascii
import io
import re

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from sdrt.runtime.image_inputs import open_image
from sdrt.runtime.pipeline import GenerationResult
from sdrt.serve.errors import InputError

# "data:image/png;base64,...": browsers and some clients send data URLs
DATA_URL = re.compile(r"^data:[\w/+.-]*(;[\w=.-]+)*;base64,", re.IGNORECASE)


def decode_image(value: str, field: str, mode: str | None = "RGB") -> Image.Image:
    """A base64 (or base64 data URL) image, decoded and converted to `mode` (None: as sent); InputError otherwise.

    Raw base64 may start with "/" (a JPEG's is "/9j/"), so a string is read as base64 first; one that is not
    an image and looks like a URL or a path is refused as such, never fetched or opened.
    """
    text = DATA_URL.sub("", value.strip(), count=1)
    looks_like_path = text.lower().startswith(("http://", "https://", "file:", "/", "./", "~"))
    not_fetched = f"{field}: images are not fetched from URLs or paths; send the image's bytes as base64"
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputError(field, not_fetched if looks_like_path else f"{field} is not valid base64: {exc}") from exc
    if not data:
        raise InputError(field, f"{field} is empty: send a base64-encoded PNG, JPEG or WebP image")
    try:
        return decode_image_bytes(data, field, mode)
    except InputError:
        if looks_like_path:  # base64 by chance, but no image: what was sent is a path or URL
            raise InputError(field, not_fetched) from None
        raise


def decode_image_bytes(data: bytes, field: str, mode: str | None = "RGB") -> Image.Image:
    """An image from its encoded bytes (an upload), converted to `mode` (None: as sent); InputError otherwise."""
    if not data:
        raise InputError(field, f"{field} is empty: send a PNG, JPEG or WebP image")
    try:
        # bytes, never a str: a client's string is never opened as a path
        image = open_image(data, field)
        return image if mode is None else image.convert(mode)
    except ValueError as exc:
        raise InputError(field, str(exc)) from exc
    except (OSError, Image.DecompressionBombError) as exc:  # a truncated image fails on convert, after open
        raise InputError(field, f"{field} cannot be decoded as an image: {exc}") from exc


def png_bytes(image: Image.Image, parameters: str, key: str = "parameters") -> bytes:
    """`image` as PNG bytes with a `parameters` text chunk (the web UI's extras write theirs as "postprocessing"),
    as sdrt.runtime.images.save_png writes files."""
    info = PngInfo()
    info.add_text(key, parameters)
    out = io.BytesIO()
    image.save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def png_base64(image: Image.Image, parameters: str, key: str = "parameters") -> str:
    return base64.b64encode(png_bytes(image, parameters, key)).decode("ascii")


def encode_all(result: GenerationResult) -> list[str]:
    """Every image of a result as a base64 PNG carrying its infotext."""
    return [png_base64(image, parameters) for image, parameters in zip(result.images, result.parameters, strict=True)]
