"""Image-to-image matches diffusers' StableDiffusionImg2ImgPipeline on the same weights, seed and strength."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sdrt.schedulers import make_scheduler
from tests.conftest import BACKENDS
from tests.runtime.compare import HEIGHT, STEPS, WIDTH, assert_images_close


def input_image(width: int = WIDTH, height: int = HEIGHT, seed: int = 0) -> Image.Image:
    """A smooth colour field with some texture: content the VAE encoder sees as an image, not flat noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    rgb = np.stack([np.sin(6 * x + 1), np.cos(5 * y), np.sin(4 * (x + y))], axis=-1) * 0.4 + 0.5
    rgb += rng.normal(0, 0.05, rgb.shape)
    return Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8))


@pytest.fixture(scope="module")
def img2img_pipe(diffusers_pipe):
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = StableDiffusionImg2ImgPipeline(**diffusers_pipe.components, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _reference(pipe, original_config, image, prompt, negative, strength, scheduler, seed, n=1):
    pipe.scheduler = make_scheduler(scheduler, original_config)
    return pipe(
        prompt,
        image=image,
        strength=strength,
        negative_prompt=negative,
        num_inference_steps=STEPS,
        guidance_scale=7.5,
        num_images_per_prompt=n,
        generator=[torch.Generator("cpu").manual_seed(seed + i) for i in range(n)],
    ).images


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("strength", "scheduler"), [(0.5, "euler_a"), (0.8, "dpmpp_2m"), (0.8, "ddim")])
def test_img2img_matches_diffusers(pipelines, diffusers_pipe, img2img_pipe, backend, strength, scheduler):
    image = input_image()
    prompt, negative = "an old castle in the forest", "blurry"
    ours = pipelines[backend].generate(
        prompt, negative_prompt=negative, image=image, strength=strength, num_inference_steps=STEPS,
        scheduler=scheduler, seed=31, num_images_per_prompt=2,
    )  # fmt: skip
    theirs = _reference(
        img2img_pipe, diffusers_pipe.original_scheduler.config, image, prompt, negative, strength, scheduler, 31, n=2
    )
    assert_images_close(ours.images, theirs)
    assert ours.timings.steps == int(STEPS * strength) and ours.timings.vae_encode > 0
    assert f"Denoising strength: {strength:g}" in ours.parameters[0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_size_comes_from_the_image_rounded_down_to_a_multiple_of_8(pipelines, diffusers_pipe, img2img_pipe, backend):
    image = input_image(width=WIDTH + 6, height=HEIGHT + 5)  # 110x77 -> 104x72, as diffusers' processor rounds
    ours = pipelines[backend].generate("a lake at sunset", image=image, num_inference_steps=STEPS, seed=3)
    theirs = _reference(img2img_pipe, diffusers_pipe.original_scheduler.config, image, "a lake at sunset", None, 0.8,
                        None, 3)  # fmt: skip
    assert ours.request.strength == 0.8  # diffusers' default
    assert_images_close(ours.images, theirs)


def test_image_of_another_size_is_resized_to_the_requested_size(pipelines):
    result = pipelines["onnxruntime"].generate(
        "a cat", image=input_image(width=50, height=90), height=64, width=128, num_inference_steps=4, seed=0
    )
    assert result.images[0].size == (128, 64)


def test_img2img_is_reproducible_per_seed_whatever_the_batch(pipelines):
    pipe, image = pipelines["onnxruntime"], input_image()
    kwargs = dict(image=image, strength=0.6, num_inference_steps=STEPS, scheduler="euler_a")
    batch = pipe.generate(["a cat", "a dog"], seed=10, **kwargs).images
    alone = pipe.generate("a dog", seed=11, **kwargs).images[0]
    assert np.abs(np.asarray(batch[1], dtype=np.int16) - np.asarray(alone, dtype=np.int16)).max() <= 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strength": 1.5}, r"strength 1.5 is outside 0..1"),
        ({"strength": -0.1}, r"strength -0.1 is outside 0..1"),
        ({"strength": 0, "num_inference_steps": 5}, r"strength 0 runs no step"),
        ({"image": b"not an image"}, r"image 12 bytes cannot be read as an image"),
        ({"image": "/nonexistent/input.png"}, r"image /nonexistent/input.png does not exist"),
        ({"image": None, "strength": 0.5}, r"strength 0.5 needs an input image"),
        ({"image": None, "mask_image": "MASK"}, r"mask_image needs an image"),
        ({"mask_image": "SMALL_MASK"}, r"mask_image is 32x32 but image is 104x72"),
        ({"image": 42}, r"image must be a PIL image, a file path or image bytes, got int"),
    ],
)
def test_bad_image_inputs_are_refused_with_the_field_named(pipelines, kwargs, message):
    kwargs = {"image": input_image(), "num_inference_steps": 4, **kwargs}
    masks = {"MASK": Image.new("L", (WIDTH, HEIGHT), 255), "SMALL_MASK": Image.new("L", (32, 32), 255)}
    if isinstance(kwargs.get("mask_image"), str):
        kwargs["mask_image"] = masks[kwargs["mask_image"]]
    with pytest.raises(ValueError, match=message):
        pipelines["onnxruntime"].generate("a cat", seed=0, **kwargs)


def test_unreadable_image_file_is_refused(pipelines, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    with pytest.raises(ValueError, match=r"broken.png cannot be read as an image"):
        pipelines["onnxruntime"].generate("a cat", image=bad, num_inference_steps=4, seed=0)


def test_a_strength_below_one_step_still_runs_one_step(pipelines):
    # the web UI runs one step where int(steps * strength) is 0 (diffusers refuses such a request)
    pipe = pipelines["onnxruntime"]
    result = pipe.generate("a cat", image=input_image(), num_inference_steps=1, strength=0.75, seed=1)
    assert result.timings.steps == 1 and result.request.steps_run == 1


def test_an_input_image_outside_the_range_names_width_and_height(pipelines):
    pipe = pipelines["onnxruntime"]
    big = input_image(320, 96)  # the session artifact takes 64..256 px
    with pytest.raises(ValueError, match=r"input image is 320x96, outside .*--width/--height\) to resize it"):
        pipe.generate("a cat", image=big, num_inference_steps=2, seed=0)
    assert pipe.generate("a cat", image=big, width=128, height=64, num_inference_steps=2, seed=0).images[0].size == (
        128,
        64,
    )
