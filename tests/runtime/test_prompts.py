"""Tokenization as diffusers does it, with a warning naming what a too-long prompt loses."""

from __future__ import annotations

import logging

import torch

from sdrt.runtime.prompts import encode_texts, tokenize


def test_ids_are_padded_to_77_with_begin_and_end(pipelines):
    tok = pipelines["onnxruntime"].tokenizer
    ids = tokenize(tok, ["a cat", ""], 77)
    assert ids.shape == (2, 77) and ids.dtype == torch.int32
    bos, eos = tok.convert_tokens_to_ids(["<|startoftext|>", "<|endoftext|>"])
    assert ids[0, 0] == bos and ids[0, 3] == eos and (ids[1, 1:] == eos).all()


def test_long_prompt_is_truncated_with_a_warning(pipelines, caplog):
    pipe = pipelines["onnxruntime"]
    words = " ".join(["castle"] * 80 + ["dragon", "zebra"])
    with caplog.at_level(logging.WARNING, logger="sdrt.runtime.prompts"):
        states = encode_texts(pipe.tokenizer, pipe.engines["text_encoder"], [words, "a cat"])
    assert states.shape == (2, 77, 32)
    (record,) = caplog.records  # ours alone: transformers' own length warning is not passed on to the user
    assert "longer than 75 tokens" in record.getMessage() and "dragon zebra" in record.getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sdrt.runtime.prompts"):
        encode_texts(pipe.tokenizer, pipe.engines["text_encoder"], ["a cat"])
    assert not caplog.records


def test_repeated_prompts_are_encoded_once_and_identically(pipelines):
    pipe = pipelines["onnxruntime"]
    states = encode_texts(pipe.tokenizer, pipe.engines["text_encoder"], ["a cat", "a dog", "a cat"])
    assert torch.equal(states[0], states[2]) and not torch.equal(states[0], states[1])
