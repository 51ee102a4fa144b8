"""Requests merged into one batch get exactly the images each gets alone."""

from __future__ import annotations

import numpy as np
import pytest

from sdrt.runtime.request import GenerationRequest
from tests.conftest import BACKENDS
from tests.runtime.test_img2img import input_image
from tests.runtime.test_inpaint import mask_image

# batching changes float rounding (other batch sizes), never content
MAX_PIXEL_DIFF = 1


def _request(prompt, seed, scale=7.5, **kwargs) -> GenerationRequest:
    settings = dict(height=72, width=104, steps=5, scheduler="euler_a")
    return GenerationRequest(
        prompts=(prompt,), negative_prompts=("blurry",), guidance_scales=(scale,), seed=seed, **{**settings, **kwargs}
    )


def _assert_same(batched, alone):
    assert batched.seeds == alone.seeds and batched.parameters == alone.parameters
    for a, b in zip(batched.images, alone.images, strict=True):
        diff = np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max()
        assert diff <= MAX_PIXEL_DIFF, f"batched image differs from the image alone by {diff}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_text_to_image_requests_share_a_batch(pipelines, backend):
    pipe = pipelines[backend]
    requests = [
        _request("a cat on a table", 1),
        _request("a dog running on the beach", 2, scale=1.0),  # unguided: no unconditional row
        _request("a (castle:1.3) in the forest", 3, scale=5.0, num_images_per_prompt=2),
    ]
    assert len({pipe.batch_key(r) for r in requests}) == 1
    batched = pipe.run_batch(requests)
    for request, result in zip(requests, batched, strict=True):
        _assert_same(result, pipe.run(request))


@pytest.mark.parametrize("backend", BACKENDS)
def test_image_requests_with_their_own_images_share_a_batch(pipelines, backend):
    pipe = pipelines[backend]
    image_a, image_b = input_image(seed=1), input_image(seed=2).transpose(0)  # two different inputs
    img2img = [_request("a cat", 5, image=image_a, strength=0.6), _request("a dog", 6, image=image_b, strength=0.6)]
    for request, result in zip(img2img, pipe.run_batch(img2img), strict=True):
        _assert_same(result, pipe.run(request))
    inpaint = [
        _request("a cat", 7, image=image_a, mask_image=mask_image(), strength=1.0),
        _request("a dog", 8, image=image_b, mask_image=mask_image().transpose(1), strength=1.0),
    ]
    for request, result in zip(inpaint, pipe.run_batch(inpaint), strict=True):
        _assert_same(result, pipe.run(request))


def test_batch_key_separates_what_cannot_share(pipelines):
    pipe = pipelines["onnxruntime"]
    base = pipe.batch_key(_request("a cat", 1))
    assert pipe.batch_key(_request("a dog", 99, scale=3.0)) == base
    assert pipe.batch_key(_request("a cat", 1, steps=6)) != base
    assert pipe.batch_key(_request("a cat", 1, scheduler="Euler a")) == base  # aliases are one sampler
    assert pipe.batch_key(_request("a cat", 1, clip_skip=1)) != base
    assert pipe.batch_key(_request(" ".join(["castle"] * 80), 1)) != base  # two chunks: it would pad the others
    with pytest.raises(ValueError, match="equal batch_key"):
        pipe.run_batch([_request("a cat", 1), _request("a cat", 1, steps=6)])


@pytest.mark.parametrize("backend", BACKENDS)
def test_sdxl_requests_share_a_batch_with_and_without_the_refiner(sdxl_pipelines, backend):
    """Each SDXL request in a batch (its own prompt, negative, scale, seed, aesthetic score) equals itself alone."""
    pipe = sdxl_pipelines[backend]
    common = dict(height=72, width=104, num_inference_steps=6, scheduler="euler_a")
    plain = [
        pipe.request("a cat on a table", negative_prompt="blurry", seed=1, **common),
        pipe.request("a dog on the beach", guidance_scale=1.0, seed=2, **common),  # unguided
        pipe.request("a (castle:1.3)", guidance_scale=6.0, seed=3, num_images_per_prompt=2, **common),
    ]
    refined = [
        pipe.request("a cat", seed=4, refiner_switch_at=0.7, **common),
        pipe.request("a dog", negative_prompt="ugly", seed=5, refiner_switch_at=0.7, aesthetic_score=7.5, **common),
    ]
    for requests in (plain, refined):
        assert len({pipe.batch_key(r) for r in requests}) == 1
        for request, result in zip(requests, pipe.run_batch(requests), strict=True):
            _assert_same(result, pipe.run(request))
