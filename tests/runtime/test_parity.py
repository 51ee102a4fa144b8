"""Images match diffusers' StableDiffusionPipeline on the same weights, seed, scheduler and settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdrt.schedulers import SAMPLERS, make_scheduler
from tests.conftest import BACKENDS
from tests.runtime.compare import HEIGHT, STEPS, WIDTH, assert_images_close

SIZE_STEPS = {"height": HEIGHT, "width": WIDTH, "num_inference_steps": STEPS}


def _reference(diffusers_pipe, scheduler, prompts, negatives, seed, guidance, per_prompt=1, eta=0.0):
    pipe = diffusers_pipe
    n = len(prompts) * per_prompt
    seeds = [seed + i for i in range(n)]
    # the SDE sampler's Brownian trees are seeded per image, as the pipeline seeds them
    pipe.scheduler = (
        make_scheduler(scheduler, pipe.original_scheduler.config, seeds=seeds) if scheduler else pipe.original_scheduler
    )
    return pipe(
        prompts,
        negative_prompt=negatives,
        **SIZE_STEPS,
        guidance_scale=guidance,
        num_images_per_prompt=per_prompt,
        eta=eta,
        generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
    ).images


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scheduler", list(SAMPLERS))
def test_every_sampler_matches_diffusers(pipelines, diffusers_pipe, backend, scheduler):
    prompt, negative = "a photo of an astronaut riding a horse", "blurry, low quality"
    ours = pipelines[backend].generate(
        prompt,
        negative_prompt=negative,
        **SIZE_STEPS,
        guidance_scale=7.5,
        seed=123,
        scheduler=scheduler,
    )
    theirs = _reference(diffusers_pipe, scheduler, [prompt], [negative], 123, 7.5)
    assert_images_close(ours.images, theirs)
    assert ours.seeds == [123]


@pytest.mark.parametrize("backend", BACKENDS)
def test_default_scheduler_and_no_guidance(pipelines, diffusers_pipe, backend):
    """guidance 1.0: diffusers runs no unconditional pass, and neither do we."""
    ours = pipelines[backend].generate("a cat on a table", **SIZE_STEPS, guidance_scale=1.0, seed=7)
    theirs = _reference(diffusers_pipe, None, ["a cat on a table"], None, 7, 1.0)
    assert_images_close(ours.images, theirs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_of_prompts_with_several_images_each(pipelines, diffusers_pipe, backend):
    """2 prompts x 2 images = 4 images: the UNet batch of 8 exceeds the engine's 4, so calls are chunked."""
    prompts = ["a castle in the forest", "a robot reading a book"]
    negatives = ["watermark", "blurry"]
    ours = pipelines[backend].generate(
        prompts,
        negative_prompt=negatives,
        **SIZE_STEPS,
        guidance_scale=5.0,
        seed=1000,
        num_images_per_prompt=2,
        scheduler="euler_a",
    )
    theirs = _reference(diffusers_pipe, "euler_a", prompts, negatives, 1000, 5.0, per_prompt=2)
    assert_images_close(ours.images, theirs)
    assert ours.seeds == [1000, 1001, 1002, 1003]
    assert "Negative prompt: watermark" in ours.parameters[1] and ours.parameters[2].startswith("a robot")


@pytest.mark.parametrize("backend", BACKENDS)
def test_prompts_with_different_guidance_scales_share_a_batch(pipelines, diffusers_pipe, backend):
    """One call with scales 7.5 and 1.0 gives each image what diffusers gives that prompt alone."""
    ours = pipelines[backend].generate(
        ["a castle in the forest", "a robot reading a book"],
        **SIZE_STEPS,
        guidance_scale=[7.5, 1.0],
        seed=50,
        scheduler="dpmpp_2m",
    )
    guided = _reference(diffusers_pipe, "dpmpp_2m", ["a castle in the forest"], None, 50, 7.5)
    unguided = _reference(diffusers_pipe, "dpmpp_2m", ["a robot reading a book"], None, 51, 1.0)
    assert_images_close(ours.images, guided + unguided)
    assert "CFG scale: 7.5" in ours.parameters[0] and "CFG scale: 1," in ours.parameters[1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_ddim_eta_matches_diffusers(pipelines, diffusers_pipe, backend):
    """eta > 0 draws per-step noise from each image's generator, as diffusers does."""
    ours = pipelines[backend].generate("a dog on the beach", **SIZE_STEPS, seed=5, scheduler="ddim", eta=0.7)
    theirs = _reference(diffusers_pipe, "ddim", ["a dog on the beach"], None, 5, 7.5, eta=0.7)
    assert_images_close(ours.images, theirs)


def test_backends_agree_with_each_other(pipelines):
    """The exported ONNX graphs and the torch modules give the same image (tighter than the diffusers bound)."""
    kwargs = dict(**SIZE_STEPS, seed=99, scheduler="dpmpp_2m")
    a = pipelines["torch"].generate("a lake at sunset", **kwargs).images[0]
    b = pipelines["onnxruntime"].generate("a lake at sunset", **kwargs).images[0]
    assert np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max() <= 1


def test_seed_reproduces_and_missing_seed_is_reported(pipelines):
    pipe = pipelines["onnxruntime"]
    kwargs = dict(height=64, width=64, num_inference_steps=2)
    first = pipe.generate("a cat", **kwargs)
    assert len(first.seeds) == 1 and 0 <= first.seeds[0] < 2**32
    again = pipe.generate("a cat", seed=first.seeds[0], **kwargs)
    assert np.array_equal(np.asarray(first.images[0]), np.asarray(again.images[0]))
    other = pipe.generate("a cat", seed=first.seeds[0] + 1, **kwargs)
    assert not np.array_equal(np.asarray(first.images[0]), np.asarray(other.images[0]))
