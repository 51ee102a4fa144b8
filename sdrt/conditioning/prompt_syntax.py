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


# Prompt editing and alternation, read as the web UI's prompt schedule grammar reads them:
#   [from:to:when]  `from` until step `when`, then `to`     [to:when]  nothing, then `to`     [from::when]
#   [a|b|c]         a at step 1, b at step 2, c at step 3, a at step 4, ...
# `when` below 1 is a share of the steps (int(when * steps)), else a step number. Brackets that form none of
# these are emphasis, left as text for `parse_prompt`. A prompt the grammar cannot read (a `|` outside
# square brackets, a `[a:b]` whose b is no number inside other brackets, ...) is one text for every step,
# as the web UI falls back. Nesting deeper than MAX_SCHEDULE_DEPTH falls back the same way.
MAX_SCHEDULE_DEPTH = 100
_NUMBER = re.compile(r"\s*([+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)$")
_PLAIN = re.compile(r"(?:[^\\\[\]():|]|\\.)+", re.DOTALL)


class _Unreadable(Exception):
    """The schedule grammar does not read the prompt: it is one text for every step."""


@dataclass(frozen=True)
class _Edit:
    before: tuple  # nodes shown while the step is at most `when`
    after: tuple  # nodes shown after
    when: float  # a share of the steps (below 1) or a step number


@dataclass(frozen=True)
class _Alternate:
    options: tuple[tuple, ...]  # one sequence of nodes per option, taken in turn step by step


class _ScheduleParser:
    """Recursive descent over the prompt; a node is a str (literal text), an _Edit or an _Alternate."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def top(self) -> tuple:
        nodes: list = []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char in "([":
                start = self.pos
                try:
                    nodes.append(self.bracket(0))
                    continue
                except _Unreadable:
                    self.pos = start  # an unmatched bracket at the top level is text, as the web UI reads it
            if char in "[]():":
                nodes.append(char)
                self.pos += 1
            elif char == "|":
                raise _Unreadable("'|' outside square brackets")
            else:
                nodes.append(self.plain())
        return tuple(nodes)

    def plain(self) -> str:
        match = _PLAIN.match(self.text, self.pos)
        if match is None:  # a lone backslash at the very end
            raise _Unreadable("a trailing backslash")
        self.pos = match.end()
        return match.group()

    def sequence(self, depth: int, stops: str) -> tuple[tuple, str]:
        """Nodes up to one of `stops` (consumed and returned); brackets inside must be well formed."""
        nodes: list = []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char in stops:
                self.pos += 1
                return tuple(nodes), char
            if char in "([":
                nodes.append(self.bracket(depth + 1))
            elif char in "[]():|":
                raise _Unreadable(f"{char!r} where the grammar has none")
            else:
                nodes.append(self.plain())
        raise _Unreadable("an unclosed bracket")

    def bracket(self, depth: int) -> object:
        if depth > MAX_SCHEDULE_DEPTH:
            raise _Unreadable("brackets nested too deep")
        opener = self.text[self.pos]
        self.pos += 1
        if opener == "(":
            inner, stop = self.sequence(depth, "):")
            if stop == ")":
                return ("(", *inner, ")")
            weight, _ = self.sequence(depth, ")")
            return ("(", *inner, ":", *weight, ")")
        first, stop = self.sequence(depth, "]:|")
        if stop == "]":
            return ("[", *first, "]")
        if stop == "|":
            options = [first]
            while stop == "|":
                option, stop = self.sequence(depth, "|]")
                options.append(option)
            return _Alternate(tuple(options))
        second, stop = self.sequence(depth, ":]")
        if stop == "]":  # [to:when]
            return _Edit((), first, _when(second))
        third, _ = self.sequence(depth, "]")
        return _Edit(first, second, _when(third))  # [from:to:when]


def _when(nodes: tuple) -> float:
    match = _NUMBER.match("".join(nodes)) if all(isinstance(n, str) for n in nodes) else None
    if match is None:
        raise _Unreadable("a schedule's step is not a number")
    return float(match.group(1))


def _last_step(when: float, steps: int) -> int:
    return min(steps, int(when * steps if when < 1 else when))


def _switch_steps(nodes: tuple, steps: int, out: set[int]) -> None:
    for node in nodes:
        if isinstance(node, _Edit):
            out.add(_last_step(node.when, steps))
            _switch_steps(node.before, steps, out)
            _switch_steps(node.after, steps, out)
        elif isinstance(node, _Alternate):
            out.update(range(1, steps + 1))
            for option in node.options:
                _switch_steps(option, steps, out)
        elif isinstance(node, tuple):
            _switch_steps(node, steps, out)


def _text_at(nodes: tuple, step: int, steps: int) -> str:
    parts = []
    for node in nodes:
        if isinstance(node, str):
            parts.append(node)
        elif isinstance(node, _Edit):
            shown = node.before if step <= _last_step(node.when, steps) else node.after
            parts.append(_text_at(shown, step, steps))
        elif isinstance(node, _Alternate):
            parts.append(_text_at(node.options[(step - 1) % len(node.options)], step, steps))
        else:
            parts.append(_text_at(node, step, steps))
    return "".join(parts)


def prompt_schedule(text: str, steps: int) -> tuple[tuple[int, str], ...]:
    """(last step, text) pairs in step order: the prompt's text up to each step, as the web UI schedules it.

    A denoising step i (counted from 0, one per UNet call) is conditioned on the first entry whose last step
    is at least i; the last entry's last step is `steps`. A prompt without editing is one entry.
    """
    if "[" not in text:  # no editing or alternation is possible: skip the parse
        return ((steps, text),)
    try:
        nodes = _ScheduleParser(text).top()
    except _Unreadable:
        return ((steps, text),)
    switches = {steps}
    _switch_steps(nodes, steps, switches)
    return tuple((step, _text_at(nodes, step, steps)) for step in sorted(switches))
