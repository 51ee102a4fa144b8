"""Inpainting matches diffusers' StableDiffusionInpaintPipeline: a 9-channel UNet, or a 4-channel one blended."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sdrt.schedulers import make_scheduler
from tests.conftest import BACKENDS, export, load_pipelines
from tests.runtime.compare import HEIGHT, STEPS, WIDTH, assert_images_close
from tests.runtime.test_img2img import input_image


def mask_image() -> Image.Image:
    """White (repaint) over a rectangle in the middle, black (keep) elsewhere."""
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    mask[16:56, 24:80] = 255
    return Image.fromarray(mask, mode="L")


@pytest.fixture(scope="module")
def inpaint_pipelines(inpaint_model, tmp_path_factory):
    return load_pipelines(inpaint_model, export(inpaint_model, tmp_path_factory, "inpaint"))


def _diffusers_inpaint(components):
    from diffusers import StableDiffusionInpaintPipeline

    pipe = StableDiffusionInpaintPipeline(**components, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _reference(pipe, config, prompt, strength, scheduler, seed):
    pipe.scheduler = make_scheduler(scheduler, config)
    return pipe(
        prompt,
        image=input_image(),
        mask_image=mask_image(),
        height=HEIGHT,
        width=WIDTH,
        strength=strength,
        negative_prompt="blurry",
        num_inference_steps=STEPS,
        guidance_scale=7.5,
        generator=[torch.Generator("cpu").manual_seed(seed)],
    ).images


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("strength", "scheduler"), [(1.0, "euler_a"), (1.0, "ddim"), (0.75, "dpmpp_2m")])
def test_inpainting_unet_matches_diffusers(inpaint_pipelines, inpaint_model, backend, strength, scheduler):
    from diffusers import StableDiffusionPipeline

    loaded = StableDiffusionPipeline.from_pretrained(inpaint_model, safety_checker=None, local_files_only=True)
    pipe = _diffusers_inpaint(loaded.components)
    ours = inpaint_pipelines[backend].generate(
        "a cat on a table", negative_prompt="blurry", image=input_image(), mask_image=mask_image(),
        strength=strength, num_inference_steps=STEPS, scheduler=scheduler, seed=21,
    )  # fmt: skip
    theirs = _reference(pipe, loaded.scheduler.config, "a cat on a table", strength, scheduler, 21)
    assert_images_close(ours.images, theirs)
    assert inpaint_pipelines[backend].manifest.inpainting


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("strength", "scheduler"), [(1.0, "euler_a"), (0.75, "ddim")])
def test_ordinary_unet_inpaints_by_blending_like_diffusers(pipelines, diffusers_pipe, backend, strength, scheduler):
    pipe = _diffusers_inpaint({k: v for k, v in diffusers_pipe.components.items() if k != "scheduler"}
                              | {"scheduler": diffusers_pipe.original_scheduler})  # fmt: skip
    ours = pipelines[backend].generate(
        "a cat on a table", negative_prompt="blurry", image=input_image(), mask_image=mask_image(),
        strength=strength, num_inference_steps=STEPS, scheduler=scheduler, seed=8,
    )  # fmt: skip
    theirs = _reference(pipe, diffusers_pipe.original_scheduler.config, "a cat on a table", strength, scheduler, 8)
    assert_images_close(ours.images, theirs)


def test_inpainting_model_refuses_text_to_image(inpaint_pipelines):
    with pytest.raises(ValueError, match=r"inpainting UNet.*give image and mask_image"):
        inpaint_pipelines["onnxruntime"].generate("a cat", height=64, width=64, num_inference_steps=2, seed=0)


def test_inpainting_manifest_records_nine_channels(inpaint_pipelines):
    manifest = inpaint_pipelines["onnxruntime"].manifest
    assert manifest.inpainting and manifest.components["unet"].attributes["in_channels"] == 9
    assert manifest.components["unet"].inputs[0].shape[1] == 9
