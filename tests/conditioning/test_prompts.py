"""Prompt encoding: diffusers' ids for plain prompts, 75-token chunks for long ones, web UI emphasis, CLIP skip."""

from __future__ import annotations

import pytest
import torch

from sdrt.conditioning.prompts import encode_prompts, tokenize_prompt
from sdrt.model_dir import ModelDir
from tests.conftest import BACKENDS

# float32 text encoder on identical ids; only the emphasis arithmetic differs from the reference
ATOL = 1e-5


@pytest.fixture(scope="module")
def text_model(demo_model):
    return ModelDir.open(demo_model).load_part("text_encoder")


def test_plain_prompt_gives_diffusers_ids(pipelines):
    tok = pipelines["onnxruntime"].tokenizer
    prompt = tokenize_prompt(tok, "a photo of a cat, highly detailed")
    expected = tok("a photo of a cat, highly detailed", padding="max_length", max_length=77).input_ids
    assert prompt.ids == (tuple(expected),) and prompt.weights == ((1.0,) * 77,)
    empty = tokenize_prompt(tok, "")
    assert empty.ids == (tuple(tok("", padding="max_length", max_length=77).input_ids),) and empty.num_tokens == 0


def test_long_prompt_is_cut_into_75_token_chunks_with_their_own_begin_and_end(pipelines):
    tok = pipelines["onnxruntime"].tokenizer
    words = " ".join(["castle"] * 200)
    prompt = tokenize_prompt(tok, words)
    bos, eos = tok.bos_token_id, tok.eos_token_id
    castle = tok("castle", add_special_tokens=False).input_ids
    assert len(castle) == 1 and prompt.num_tokens == 200 and prompt.num_chunks == 3
    for chunk in prompt.ids:
        assert len(chunk) == 77 and chunk[0] == bos
    assert prompt.ids[0][1:76] == tuple(castle * 75) and prompt.ids[0][76] == eos
    assert prompt.ids[2][1:51] == tuple(castle * 50) and prompt.ids[2][51] == eos


def test_break_starts_a_new_chunk(pipelines):
    tok = pipelines["onnxruntime"].tokenizer
    prompt = tokenize_prompt(tok, "a cat BREAK a dog")
    assert prompt.num_chunks == 2
    assert (
        prompt.ids[0] == tokenize_prompt(tok, "a cat").ids[0] and prompt.ids[1] == tokenize_prompt(tok, "a dog").ids[0]
    )


def test_prompts_of_a_batch_are_padded_to_one_chunk_count_with_the_empty_prompt(pipelines):
    pipe = pipelines["onnxruntime"]
    tok = pipe.tokenizer
    short, long_ = (tokenize_prompt(tok, t) for t in ["a cat", " ".join(["castle"] * 100)])
    padded = short.padded(long_.num_chunks, tokenize_prompt(tok, ""))
    assert padded.num_chunks == long_.num_chunks == 2
    assert padded.ids[1] == tokenize_prompt(tok, "").ids[0]
    # the encoder pads a batch this way: the short prompt's second chunk encodes as the empty prompt does
    encoder = pipe.model.prompt_encoder("text_encoder")
    states = encoder.encode([short, long_]).states
    empty = encoder.encode([tokenize_prompt(tok, "")]).states
    assert states.shape[1] == 2 * 77
    torch.testing.assert_close(states[0, 77:], empty[0], atol=1e-6, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_200_token_prompt_first_chunk_equals_the_75_token_encoding(pipelines, backend):
    pipe = pipelines[backend]
    encoder = pipe.model.prompt_encoder("text_encoder")
    words = ["castle", "moon", "forest", "lake", "robot"] * 40  # 200 one-token words of the demo vocabulary
    long_states = encode_prompts(encoder, [" ".join(words)])
    first = encode_prompts(encoder, [" ".join(words[:75])])
    rest = encode_prompts(encoder, [" ".join(words[150:])])
    assert long_states.shape == (1, 3 * 77, 32)
    torch.testing.assert_close(long_states[:, :77], first, rtol=0, atol=ATOL)
    torch.testing.assert_close(long_states[:, 154:], rest, rtol=0, atol=ATOL)


def test_200_token_prompt_runs_end_to_end_on_onnxruntime(pipelines):
    words = ["castle", "moon", "forest", "lake", "robot"] * 40
    result = pipelines["onnxruntime"].generate(" ".join(words), height=64, width=64, num_inference_steps=2, seed=1)
    assert result.images[0].size == (64, 64)


def test_prompt_over_the_chunk_limit_is_refused_before_any_engine_runs(pipelines):
    pipe = pipelines["onnxruntime"]
    with pytest.raises(ValueError, match=r"400 tokens in 6 chunks.*at most 4 chunks.*--max-text-chunks"):
        pipe.generate(" ".join(["castle"] * 400), height=64, width=64, num_inference_steps=2, seed=1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_emphasis_scales_exactly_the_weighted_tokens_then_restores_the_mean(pipelines, backend):
    encoder = pipelines[backend].model.prompt_encoder("text_encoder")
    plain, weighted = encode_prompts(encoder, ["a cat on a table", "a (cat:1.5) on a [table]"])
    # ids: <bos> a cat on a table <eos> ...: cat is token 2, table token 5
    weights = torch.ones(77)
    weights[2], weights[5] = 1.5, 1 / 1.1
    scaled = plain * weights[:, None]
    expected = scaled * (plain.mean() / scaled.mean())
    torch.testing.assert_close(weighted, expected, rtol=0, atol=ATOL)
    assert weighted.mean().item() == pytest.approx(plain.mean().item(), abs=1e-6)


def test_repeated_prompts_are_encoded_once_and_identically(pipelines):
    pipe = pipelines["onnxruntime"]
    states = encode_prompts(pipe.model.prompt_encoder("text_encoder"), ["a cat", "a dog", "a cat"])
    assert torch.equal(states[0], states[2]) and not torch.equal(states[0], states[1])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("clip_skip", [0, 1, 2])
def test_clip_skip_picks_the_layer_diffusers_numbering_names(pipelines, text_model, backend, clip_skip):
    """clip_skip k: hidden state -(k+1) through the final layer norm (diffusers' definition), 0 = last_hidden_state."""
    pipe = pipelines[backend]
    ids = torch.tensor([tokenize_prompt(pipe.tokenizer, "a cat on a table").ids[0]])
    with torch.no_grad():
        out = text_model(ids, output_hidden_states=True)
        reference = text_model.final_layer_norm(out.hidden_states[-(clip_skip + 1)])
    if clip_skip == 0:
        torch.testing.assert_close(reference, out.last_hidden_state)
    ours = encode_prompts(pipe.model.prompt_encoder("text_encoder"), ["a cat on a table"], clip_skip=clip_skip)
    torch.testing.assert_close(ours, reference, rtol=0, atol=ATOL)
