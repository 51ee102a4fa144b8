"""The C++ CLIP tokenizer gives transformers' CLIPTokenizer's ids, on both tokenizer file layouts an artifact copies."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

# ASCII, accented and other Latin, Greek, CJK, emoji (with modifiers and joiners), digits of other scripts,
# punctuation runs, contractions, whitespace of several kinds, the special tokens, decomposed text (NFC)
CORPUS = [
    "a photo of an astronaut riding a horse on the moon",
    "A Photo OF an ASTRONAUT, riding... a horse!!!",
    "it's a dog's life; they'll've been there, we'd go, I'm sure, don't",
    "crème brûlée, façade, naïve café — Ærøskøbing, Straße, İstanbul, Łódź, Dvořák",
    "ΣΊΣΥΦΟΣ Ὀδυσσεύς and Москва",
    "東京の夜景、ネオン 富士山 北京烤鸭 서울의 밤",
    "a cat 🐱 with a 🎩 and 👍🏽 🇯🇵 family 👨\u200d👩\u200d👧",
    "numbers 12345, 3.14, ٣٤٥ and ½ Ⅻ",
    "tabs\tand\nnewlines   and  spaces\u3000ideographic\u00a0nbsp\u2028line",
    "punctuation: (parens) [brackets] {braces} <angles> ~tilde~ `tick` @#$%^&*_+=|\\/? «quotes» „more“",
    "<|startoftext|>hello<|endoftext|> <|ENDOFTEXT|> <|end",
    "e\u0301 composed é, A\u030a ring, \u212b angstrom, ﬁ ligature, ＡＢＣ fullwidth, Ǆ digraph",
    "x'''s and '' ' 'tis ''ll",
    "masterpiece, best quality, (ultra-detailed:1.2), 8k uhd, dslr, film grain",
    "",
    "   ",
    "a" * 300,
]


def _fuzz(n: int) -> list[str]:
    rng = random.Random(22)
    pieces = ["a", "Z", "é", "ß", "東", "🐱", "1", "٣", " ", "  ", "\t", "'s", "'", ",", "...", "-", "e\u0301", "İ"]
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 30))) for _ in range(n)]


def _save_classic(tokenizer, directory: Path) -> Path:
    """The tokenizer as diffusers' model repositories ship it: vocab.json + merges.txt, no tokenizer.json."""
    tokenizer.save_pretrained(directory)
    model = json.loads((directory / "tokenizer.json").read_text())["model"]
    (directory / "tokenizer.json").unlink()
    (directory / "vocab.json").write_text(json.dumps(model["vocab"]))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return directory


@pytest.fixture(scope="module")
def tokenizer_dirs(demo_model, tmp_path_factory) -> dict[str, Path]:
    """The real 49408-token CLIP vocabulary (end-token and "!" padding, both file layouts) and the demo model's."""
    from sdrt.single_file.tokenizer import clip_tokenizer

    root = tmp_path_factory.mktemp("tokenizers")
    dirs = {}
    clip = clip_tokenizer()
    clip.save_pretrained(root / "clip")
    dirs["clip"] = root / "clip"
    dirs["clip_classic"] = _save_classic(clip, root / "clip_classic")
    clip_g = clip_tokenizer(pad_token="!")
    clip_g.save_pretrained(root / "clip_pad")
    dirs["clip_pad"] = root / "clip_pad"
    dirs["demo"] = shutil.copytree(demo_model / "tokenizer", root / "demo")
    return dirs


@pytest.mark.parametrize("which", ["clip", "clip_classic", "clip_pad", "demo"])
def test_ids_equal_transformers(cpp_tools, tokenizer_dirs, which):
    from transformers import CLIPTokenizer

    directory = tokenizer_dirs[which]
    reference = CLIPTokenizer.from_pretrained(directory, local_files_only=True)
    texts = CORPUS + _fuzz(150)
    expected = [reference(t, add_special_tokens=False, verbose=False).input_ids for t in texts]
    got = cpp_tools.inspect_json("tokenize", str(directory), stdin=texts)
    mismatched = [(t, e, g) for t, e, g in zip(texts, expected, got, strict=True) if e != g]
    assert not mismatched, f"{len(mismatched)} texts differ, first: {mismatched[0]}"


def test_special_and_padding_tokens(cpp_tools, tokenizer_dirs):
    """Begin, end and padding ids as transformers reads them (SD 2.x and SDXL's second encoder pad with "!")."""
    from transformers import CLIPTokenizer

    for which in ("clip", "clip_pad", "demo"):
        reference = CLIPTokenizer.from_pretrained(tokenizer_dirs[which], local_files_only=True)
        rows = cpp_tools.inspect_json("prompts", str(tokenizer_dirs[which]), stdin=["a"])[0]["ids"][0]
        pad = reference.pad_token_id if reference.pad_token_id is not None else reference.eos_token_id
        assert rows[0] == reference.bos_token_id and rows[2] == reference.eos_token_id
        assert rows[3:] == [pad] * 74
