"""Prompt editing and alternation switch the UNet's text conditioning per step, as the web UI does.

The schedule of texts is checked against the web UI's documented examples; the images against a hand-made
run of diffusers' own pipeline that swaps `prompt_embeds` at the same step (its step-end callback).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdrt.conditioning.prompt_syntax import prompt_schedule
from sdrt.schedulers import make_scheduler
from tests.conftest import BACKENDS
from tests.runtime.compare import HEIGHT, STEPS, WIDTH, assert_images_close

# (prompt, schedule over 10 steps): the web UI's own examples of its prompt schedule
SCHEDULES = [
    ("test", [(10, "test")]),
    ("a [b:3]", [(3, "a "), (10, "a b")]),
    ("a [b: 3]", [(3, "a "), (10, "a b")]),
    ("a [[[b]]:2]", [(2, "a "), (10, "a [[b]]")]),
    ("[(a:2):3]", [(3, ""), (10, "(a:2)")]),
    ("a [b : c : 1] d", [(1, "a b  d"), (10, "a  c  d")]),
    ("a[b:[c:d:2]:1]e", [(1, "abe"), (2, "ace"), (10, "ade")]),
    ("a [unbalanced", [(10, "a [unbalanced")]),
    ("a [b:.5] c", [(5, "a  c"), (10, "a b c")]),
    ("a [{b|d{:.5] c", [(10, "a [{b|d{:.5] c")]),
    ("((a][:b:c [d:3]", [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
    ("[a|(b:1.1)]", [(s, "a" if s % 2 else "(b:1.1)") for s in range(1, 11)]),
    ("[from::4] x", [(4, "from x"), (10, " x")]),
    ("a | b [c:2]", [(10, "a | b [c:2]")]),  # a "|" outside square brackets: no schedule, as in the web UI
    ("[" * 500 + "deep", [(10, "[" * 500 + "deep")]),
]


@pytest.mark.parametrize(("prompt", "schedule"), SCHEDULES)
def test_schedule_matches_the_web_ui(prompt, schedule):
    assert list(prompt_schedule(prompt, 10)) == schedule


def _embeds(pipe, text: str) -> torch.Tensor:
    ids = pipe.tokenizer(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return pipe.text_encoder(ids)[0]


def _switching_reference(diffusers_pipe, texts_at_step, negative: str, seed: int, scheduler: str):
    """diffusers' pipeline with the conditional embeddings replaced after each step by the next step's text's."""
    pipe = diffusers_pipe
    pipe.scheduler = make_scheduler(scheduler, pipe.original_scheduler.config)
    negative_embeds = _embeds(pipe, negative)

    def switch(pipe_, i, t, kwargs):
        return {"prompt_embeds": torch.cat([negative_embeds, _embeds(pipe, texts_at_step(i + 1))])}

    return pipe(
        prompt_embeds=_embeds(pipe, texts_at_step(0)),
        negative_prompt_embeds=negative_embeds,
        height=HEIGHT,
        width=WIDTH,
        num_inference_steps=STEPS,
        guidance_scale=7.5,
        generator=[torch.Generator("cpu").manual_seed(seed)],
        callback_on_step_end=switch,
        callback_on_step_end_tensor_inputs=["prompt_embeds"],
    ).images


def _edited(step: int) -> str:
    # [cat:dog:2]: steps 0, 1 and 2 (UNet calls counted from 0) see the cat, the rest the dog
    return "a cat in the snow" if step <= 2 else "a dog in the snow"


def _alternated(step: int) -> str:
    # [cat|dog]: the schedule's step 1 is cat, 2 dog, ...; call 0 takes step 1's text, as the web UI's does
    return "a " + ("cat" if max(step, 1) % 2 else "dog") + " in the snow"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("prompt", "texts", "scheduler"),
    [("a [cat:dog:2] in the snow", _edited, "euler"), ("a [cat|dog] in the snow", _alternated, "dpmpp_2m")],
    ids=["editing", "alternation"],
)
def test_the_conditioning_switches_as_a_hand_made_run_switches_it(
    pipelines, diffusers_pipe, backend, prompt, texts, scheduler
):
    ours = pipelines[backend].generate(
        prompt, negative_prompt="blurry", height=HEIGHT, width=WIDTH, num_inference_steps=STEPS, seed=5,
        scheduler=scheduler,
    )  # fmt: skip
    assert_images_close(ours.images, _switching_reference(diffusers_pipe, texts, "blurry", 5, scheduler))


class _Recording:
    """An engine wrapper that keeps every call's feeds."""

    def __init__(self, inner) -> None:
        self.inner, self.spec, self.ranges, self.device = inner, inner.spec, inner.ranges, inner.device
        self.calls: list[dict] = []

    def __call__(self, feeds):
        self.calls.append({k: v.clone() for k, v in feeds.items()})
        return self.inner(feeds)


def _recorded(pipe, network: str, run) -> list[dict]:
    recording = _Recording(pipe.model.engines[network])
    pipe.model.engines[network] = recording
    try:
        run()
    finally:
        pipe.model.engines[network] = recording.inner
    return recording.calls


@pytest.mark.parametrize(
    ("prompt", "seen"),
    [
        ("a [cat:dog:2]", ["a cat"] * 3 + ["a dog"] * 3),  # a step number: steps 0..2 before, then after
        ("a [cat:dog:0.5]", ["a cat"] * 4 + ["a dog"] * 2),  # a fraction: int(0.5 * 6) = 3
        ("a [cat|dog]", ["a cat", "a cat", "a dog", "a cat", "a dog", "a cat"]),
        ("a [cat::1]", ["a cat"] * 2 + ["a "] * 4),
    ],
)
def test_the_unet_sees_each_steps_text(pipelines, prompt, seen):
    pipe = pipelines["onnxruntime"]

    def run():
        return pipe.generate(
            prompt, height=64, width=64, num_inference_steps=6, seed=1, guidance_scale=1.0, scheduler="euler"
        )  # noqa: E731

    calls = _recorded(pipe, "unet", run)
    encodings = {
        text: pipe.model.conditioner.prepare([pipe.request(text, num_inference_steps=6)], _no_cfg(pipe))
        for text in set(seen)
    }
    assert len(calls) == len(seen)
    for call, text in zip(calls, seen, strict=True):
        assert torch.equal(call["encoder_hidden_states"], encodings[text].cond["encoder_hidden_states"])


def _no_cfg(pipe):
    from sdrt.conditioning.guidance import ClassifierFreeGuidance

    return ClassifierFreeGuidance([1.0], pipe.device)


def test_scheduled_requests_batch_with_plain_ones(pipelines):
    pipe = pipelines["onnxruntime"]
    settings = dict(height=64, width=64, num_inference_steps=4, scheduler="euler_a")
    edited = pipe.request("a [red:blue:0.5] car", negative_prompt="[fog::1]", seed=1, **settings)
    plain = pipe.request("a house", seed=2, **settings)
    assert pipe.batch_key(edited) == pipe.batch_key(plain)
    together = pipe.run_batch([edited, plain])
    for request, result in zip((edited, plain), together, strict=True):
        alone = pipe.run(request).images[0]
        assert np.abs(np.asarray(alone, np.int16) - np.asarray(result.images[0], np.int16)).max() <= 1
    assert pipe.batch_key(edited) != pipe.batch_key(
        pipe.request("a house", seed=2, **{**settings, "num_inference_steps": 5})
    )


def test_each_distinct_text_is_encoded_once_per_batch(pipelines):
    pipe = pipelines["onnxruntime"]
    run = lambda: pipe.generate("[cat|dog]", height=64, width=64, num_inference_steps=6, seed=1, guidance_scale=1.0)  # noqa: E731
    calls = _recorded(pipe, "text_encoder", run)
    # "cat" and "dog" once each, though the conditioning switches at every step
    assert sum(call["inputs_embeds"].shape[0] for call in calls) == 2


def test_emphasis_that_overflows_is_refused_when_checked(pipelines):
    pipe = pipelines["onnxruntime"]
    with pytest.raises(ValueError, match=r"prompt .* has an emphasis weight of .*; at most 1000"):
        pipe.request("(" * 1999 + "a" + ")" * 1999, height=64, width=64, num_inference_steps=2)
    with pytest.raises(ValueError, match=r"negative_prompt .* emphasis weight"):
        pipe.request("a", negative_prompt="(b:5000)", height=64, width=64, num_inference_steps=2)
    pipe.request("(" * 70 + "a" + ")" * 70, height=64, width=64, num_inference_steps=2)  # 1.1 ** 70 is fine


def test_sdxl_conditioning_switches_too(sdxl_pipelines):
    # the schedule is the text conditioner's, so SDXL's states and pooled embeddings switch alike
    pipe = sdxl_pipelines["onnxruntime"]
    settings = dict(height=64, width=64, num_inference_steps=3, guidance_scale=1.0, scheduler="euler")

    def run():
        return pipe.generate("a [cat:dog:1]", seed=1, **settings)

    calls = _recorded(pipe, "unet", run)
    cfg = _no_cfg(pipe)
    cat, dog = (pipe.model.conditioner.prepare([pipe.request(t, **settings)], cfg) for t in ("a cat", "a dog"))
    assert len(calls) == 3
    for call, expected in zip(calls, (cat, cat, dog), strict=True):
        for name in ("encoder_hidden_states", "text_embeds", "time_ids"):
            assert torch.equal(call[name], expected.cond[name]), name


def test_unclip_image_conditioning_holds_at_every_step_of_a_schedule(unclip_pipelines):
    # the image embedding (class_labels) joins every part of the text schedule: the same noised draw throughout
    from tests.runtime.test_img2img import input_image

    pipe = unclip_pipelines["onnxruntime"]
    settings = dict(height=64, width=64, num_inference_steps=3, guidance_scale=1.0, scheduler="euler")
    image = input_image(seed=3)

    def run():
        return pipe.generate("a [cat:dog:1]", image=image, noise_level=100, seed=1, **settings)

    calls = _recorded(pipe, "unet", run)
    cat, dog = (
        pipe.model.conditioner.prepare([pipe.request(t, image=image, noise_level=100, seed=1, **settings)],
                                       _no_cfg(pipe), [torch.Generator().manual_seed(1)])
        for t in ("a cat", "a dog")
    )  # fmt: skip
    assert len(calls) == 3
    for call, expected in zip(calls, (cat, cat, dog), strict=True):
        for name in ("encoder_hidden_states", "class_labels"):
            assert torch.equal(call[name], expected.cond[name]), name
    assert not torch.equal(cat.cond["encoder_hidden_states"], dog.cond["encoder_hidden_states"])
