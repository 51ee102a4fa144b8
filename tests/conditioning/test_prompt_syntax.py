"""The web UI's emphasis syntax: its documented examples, its lenient corners, and a random round trip."""

from __future__ import annotations

import random

import pytest

from sdrt.conditioning.prompt_syntax import Fragment, parse_prompt

BREAK = Fragment("", 1.0, chunk_break=True)


def _flat(fragments: list[Fragment | tuple[str, float]]) -> list[tuple[str, float, bool]]:
    return [(f.text, f.weight, f.chunk_break) if isinstance(f, Fragment) else (*f, False) for f in fragments]


def assert_reads(prompt: str, expected: list[Fragment | tuple[str, float]]) -> None:
    got, want = _flat(parse_prompt(prompt)), _flat(expected)
    assert [(text, brk) for text, _, brk in got] == [(text, brk) for text, _, brk in want]
    assert [w for _, w, _ in got] == pytest.approx([w for _, w, _ in want])


# The examples in the web UI's parser documentation, verbatim.
@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("normal text", [("normal text", 1.0)]),
        ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
        ("(unbalanced", [("unbalanced", 1.1)]),
        ("\\(literal\\]", [("(literal]", 1.0)]),
        ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
        (
            "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
            [
                ("a ", 1.0),
                ("house", 1.573),
                (" ", 1.1),
                ("on", 1.0),
                (" a ", 1.1),
                ("hill", 0.55),
                (", sun, ", 1.1),
                ("sky", 1.4641),
                (".", 1.1),
            ],
        ),
        ("a cat BREAK a dog", [("a cat", 1.0), BREAK, ("a dog", 1.0)]),
    ],
)
def test_documented_examples(prompt, expected):
    assert_reads(prompt, expected)


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("((word))", [("word", 1.21)]),
        ("(word:1.5)", [("word", 1.5)]),
        ("(word: 0.25 )", [("word", 0.25)]),
        ("(word:+.5) (word:2.)", [("word", 0.5), (" ", 1.0), ("word", 2.0)]),
        ("((word:1.3))", [("word", 1.3 * 1.1)]),
        ("[word]", [("word", 1 / 1.1)]),
        ("[[word]]", [("word", 1 / 1.21)]),
        ("a [b] c", [("a ", 1.0), ("b", 1 / 1.1), (" c", 1.0)]),
        ("[(word)]", [("word", 1.0)]),
        ("(word:-1)", [("word", -1.0)]),
        ("(word:0)", [("word", 0.0)]),
        ("((word:-1))", [("word", -1.1)]),
    ],
)
def test_weights(prompt, expected):
    assert_reads(prompt, expected)


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a) b", [("a) b", 1.0)]),
        ("a] b", [("a] b", 1.0)]),
        ("(a)) b]", [("a", 1.1), (") b]", 1.0)]),
        ("a:1.5) b", [("a:1.5) b", 1.0)]),  # a weight closer with no `(` open is text
        ("[a:1.5]", [("a:1.5", 1 / 1.1)]),  # only round brackets take a weight
        ("[a (b", [("a ", 1 / 1.1), ("b", 1.0)]),  # unclosed: both reach to the end
        ("(a[b)c]", [("a", 1.1), ("b", 1.0), ("c", 1 / 1.1)]),  # the two kinds need not nest
        ("(a:1.2.3)", [("a:1.2.3", 1.1)]),  # no number: the web UI raises here, we read the colon as text
        ("", [("", 1.0)]),
        ("()[]", [("", 1.0)]),
    ],
)
def test_unbalanced_brackets_are_read_leniently(prompt, expected):
    assert_reads(prompt, expected)


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("time: 12:30", [("time: 12:30", 1.0)]),
        ("(time: 12:30 pm)", [("time: 12:30 pm", 1.1)]),
        ("(time: 12:30)", [("time: 12", 30.0)]),  # as in the web UI: `:30)` is a weight
        ("a: (b:2)", [("a: ", 1.0), ("b", 2.0)]),
    ],
)
def test_a_colon_is_text_unless_it_closes_a_weight(prompt, expected):
    assert_reads(prompt, expected)


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("(\\(a\\):1.5)", [("(a)", 1.5)]),
        ("[\\[x\\]]", [("[x]", 1 / 1.1)]),
        ("(a\\\\)", [("a\\", 1.1)]),
        ("((\\)))", [(")", 1.21)]),
        (
            "(smile \\:D:1.2)",
            [("smile :D", 1.2)],
        ),  # `\:` is no escape: the lone backslash is dropped, as the web UI does
        ("a\\b", [("ab", 1.0)]),  # a lone backslash is dropped, as the web UI drops it
    ],
)
def test_escapes(prompt, expected):
    assert_reads(prompt, expected)


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a BREAK b", [("a", 1.0), BREAK, ("b", 1.0)]),  # equal weights, not merged across the break
        ("BREAK", [BREAK]),
        ("a BREAK BREAK b", [("a", 1.0), BREAK, BREAK, ("b", 1.0)]),
        ("a,BREAK,b", [("a,", 1.0), BREAK, (",b", 1.0)]),
        ("(a BREAK b)", [("a", 1.1), BREAK, ("b", 1.1)]),
        ("BREAKfast break", [("BREAKfast break", 1.0)]),
    ],
)
def test_break_starts_a_chunk(prompt, expected):
    assert_reads(prompt, expected)


def test_a_chunk_break_has_no_text_or_weight():
    with pytest.raises(ValueError, match="chunk break"):
        Fragment("x", 1.0, chunk_break=True)


# Text pieces as written and as read; none holds a colon, so none can end a weight by accident.
WORDS = [("cat", "cat"), (" ", " "), ("red hat, ", "red hat, "), ("\\(x\\)", "(x)"), ("a\\b", "ab")]


def _random_prompt(rng: random.Random, depth: int) -> tuple[str, list[tuple[str, float]]]:
    """A random balanced prompt and what each of its characters should read as."""
    source, chars = "", []
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(["word", "word", "round", "square", "weight"] if depth < 3 else ["word"])
        if kind == "word":
            written, read = rng.choice(WORDS)
            source += written
            chars += [(c, 1.0) for c in read]
            continue
        inner, inner_chars = _random_prompt(rng, depth + 1)
        weight = rng.choice([0.5, 1.3, -1.0, 0.0, 2.25])
        source += {"round": f"({inner})", "square": f"[{inner}]", "weight": f"({inner}:{weight})"}[kind]
        factor = {"round": 1.1, "square": 1 / 1.1, "weight": weight}[kind]
        chars += [(c, w * factor) for c, w in inner_chars]
    return source, chars


@pytest.mark.parametrize("seed", range(200))
def test_random_prompts_read_back(seed):
    prompt, chars = _random_prompt(random.Random(seed), 0)
    fragments = parse_prompt(prompt)
    assert "".join(f.text for f in fragments) == "".join(c for c, _ in chars)
    assert [f.weight for f in fragments for _ in f.text] == pytest.approx([w for _, w in chars])
    assert all(a.weight != b.weight for a, b in zip(fragments, fragments[1:], strict=False))
