"""Short, printable excerpts of values for error messages: a bad value is echoed in part, never whole."""

from __future__ import annotations

EXCERPT_CHARS = 40  # characters of a bad string value an error message shows


def excerpt(value: object, limit: int = EXCERPT_CHARS) -> str:
    """`repr(value)` cut to about `limit` characters, saying how long the value was; lone surrogates stay escaped."""
    if isinstance(value, str):
        if len(value) <= limit:
            return repr(value)
        return f"{value[:limit]!r}... ({len(value)} characters)"
    if isinstance(value, (bytes, bytearray)):
        return f"{bytes(value[:limit])!r}{'...' if len(value) > limit else ''} ({len(value)} bytes)"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({type(value).__name__})"


def check_text(field: str, text: str) -> None:
    """ValueError naming `field` unless `text` is valid Unicode (a lone surrogate cannot be tokenized or encoded)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{field} holds a lone surrogate ({text[exc.start]!r} at character {exc.start}), which is not text; "
            "send valid Unicode"
        ) from None
