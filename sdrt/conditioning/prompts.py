"""Prompts to text embeddings as the AUTOMATIC1111 web UI makes them: emphasis weights, 75-token chunks, CLIP skip.

A prompt is parsed for emphasis (`sdrt.conditioning.prompt_syntax`), tokenized fragment by fragment, and
cut into chunks of 75 tokens (a `BREAK` starts a new chunk). Each chunk becomes one text-encoder row
of 77 ids (begin token, tokens, end token, padding) and the rows' embeddings are concatenated along
the sequence axis. A prompt of at most 75 tokens with no emphasis gives exactly diffusers' encoding.
Emphasis scales each token's embedding by its weight and then restores the chunk's original mean,
as the web UI's default ("Original") emphasis does. A pooled embedding (SDXL) is the first chunk's.

Tokenization happens once per request (`PromptEncoder.tokenize`, when the request is checked); the
request carries its tokens (`PromptTokens`) to batching and encoding. The text-encoder engine starts after
the token lookup: the encoder looks every id up in the model's token table, extended with the vectors of
the textual-inversion embeddings loaded (`sdrt.conditioning.embeddings`), whose names the tokenizer's ids are
matched against as the web UI matches them, so an embedding needs no re-export.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from sdrt.conditioning.prompt_syntax import parse_prompt, prompt_schedule
from sdrt.engines import Engine, call_in_chunks
from sdrt.excerpt import excerpt
from sdrt.hashing import files_sha256
from sdrt.lazy import deferred

if TYPE_CHECKING:
    import torch
else:
    torch = deferred("torch")

MAX_EMPHASIS = 1000.0  # largest emphasis weight a token may carry (1.1 ** 72 is about 956)

if TYPE_CHECKING:
    from sdrt.conditioning.embeddings import EmbeddingVocabulary

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


def tokenizer_key(path: str | os.PathLike) -> str:
    """A hash of a tokenizer directory's files: tokenizers with equal keys give equal ids."""
    directory = Path(path)
    return files_sha256(directory, sorted(p.name for p in directory.iterdir() if p.is_file()))[:16]


@dataclass(frozen=True)
class TokenizedPrompt:
    """A prompt as text-encoder rows: chunks of `length` ids each, and the emphasis weight of every id."""

    ids: tuple[tuple[int, ...], ...]  # one tuple of `length` token ids per chunk
    weights: tuple[tuple[float, ...], ...]  # emphasis weight per id; 1.0 on begin, end and padding tokens
    num_tokens: int  # prompt tokens, not counting begin, end and padding tokens
    text: str = ""  # the prompt it came from

    @property
    def num_chunks(self) -> int:
        return len(self.ids)

    @property
    def is_empty(self) -> bool:
        """True for the empty prompt (no tokens): SDXL may give it zero embeddings instead of encoding it."""
        return self.num_tokens == 0

    def padded(self, chunks: int, empty: TokenizedPrompt) -> TokenizedPrompt:
        """This prompt followed by copies of `empty`'s one chunk, to `chunks` chunks."""
        missing = chunks - self.num_chunks
        if missing <= 0:
            return self
        return TokenizedPrompt(
            self.ids + empty.ids * missing, self.weights + empty.weights * missing, self.num_tokens, self.text
        )


@dataclass(frozen=True)
class ScheduledPrompt:
    """A prompt's tokens step by step (the web UI's prompt editing): one part per text, in step order.

    Part k conditions the denoising steps (UNet calls, counted from 0) up to and including `ends[k]`; the last
    part runs to the end. A prompt without editing or alternation has one part.
    """

    parts: tuple[TokenizedPrompt, ...]
    ends: tuple[int, ...]  # last step of each part, ascending
    text: str = ""  # the prompt as written

    def __post_init__(self) -> None:
        if not self.parts or len(self.parts) != len(self.ends) or list(self.ends) != sorted(self.ends):
            raise ValueError(f"a scheduled prompt needs one ascending end step per part, not {self.ends}")

    def at(self, step: int) -> TokenizedPrompt:
        """The tokens conditioning denoising step `step` (0 = the first UNet call)."""
        for part, end in zip(self.parts, self.ends, strict=True):
            if step <= end:
                return part
        return self.parts[-1]

    @property
    def switches(self) -> tuple[int, ...]:
        """The steps at which another part takes over (each part's first step but the first's)."""
        return tuple(end + 1 for end in self.ends[:-1])

    @property
    def num_chunks(self) -> int:
        return max(p.num_chunks for p in self.parts)

    @property
    def num_tokens(self) -> int:
        return max(p.num_tokens for p in self.parts)


@dataclass(frozen=True)
class PromptTokens:
    """One tokenizer's tokens of a request's prompts and negative prompts, made once when the request is checked."""

    prompts: tuple[ScheduledPrompt, ...]  # one per prompt
    negatives: tuple[ScheduledPrompt, ...]  # one per prompt


def tokenize_prompt(
    tokenizer, text: str, length: int = 77, vocabulary: EmbeddingVocabulary | None = None
) -> TokenizedPrompt:
    """Parse `text` for emphasis and cut its tokens into chunks of `length - 2` between begin and end tokens.

    Where the ids of an embedding's name appear (`vocabulary`), its vectors' ids take their place; an
    embedding that does not fit in the current chunk starts the next one, as the web UI does.
    """
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
        fragment_ids = tokenizer(fragment.text, add_special_tokens=False, verbose=False).input_ids
        at = 0
        while at < len(fragment_ids):
            found = vocabulary.match(fragment_ids, at) if vocabulary is not None else None
            consumed, new = (1, [fragment_ids[at]]) if found is None else found
            if len(new) > per_chunk:
                raise ValueError(f"an embedding in {text!r} has {len(new)} vectors; a chunk holds {per_chunk}")
            if len(tokens) + len(new) > per_chunk:
                close_chunk()
            tokens.extend(new)
            token_weights.extend([fragment.weight] * len(new))
            total += len(new)
            at += consumed
    if tokens or not ids:
        close_chunk()
    return TokenizedPrompt(ids=tuple(ids), weights=tuple(weights), num_tokens=total, text=text)


# (text encoder, row ids, clip skip) -> (the row's text states, its pooled embedding or None): each row once a batch
RowCache: TypeAlias = "dict[tuple[str, tuple[int, ...], int], tuple[torch.Tensor, torch.Tensor | None]]"


@dataclass(frozen=True)
class EncodedPrompts:
    """Text-encoder output for a list of prompts."""

    states: torch.Tensor  # (N, 77 * chunks, D) float32
    pooled: torch.Tensor | None  # (N, P) float32 from each prompt's first chunk, for encoders with a pooled output


class PromptEncoder:
    """A tokenizer, its token table and the text-encoder engine that reads the looked-up embeddings.

    `table` is the model's (vocab, D) token table; `vocabulary` the textual-inversion embeddings this
    encoder knows, whose vectors extend the table beyond the vocabulary.
    """

    def __init__(
        self,
        tokenizer,
        key: str,
        engines: Mapping[str, Engine],
        network: str,
        table: torch.Tensor,
        vocabulary: EmbeddingVocabulary | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.vocabulary = vocabulary if vocabulary else None
        # the identity of the tokenization: requests carry their tokens under it
        self.key = key if self.vocabulary is None else f"{key}+{self.vocabulary.key}"
        self._engines = engines  # the model's engines: whoever wraps one (a timer, a guard) is seen here too
        self.network = network
        self.length = self.engine.ranges.text_length
        self.max_chunks = self.engine.ranges.max_text_chunks
        attributes = self.engine.spec.attributes
        expected = (int(attributes["vocab_size"]), int(attributes["hidden_size"]))
        if tuple(table.shape) != expected:
            raise ValueError(f"the {network} token table is {tuple(table.shape)}, its engine takes {expected}")
        table = table.detach().to(self.engine.device, torch.float32)
        if self.vocabulary is not None:
            table = torch.cat([table, self.vocabulary.vectors.to(table.device, torch.float32)])
        self.table = table
        self.eos = tokenizer.eos_token_id
        self._empty = tokenize_prompt(tokenizer, "", self.length)

    @property
    def engine(self) -> Engine:
        return self._engines[self.network]

    @property
    def clip_skip_max(self) -> int:
        """Largest clip_skip the text encoder allows (the spec's bound is exclusive)."""
        return int(self.engine.spec.attributes["clip_skip_max"]) - 1

    def tokenize(self, texts: Sequence[str], steps: int = 1) -> tuple[ScheduledPrompt, ...]:
        """Each text's schedule over `steps` steps (prompt editing), each distinct text tokenized once."""
        tokens: dict[str, TokenizedPrompt] = {}

        def tokenized(text: str) -> TokenizedPrompt:
            if text not in tokens:
                tokens[text] = tokenize_prompt(self.tokenizer, text, self.length, self.vocabulary)
            return tokens[text]

        scheduled = {}
        for text in dict.fromkeys(texts):
            schedule = prompt_schedule(text, steps)
            parts = tuple(tokenized(part) for _, part in schedule)
            scheduled[text] = ScheduledPrompt(parts, tuple(end for end, _ in schedule), text)
        return tuple(scheduled[text] for text in texts)

    def check(self, prompts: Sequence[ScheduledPrompt | TokenizedPrompt], field: str = "prompt") -> None:
        """ValueError naming `field` for a prompt over the artifact's chunk limit or whose emphasis overflows."""
        for prompt in prompts:
            for part in prompt.parts if isinstance(prompt, ScheduledPrompt) else (prompt,):
                _check_emphasis(part, field)
            if prompt.num_chunks > self.max_chunks:
                raise ValueError(
                    f"{field} {excerpt(prompt.text, 60)} is {prompt.num_tokens} tokens in {prompt.num_chunks} "
                    f"chunks of {self.length - 2}; this artifact takes at most {self.max_chunks} chunks "
                    f"({self.max_chunks * (self.length - 2)} tokens). Shorten it, or re-export with a larger "
                    "--max-text-chunks"
                )

    def encode(
        self,
        prompts: Sequence[TokenizedPrompt],
        clip_skip: int = 0,
        chunks: int | None = None,
        cache: RowCache | None = None,
    ) -> EncodedPrompts:
        """Embeddings of `prompts`, each padded to `chunks` chunks (default: the longest's), distinct rows once.

        `clip_skip` counts as diffusers counts (0: the encoder's usual layer; 1: one before it). Rows found in
        `cache` (the rows earlier calls encoded, for prompt editing's parts) are not encoded again.
        """
        count = max(p.num_chunks for p in prompts) if chunks is None else chunks
        distinct = list(dict.fromkeys(prompts))
        padded = [p.padded(count, self._empty) for p in distinct]
        cache = {} if cache is None else cache
        key = self.network
        rows = [ids for ids in dict.fromkeys(i for p in padded for i in p.ids) if (key, ids, clip_skip) not in cache]
        if rows:
            device = self.engine.device
            ids = torch.tensor(rows, dtype=torch.int64, device=self.table.device)
            feeds = {
                "inputs_embeds": self.table[ids].to(device),
                "clip_skip": torch.full((len(rows),), clip_skip, dtype=torch.int32, device=device),
            }
            if "eos_position" in self.engine.spec.input_names:  # the pooled output is the end token's
                feeds["eos_position"] = torch.tensor(
                    [r.index(self.eos) for r in rows], dtype=torch.int32, device=device
                )
            out = call_in_chunks(self.engine, feeds)
            states, pooled = out["text_embeddings"], out.get("pooled_embeddings")
            for i, ids_ in enumerate(rows):
                cache[(key, ids_, clip_skip)] = (states[i], None if pooled is None else pooled[i])
        encoded = []
        for prompt in padded:
            chunks_ = []
            for ids, w in zip(prompt.ids, prompt.weights, strict=True):
                row = cache[(key, ids, clip_skip)][0]
                chunks_.append(apply_emphasis(row, torch.tensor(w, dtype=row.dtype, device=row.device)))
            encoded.append(torch.cat(chunks_, dim=0))
        index = {p: i for i, p in enumerate(distinct)}
        order = [index[p] for p in prompts]
        all_states = torch.stack(encoded)[order]
        first_rows = [cache[(key, p.ids[0], clip_skip)][1] for p in padded]
        all_pooled = None
        if first_rows[0] is not None:
            all_pooled = torch.stack(first_rows)[order]
        return EncodedPrompts(all_states, all_pooled)


def encode_prompts(encoder: PromptEncoder, texts: Sequence[str], clip_skip: int = 0) -> torch.Tensor:
    """Text embeddings (N, 77 * chunks, D) float32 for `texts` (read without editing): tokenize, check, encode."""
    prompts = [tokenize_prompt(encoder.tokenizer, text, encoder.length, encoder.vocabulary) for text in texts]
    encoder.check(prompts)
    return encoder.encode(prompts, clip_skip).states


def _check_emphasis(prompt: TokenizedPrompt, field: str) -> None:
    """ValueError unless every emphasis weight is finite and at most MAX_EMPHASIS: a larger one overflows float32."""
    for chunk in prompt.weights:
        for weight in chunk:
            if not abs(weight) <= MAX_EMPHASIS:  # also catches NaN
                raise ValueError(
                    f"{field} {excerpt(prompt.text, 60)} has an emphasis weight of {weight:.3g}; at most "
                    f"{MAX_EMPHASIS:g} is allowed (each '(' multiplies by 1.1: 73 nested brackets reach it), "
                    "since a larger weight overflows the text embeddings"
                )


def apply_emphasis(states: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Scale each token's embedding (T, D) by its weight (T,), then rescale to the original mean (web UI emphasis)."""
    if bool((weights == 1.0).all()):
        return states
    original_mean = states.mean()
    weighted = states * weights.unsqueeze(-1)
    return weighted * (original_mean / weighted.mean())
