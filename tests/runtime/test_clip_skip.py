"""CLIP skip on prompt and negative prompt, against diffusers fed embeddings made from the hidden states.

diffusers' own `clip_skip=` path reaches for `text_encoder.text_model`, which transformers 5 removed,
and it applies the skip to the positive prompt only; the web UI applies it to both. The reference
here is diffusers' pipeline fed embeddings made by diffusers' definition (hidden state -(k+1)
through the final layer norm) for both prompts.
"""

from __future__ import annotations

import pytest
import torch

from sdrt.conditioning.prompts import tokenize_prompt
from tests.conftest import BACKENDS
from tests.runtime.compare import HEIGHT, STEPS, WIDTH, assert_images_close


def _embeddings(pipe, text: str, clip_skip: int) -> torch.Tensor:
    ids = torch.tensor([tokenize_prompt(pipe.tokenizer, text).ids[0]])
    with torch.no_grad():
        out = pipe.text_encoder(ids, output_hidden_states=True)
        return pipe.text_encoder.final_layer_norm(out.hidden_states[-(clip_skip + 1)])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("clip_skip", [1, 2])
def test_clip_skip_matches_diffusers_on_prompt_and_negative(pipelines, diffusers_pipe, backend, clip_skip):
    prompt, negative = "portrait of a woman with red hair", "blurry, low quality"
    ours = pipelines[backend].generate(
        prompt, negative_prompt=negative, height=HEIGHT, width=WIDTH, num_inference_steps=STEPS,
        clip_skip=clip_skip, seed=77,
    )  # fmt: skip
    pipe = diffusers_pipe
    pipe.scheduler = pipe.original_scheduler
    theirs = pipe(
        prompt_embeds=_embeddings(pipe, prompt, clip_skip),
        negative_prompt_embeds=_embeddings(pipe, negative, clip_skip),
        height=HEIGHT,
        width=WIDTH,
        num_inference_steps=STEPS,
        generator=[torch.Generator("cpu").manual_seed(77)],
    ).images
    assert_images_close(ours.images, theirs)
    assert f"Clip skip: {clip_skip + 1}" in ours.parameters[0]  # the web UI's numbering in the infotext


def test_clip_skip_changes_the_image_and_is_bounded_by_the_layer_count(pipelines):
    pipe = pipelines["onnxruntime"]
    kwargs = dict(height=64, width=64, num_inference_steps=3, seed=5)
    a = pipe.generate("a cat", clip_skip=0, **kwargs).images[0]
    b = pipe.generate("a cat", clip_skip=1, **kwargs).images[0]
    assert a.tobytes() != b.tobytes()
    with pytest.raises(ValueError, match=r"clip_skip 3 is outside 0..2 \(the text encoder has 3 layers\)"):
        pipe.generate("a cat", clip_skip=3, **kwargs)
    with pytest.raises(ValueError, match=r"clip_skip -1 must be at least 0"):
        pipe.generate("a cat", clip_skip=-1, **kwargs)
