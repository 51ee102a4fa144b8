"""A1111 web UI emphasis syntax read its way (unbalanced brackets never raise); compel has another: (word)1.1, word+."""

from __future__ import annotations

import re
from dataclasses import dataclass

ROUND_MULTIPLIER = 1.1  # what `(text)` multiplies attention by
SQUARE_MULTIPLIER = 1 / 1.1  # what `[text]` multiplies attention by

# Tried in order at each position. A lone backslash (one not before ( ) [ ] or \) is dropped, as the web UI drops it.
# One reading differs from the web UI's on purpose: the weight must be a number, where the web UI's `[.\d]+` makes it
# raise on `(a:1.2.3)`: here that colon is text and the `)` a plain closer.
_TOKEN = re.compile(
    r"""
      \\(?P<escaped>[()\[\]\\])
    | (?P<open>[(\[])
    | :\s*(?P<weight>[+-]?(?:\d+\.?\d*|\.\d+))\s*\)
    | [)\]]
    | [^\\()\[\]:]+
    | [\\:]
    """,
    re.VERBOSE,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*")


@dataclass(frozen=True)
class Fragment:
    """A run of prompt text with one emphasis weight."""

    text: str  # literal text, brackets and escapes removed
    weight: float  # product of the multipliers of the brackets around it
    chunk_break: bool = False  # BREAK: the token stream starts a new 75-token chunk here (text "", weight 1.0)

    def __post_init__(self) -> None:
        if self.chunk_break and (self.text or self.weight != 1.0):
            raise ValueError(f"a chunk break has text '' and weight 1.0, not {self.text!r} and {self.weight}")


_CHUNK_BREAK = Fragment("", 1.0, chunk_break=True)


def parse_prompt(text: str) -> list[Fragment]:
    """Fragments of `text` with their attention weights, merged where adjacent weights are equal."""
    pieces: list[str | None] = []  # None marks a BREAK
    weights: list[float] = []
    rounds: list[int] = []  # index of the first piece inside each open `(`
    squares: list[int] = []  # the same for `[`; the two kinds need not nest within each other

    def scale(start: int, factor: float) -> None:
        for i in range(start, len(weights)):
            weights[i] *= factor

    for match in _TOKEN.finditer(text):
        token = match.group()
        if match["escaped"] is not None:
            pieces.append(match["escaped"])
            weights.append(1.0)
        elif match["open"] is not None:
            (rounds if token == "(" else squares).append(len(pieces))
        elif match["weight"] is not None and rounds:
            scale(rounds.pop(), float(match["weight"]))
        elif token == ")" and rounds:
            scale(rounds.pop(), ROUND_MULTIPLIER)
        elif token == "]" and squares:
            scale(squares.pop(), SQUARE_MULTIPLIER)
        elif token == "\\":
            continue
        else:  # text, or a closer with nothing open: literal
            for i, part in enumerate(_BREAK.split(token)):
                if i:  # a chunk break even inside brackets, where the web UI reads the word BREAK as weighted text
                    pieces.append(None)
                    weights.append(1.0)
                if part:
                    pieces.append(part)
                    weights.append(1.0)
    # Unclosed brackets reach to the end, outermost first: the web UI's order, so weights match it to the last bit
    # and merge (which compares them exactly) the same way.
    for start in rounds:
        scale(start, ROUND_MULTIPLIER)
    for start in squares:
        scale(start, SQUARE_MULTIPLIER)

    fragments: list[Fragment] = []
    for piece, weight in zip(pieces, weights, strict=True):
        if piece is None:
            fragments.append(_CHUNK_BREAK)
        elif fragments and not fragments[-1].chunk_break and fragments[-1].weight == weight:
            fragments[-1] = Fragment(fragments[-1].text + piece, weight)
        else:
            fragments.append(Fragment(piece, weight))
    return fragments or [Fragment("", 1.0)]
