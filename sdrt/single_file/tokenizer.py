"""The CLIP BPE tokenizers of SD 1.x, SD 2.x and SDXL, built offline from the vocabulary sdrt ships.

Single-file checkpoints carry no tokenizer. Every SD family uses CLIP's byte-level BPE over one 49408-token
vocabulary (the 48894 merges of OpenAI's `bpe_simple_vocab_16e6.txt.gz`, shipped in `vocabulary/` as
open-clip-torch distributes it, so `pip install` alone makes single files work);
they differ only in the padding token (SD 1.x and SDXL's first tokenizer pad with the end token, the
OpenCLIP models with "!"). The vocabulary is laid out as OpenAI's tokenizer lays it out: the 256 byte
characters, the same with the end-of-word mark, one token per merge, then the begin and end tokens.
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path

from sdrt.demo.tokenizer import bytes_to_unicode

VOCAB_FILE = Path(__file__).with_name("vocabulary") / "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SIZE = 49408
NUM_MERGES = VOCAB_SIZE - 2 * 256 - 2  # 48894
MODEL_MAX_LENGTH = 77


def vocabulary_file() -> Path:
    """The CLIP BPE vocabulary sdrt ships (package data)."""
    if not VOCAB_FILE.is_file():
        raise ValueError(
            f"the CLIP BPE vocabulary {VOCAB_FILE} is missing from this sdrt installation (reinstall sdrt), or give "
            "--config DIR with the model's tokenizer directories"
        )
    return VOCAB_FILE


@lru_cache(maxsize=1)
def clip_vocabulary() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """The 49408-token CLIP vocabulary (token -> id) and its BPE merges, in OpenAI's order."""
    lines = gzip.decompress(vocabulary_file().read_bytes()).decode("utf-8").split("\n")
    merges = tuple(tuple(line.split()) for line in lines[1 : 1 + NUM_MERGES])  # the first line is a version header
    if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
        raise ValueError(f"{vocabulary_file()} does not hold {NUM_MERGES} BPE merges")
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise ValueError(
            f"the CLIP vocabulary built from {vocabulary_file()} has {len(vocab)} tokens, not {VOCAB_SIZE}"
        )
    return vocab, merges  # type: ignore[return-value]


def clip_tokenizer(pad_token: str = "<|endoftext|>"):
    """A CLIPTokenizer over the real CLIP vocabulary, padding with `pad_token` ("!" for the OpenCLIP encoders)."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocabulary()
    if pad_token not in vocab:
        raise ValueError(f"pad token {pad_token!r} is not in the CLIP vocabulary")
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=MODEL_MAX_LENGTH, pad_token=pad_token)
