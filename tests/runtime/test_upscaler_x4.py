"""The SD x4 upscaler family matches diffusers' StableDiffusionUpscalePipeline on the same weights and seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sdrt.manifest import read_manifest
from sdrt.schedulers import make_scheduler
from tests.runtime.compare import assert_images_close

BACKENDS = ("torch", "onnxruntime", "openvino")
LOW_RES = (26, 18)  # width, height: non-square, not a multiple of 4 (rounded down to 24x16, as diffusers does)
STEPS = 4


def low_res(seed: int = 0) -> Image.Image:
    """A small image with shapes in it: random colours, bicubically enlarged."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)).resize(LOW_RES, Image.Resampling.BICUBIC)


@pytest.fixture(scope="module")
def x4_diffusers(x4_model):
    from diffusers import StableDiffusionUpscalePipeline

    pipe = StableDiffusionUpscalePipeline.from_pretrained(x4_model, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.original_scheduler = pipe.scheduler
    return pipe


def reference(pipe, scheduler, seed, n=1, **kwargs):
    pipe.scheduler = make_scheduler(scheduler, pipe.original_scheduler.config) if scheduler else pipe.original_scheduler
    gens = [torch.Generator("cpu").manual_seed(seed + i) for i in range(n)]
    return pipe(**kwargs, num_inference_steps=STEPS, generator=gens).images


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("noise_level", "negative", "scheduler"), [(20, "", None), (150, "blurry, low quality", "dpmpp_2m")]
)
def test_upscales_as_diffusers(x4_pipelines, x4_diffusers, backend, noise_level, negative, scheduler):
    """Two noise levels, with and without a negative prompt, two images (one low-res noise draw, from image 0's
    generator), a non-square input: 4x its size rounded down to multiples of 4."""
    image = low_res(seed=1)
    ours = x4_pipelines[backend].generate(
        "a red house", image=image, noise_level=noise_level, negative_prompt=negative, num_inference_steps=STEPS,
        seed=5, num_images_per_prompt=2, scheduler=scheduler,
    )  # fmt: skip
    theirs = reference(
        x4_diffusers, scheduler, 5, n=2, prompt="a red house", image=image, noise_level=noise_level,
        negative_prompt=negative, num_images_per_prompt=2,
    )  # fmt: skip
    assert_images_close(ours.images, theirs, size=(64, 96))
    assert ours.request.height == 64 and ours.request.width == 96 and "CFG scale: 9," in ours.parameters[0]


def test_an_explicit_size_resizes_the_low_res_image(x4_pipelines, x4_diffusers):
    """height/width are the output's: the low-res image is resized (bicubic) to a quarter of them first."""
    image = low_res(seed=2)
    ours = x4_pipelines["onnxruntime"].generate(
        "a cat", image=image, height=96, width=64, num_inference_steps=STEPS, seed=3, guidance_scale=1.0
    )
    theirs = reference(x4_diffusers, None, 3, prompt="a cat", image=image.resize((16, 24), Image.Resampling.BICUBIC),
                       guidance_scale=1.0)  # fmt: skip
    assert_images_close(ours.images, theirs, size=(96, 64))


def test_requests_batch_and_each_gets_its_images_alone(x4_pipelines):
    pipe = x4_pipelines["onnxruntime"]
    a = pipe.request("a cat", image=low_res(1), noise_level=10, num_inference_steps=3, seed=1)
    b = pipe.request("a dog", image=low_res(2), noise_level=90, num_inference_steps=3, seed=2, guidance_scale=4.0)
    assert pipe.batch_key(a) == pipe.batch_key(b)  # images and noise levels differ per row
    together = pipe.run_batch([a, b])
    for request, result in zip((a, b), together, strict=True):
        alone = pipe.run(request).images[0]
        assert np.abs(np.asarray(alone, np.int16) - np.asarray(result.images[0], np.int16)).max() <= 1


def test_bad_requests_are_refused_before_any_work(x4_pipelines, x4_artifact):
    pipe = x4_pipelines["onnxruntime"]
    with pytest.raises(ValueError, match=r"x4 upscaler upscales an image: give the low-res image"):
        pipe.request("a cat")
    with pytest.raises(ValueError, match=r"noise_level 351 is over this model's max_noise_level 350"):
        pipe.request("a cat", image=low_res(), noise_level=351)
    with pytest.raises(ValueError, match=r"strength"):
        pipe.request("a cat", image=low_res(), strength=0.5)
    with pytest.raises(ValueError, match=r"width 512 is outside the artifact's range 64..256"):
        pipe.request("a cat", image=low_res().resize((128, 64)))  # 4x: 512 output pixels
    manifest = read_manifest(x4_artifact)
    assert manifest.family == "upscaler_x4" and manifest.ranges.latent_factor == 4
    assert manifest.extras == {"max_noise_level": 350} and manifest.vae_scaling_factor == pytest.approx(0.08333)
    assert set(manifest.components) == {"text_encoder", "unet", "vae_decoder"} and manifest.support[-1] == (
        "low_res_scheduler"
    )
