"""Tokenization and text encoding, as diffusers' StableDiffusionPipeline.encode_prompt does it."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from sdrt.engines import Engine, call_in_chunks

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


def tokenize(tokenizer, texts: Sequence[str], length: int) -> torch.Tensor:
    """Token ids (N, length) int32: begin token, text, end token, padded, truncated to `length`."""
    batch = tokenizer(list(texts), padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    return batch.input_ids.to(torch.int32)


def encode_texts(tokenizer, engine: Engine, texts: Sequence[str]) -> torch.Tensor:
    """Text states (N, length, D) for `texts`, each distinct string encoded once."""
    unique = list(dict.fromkeys(texts))
    length = engine.ranges.text_length
    ids = tokenize(tokenizer, unique, length)
    _warn_truncated(tokenizer, unique, length)
    states = call_in_chunks(engine, {"input_ids": ids.to(engine.device)})["last_hidden_state"]
    row = {text: i for i, text in enumerate(unique)}
    return states[torch.tensor([row[t] for t in texts], device=states.device)]


def _warn_truncated(tokenizer, texts: Sequence[str], length: int) -> None:
    for text in texts:
        ids = tokenizer(text, truncation=False, verbose=False).input_ids  # counting only: no length warning
        if len(ids) > length:
            dropped = tokenizer.decode(ids[length - 1 : -1])
            log.warning("prompt is longer than %d tokens; this part was dropped: %r", length - 2, dropped)
