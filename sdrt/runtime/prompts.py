"""Prompts to text embeddings as the AUTOMATIC1111 web UI makes them: emphasis weights, 75-token chunks, CLIP skip.

A prompt is parsed for emphasis (`sdrt.runtime.prompt_syntax`), tokenized fragment by fragment, and
cut into chunks of 75 tokens (a `BREAK` starts a new chunk). Each chunk becomes one text-encoder row
of 77 ids (begin token, tokens, end token, padding) and the rows' embeddings are concatenated along
the sequence axis. A prompt of at most 75 tokens with no emphasis gives exactly diffusers' encoding.
Emphasis scales each token's embedding by its weight and then restores the chunk's original mean,
as the web UI's default ("Original") emphasis does.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from sdrt.components import TEXT_ENCODER
from sdrt.engines import Engine, call_in_chunks
from sdrt.runtime.prompt_syntax import parse_prompt

log = logging.getLogger(__name__)


def load_tokenizer(path: str | os.PathLike):
    """The CLIP tokenizer saved in `path`, read from disk only."""
    from transformers import CLIPTokenizer

    directory = Path(path)
    if not directory.is_dir():
        raise ValueError(f"tokenizer directory {directory} is missing")
    try:
        return CLIPTokenizer.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot load the CLIP tokenizer in {directory}: {exc}") from exc


@dataclass(frozen=True)
class TokenizedPrompt:
    """A prompt as text-encoder rows: chunks of `length` ids each, and the emphasis weight of every id."""

    ids: tuple[tuple[int, ...], ...]  # one tuple of `length` token ids per chunk
    weights: tuple[tuple[float, ...], ...]  # emphasis weight per id; 1.0 on begin, end and padding tokens
    num_tokens: int  # prompt tokens, not counting begin, end and padding tokens

    @property
    def num_chunks(self) -> int:
        return len(self.ids)


def tokenize_prompt(tokenizer, text: str, length: int = 77) -> TokenizedPrompt:
    """Parse `text` for emphasis and cut its tokens into chunks of `length - 2` between begin and end tokens."""
    per_chunk = length - 2
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    if pad is None:
        pad = eos
    ids: list[tuple[int, ...]] = []
    weights: list[tuple[float, ...]] = []
    tokens: list[int] = []
    token_weights: list[float] = []
    total = 0

    def close_chunk() -> None:
        padding = per_chunk - len(tokens)
        ids.append((bos, *tokens, eos, *([pad] * padding)))
        weights.append((1.0, *token_weights, 1.0, *([1.0] * padding)))
        tokens.clear()
        token_weights.clear()

    for fragment in parse_prompt(text):
        if fragment.chunk_break:
            close_chunk()
            continue
        if not fragment.text:
            continue
        for token in tokenizer(fragment.text, add_special_tokens=False, verbose=False).input_ids:
            if len(tokens) == per_chunk:
                close_chunk()
            tokens.append(token)
            token_weights.append(fragment.weight)
            total += 1
    if tokens or not ids:
        close_chunk()
    return TokenizedPrompt(ids=tuple(ids), weights=tuple(weights), num_tokens=total)


def empty_chunk(tokenizer, length: int = 77) -> TokenizedPrompt:
    """The encoding of "" (one chunk): what shorter prompts are padded with to a batch's chunk count."""
    return tokenize_prompt(tokenizer, "", length)


def tokenize_prompts(
    tokenizer, texts: Sequence[str], length: int, max_chunks: int, field: str = "prompt"
) -> list[TokenizedPrompt]:
    """Tokenize every text and pad all to the same chunk count; ValueError naming `field` if one is too long."""
    tokenized = {text: tokenize_prompt(tokenizer, text, length) for text in dict.fromkeys(texts)}
    for text, prompt in tokenized.items():
        if prompt.num_chunks > max_chunks:
            raise ValueError(
                f"{field} {_abbreviate(text)!r} is {prompt.num_tokens} tokens in {prompt.num_chunks} chunks of "
                f"{length - 2}; this artifact takes at most {max_chunks} chunks ({max_chunks * (length - 2)} tokens). "
                "Shorten it, or re-export with a larger --max-text-chunks"
            )
    count = max(p.num_chunks for p in tokenized.values())
    empty = empty_chunk(tokenizer, length)
    padded = {}
    for text, prompt in tokenized.items():
        missing = count - prompt.num_chunks
        padded[text] = TokenizedPrompt(
            ids=prompt.ids + empty.ids * missing,
            weights=prompt.weights + empty.weights * missing,
            num_tokens=prompt.num_tokens,
        )
    return [padded[text] for text in texts]


def chunk_count(tokenizer, texts: Sequence[str], length: int = 77) -> int:
    """How many chunks the longest of `texts` takes: the text axis of a batch holding them is 77 times this."""
    return max(tokenize_prompt(tokenizer, text, length).num_chunks for text in dict.fromkeys(texts))


def encode_prompts(
    tokenizer, engine: Engine, texts: Sequence[str], clip_skip: int = 0, max_chunks: int | None = None
) -> torch.Tensor:
    """Text embeddings (N, 77 * chunks, D) float32 for `texts`, each distinct chunk encoded once.

    `clip_skip` counts as diffusers counts: 0 = the last layer, 1 = the penultimate (web UI "CLIP skip 2").
    """
    if engine.spec.name != TEXT_ENCODER:
        raise ValueError(f"encode_prompts needs the text encoder engine, got {engine.spec.name}")
    length = engine.ranges.text_length
    prompts = tokenize_prompts(tokenizer, texts, length, max_chunks or engine.ranges.max_text_chunks)
    rows = list(dict.fromkeys(ids for p in prompts for ids in p.ids))
    row_of = {ids: i for i, ids in enumerate(rows)}
    feeds = {
        "input_ids": torch.tensor(rows, dtype=torch.int32, device=engine.device),
        "clip_skip": torch.full((len(rows),), clip_skip, dtype=torch.int32, device=engine.device),
    }
    states = call_in_chunks(engine, feeds)["text_embeddings"]
    out = []
    for prompt in prompts:
        chunks = [
            apply_emphasis(states[row_of[ids]], torch.tensor(w, dtype=states.dtype, device=states.device))
            for ids, w in zip(prompt.ids, prompt.weights, strict=True)
        ]
        out.append(torch.cat(chunks, dim=0))
    return torch.stack(out)


def apply_emphasis(states: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Scale each token's embedding (T, D) by its weight (T,), then rescale to the original mean (web UI emphasis)."""
    if bool((weights == 1.0).all()):
        return states
    original_mean = states.mean()
    weighted = states * weights.unsqueeze(-1)
    return weighted * (original_mean / weighted.mean())


def _abbreviate(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
