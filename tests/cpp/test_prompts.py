"""Prompts read as the Python runtime reads them: emphasis fragments and weights, BREAK, 75-token chunks with their
begin, end and padding tokens, the weight of every token, and which prompts use prompt editing (sdrt-cpp refuses)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from sdrt.conditioning.prompt_syntax import parse_prompt, prompt_schedule
from sdrt.conditioning.prompts import tokenize_prompt

PROMPTS = [
    "normal text",
    "an (important) word",
    "(unbalanced",
    "\\(literal\\]",
    "(unnecessary)(parens)",
    "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
    "a cat BREAK a dog",
    "((word))",
    "(word: 0.25 )",
    "(word:+.5) (word:2.)",
    "a:1.2) b",
    "(a:1.2.3)",
    "[[[deep",
    "x)y]z",
    "BREAKfast BREAK  BREAK x",
    "a\\b\\",
    "(BREAK:1.3)",
    "a (b:-1) c",
    "über (größe:1.4) 東京 [🐱]",
    "\\\\ back (a\\) b)",
    "word " * 100,
    "(long " * 40,
    "",
    # prompt editing and alternation, and brackets that only look like it
    "[a:b:0.5]",
    "[a|b]",
    "[a:b]",
    "[(a:1.2):b:3]",
    "(a|b)",
    "[a:b:c]",
    "a [b] c",
    "[a:b:1e1]",
    "((a)[b:c:2])",
]


def _fuzz(n: int) -> list[str]:
    rng = random.Random(5)
    alphabet = list("ab ()[]:\\|.0123456789,") + ["BREAK", " BREAK ", "1.5", "é"]
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 25))) for _ in range(n)]


@pytest.fixture(scope="module")
def prompt_rows(cpp_tools, demo_model):
    texts = PROMPTS + _fuzz(400)
    return texts, cpp_tools.inspect_json("prompts", str(demo_model / "tokenizer"), stdin=texts)


def test_emphasis_fragments_equal_pythons(prompt_rows):
    texts, rows = prompt_rows
    for text, row in zip(texts, rows, strict=True):
        expected = [[f.text, f.weight, f.chunk_break] for f in parse_prompt(text)]
        assert row["fragments"] == expected, text  # weights equal to the last bit: the same products in the same order


def test_chunks_ids_and_weights_equal_pythons(prompt_rows, demo_model):
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(demo_model / "tokenizer", local_files_only=True)
    texts, rows = prompt_rows
    long_prompts = 0
    for text, row in zip(texts, rows, strict=True):
        expected = tokenize_prompt(tokenizer, text)
        assert row["ids"] == [list(ids) for ids in expected.ids], text
        assert row["num_tokens"] == expected.num_tokens
        as_float32 = [np.float32(w).tolist() for chunk in expected.weights for w in chunk]
        assert [w for chunk in row["weights"] for w in chunk] == as_float32, text
        long_prompts += len(expected.ids) > 1
    assert long_prompts >= 3  # 75-token chunks and BREAK were exercised


def test_prompt_editing_is_recognized(prompt_rows):
    """sdrt-cpp refuses exactly the prompts whose text the Python runtime switches during sampling."""
    texts, rows = prompt_rows
    for text, row in zip(texts, rows, strict=True):
        schedule = prompt_schedule(text, 20)
        assert row["scheduled"] == (len(schedule) > 1 or schedule[0][1] != text), text
