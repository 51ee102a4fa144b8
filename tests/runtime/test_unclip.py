"""Stable unCLIP 2.1 image variations match diffusers' StableUnCLIPImg2ImgPipeline on the same weights and seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sdrt.families.unclip import ImageEmbedder
from sdrt.schedulers import make_scheduler
from tests.conftest import BACKENDS
from tests.runtime.compare import HEIGHT, STEPS, WIDTH, assert_images_close
from tests.runtime.test_img2img import input_image

SIZE = {"height": HEIGHT, "width": WIDTH, "num_inference_steps": STEPS}


@pytest.fixture(scope="module")
def unclip_diffusers(unclip_model):
    from diffusers import StableUnCLIPImg2ImgPipeline

    pipe = StableUnCLIPImg2ImgPipeline.from_pretrained(unclip_model, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.original_scheduler = pipe.scheduler
    return pipe


def reference(pipe, scheduler, seed, n=1, **kwargs):
    pipe.scheduler = make_scheduler(scheduler, pipe.original_scheduler.config) if scheduler else pipe.original_scheduler
    gens = [torch.Generator("cpu").manual_seed(seed + i) for i in range(n)]
    return pipe(**kwargs, **SIZE, generator=gens).images


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("prompt", "noise_level", "scheduler"), [("", 0, None), ("a red house", 300, "euler_a")])
def test_variations_match_diffusers(unclip_pipelines, unclip_diffusers, backend, prompt, noise_level, scheduler):
    """With and without a prompt, noise levels 0 and 300, two images (one embedding draw, from image 0's seed)."""
    image = input_image(seed=3)
    ours = unclip_pipelines[backend].generate(
        prompt, image=image, noise_level=noise_level, **SIZE, seed=17, num_images_per_prompt=2, scheduler=scheduler
    )
    theirs = reference(
        unclip_diffusers, scheduler, 17, n=2, prompt=prompt, image=image, noise_level=noise_level,
        num_images_per_prompt=2,
    )  # fmt: skip
    assert_images_close(ours.images, theirs)
    assert ours.request.mode == "variation" and "CFG scale: 10," in ours.parameters[0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_negative_prompt_and_precomputed_image_embeds(unclip_pipelines, unclip_diffusers, backend):
    """A caller that already ran CLIP gives image_embeds: the same image as from the image, no vision encoder call."""
    pipe = unclip_pipelines[backend]
    image = input_image(seed=4)
    embeds = pipe.model.conditioner.part(ImageEmbedder).image_embeddings([pipe.request(image=image)])[0]
    vision = pipe.engines["image_encoder"]
    calls = []
    pipe.engines["image_encoder"] = lambda feeds: calls.append(feeds) or vision(feeds)
    pipe.engines["image_encoder"].spec = vision.spec
    try:
        ours = pipe.generate("a cat", negative_prompt="blurry", image_embeds=embeds[0], noise_level=100, **SIZE, seed=5)
    finally:
        pipe.engines["image_encoder"] = vision
    assert not calls
    theirs = reference(
        unclip_diffusers, None, 5, prompt="a cat", negative_prompt="blurry", image_embeds=embeds, noise_level=100
    )
    assert_images_close(ours.images, theirs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_requests_with_different_images_share_the_unet_calls(unclip_pipelines, backend):
    pipe = unclip_pipelines[backend]
    requests = [
        pipe.request(image=input_image(seed=6), noise_level=0, height=72, width=104, num_inference_steps=4, seed=8),
        pipe.request("a boat", image=input_image(seed=7).transpose(0), noise_level=250, height=72, width=104,
                     num_inference_steps=4, seed=9, num_images_per_prompt=2),
    ]  # fmt: skip
    assert len({pipe.batch_key(r) for r in requests}) == 1
    for request, result in zip(requests, pipe.run_batch(requests), strict=True):
        alone = pipe.run(request)
        for a, b in zip(result.images, alone.images, strict=True):
            assert np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max() <= 1


def test_bad_input_is_refused_before_any_engine_runs(unclip_pipelines):
    pipe = unclip_pipelines["onnxruntime"]
    with pytest.raises(ValueError, match=r"noise_level 1000 is outside 0\.\.999"):
        pipe.request(image=input_image(), noise_level=1000)
    with pytest.raises(ValueError, match="noise_level -1 must be at least 0"):
        pipe.request(image=input_image(), noise_level=-1)
    with pytest.raises(ValueError, match="Stable unCLIP 2.1 model runs variation, not txt2img: give an input image"):
        pipe.request("a cat")
    with pytest.raises(ValueError, match="inpainting needs a strength"):
        pipe.request(image=input_image(), mask_image=Image.new("L", (WIDTH, HEIGHT)))
    with pytest.raises(ValueError, match="image .* cannot be read as an image"):
        pipe.request(image=b"not an image")
    with pytest.raises(ValueError, match="give image or image_embeds, not both"):
        pipe.request(image=input_image(), image_embeds=torch.zeros(32))
    with pytest.raises(ValueError, match="image_embeds is 7 wide; this model's image embeddings are 32 wide"):
        pipe.request(image_embeds=torch.zeros(7))


def test_defaults_are_diffusers(unclip_pipelines):
    request = unclip_pipelines["onnxruntime"].request(image=input_image())
    assert (request.steps, request.guidance_scales, request.strength, request.prompts) == (20, (10.0,), None, ("",))
    assert (request.height, request.width) == (128, 128)  # the artifact's tuned size, not the image's


def test_manifest_keeps_what_variations_need(unclip_artifact):
    from sdrt.manifest import read_manifest

    manifest = read_manifest(unclip_artifact)
    assert manifest.family == "unclip" and set(manifest.components) == {
        "text_encoder", "image_encoder", "unet", "vae_decoder"
    }  # fmt: skip
    assert manifest.components["unet"].input_names[-1] == "class_labels"
    assert manifest.components["unet"].inputs[-1].shape == ("cfg_batch", 64)
    assert manifest.components["image_encoder"].inputs[0].shape == ("batch", 3, 32, 32)
    for part in ("feature_extractor", "image_normalizer", "image_noising_scheduler", "tokenizer", "scheduler"):
        assert (unclip_artifact / part).is_dir() and part in manifest.support
