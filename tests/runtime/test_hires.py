"""The hires fix equals the same two passes done by hand with diffusers: generate, upscale, img2img."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sdrt import Hires
from sdrt.schedulers import make_scheduler
from tests.conftest import BACKENDS
from tests.runtime.compare import assert_images_close

FIRST = {"height": 64, "width": 72, "num_inference_steps": 4}
SEED, NEGATIVE, SCHEDULER = 11, "blurry", "euler_a"
# hires fix compared within 1/255 of the hand-made passes
BOUND = 1


@pytest.fixture(scope="module")
def img2img(diffusers_pipe):
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = StableDiffusionImg2ImgPipeline(**diffusers_pipe.components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _by_hand(diffusers_pipe, img2img, prompt: str, hires: Hires, size: tuple[int, int], seed: int = SEED):
    """First pass with diffusers, upscale as the web UI (torch interpolate or PIL), then diffusers' img2img."""
    config = diffusers_pipe.original_scheduler.config
    diffusers_pipe.scheduler = make_scheduler(SCHEDULER, config)
    first = diffusers_pipe(
        prompt, negative_prompt=NEGATIVE, **FIRST, guidance_scale=7.5, output_type="latent" if hires.latent else "pil",
        generator=[torch.Generator("cpu").manual_seed(seed)],
    ).images  # fmt: skip
    if hires.latent:
        mode, antialias = {"Latent": ("bilinear", False), "Latent (nearest)": ("nearest", False)}.get(
            hires.upscaler, ("bicubic", True)
        )
        source = F.interpolate(first, size=(size[0] // 8, size[1] // 8), mode=mode, antialias=antialias)
    else:
        filters = {"Lanczos": Image.Resampling.LANCZOS, "Nearest": Image.Resampling.NEAREST}
        # resized to the upscale's 96x108, then cropped to whole latents (13 columns), as the latents are
        upscaled = (96, 108) if size == (96, 104) else size
        source = first[0].resize((upscaled[1], upscaled[0]), filters[hires.upscaler]).crop((0, 0, size[1], size[0]))
    img2img.scheduler = make_scheduler(SCHEDULER, config)
    return img2img(
        hires.prompt or prompt, image=source, negative_prompt=NEGATIVE, strength=hires.strength,
        num_inference_steps=hires.steps or FIRST["num_inference_steps"], guidance_scale=7.5,
        generator=[torch.Generator("cpu").manual_seed(seed)],
    ).images  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("upscaler", ["Latent", "Latent (nearest)", "Latent (bicubic antialiased)", "Lanczos"])
def test_hires_equals_the_two_passes_by_hand(pipelines, diffusers_pipe, img2img, backend, upscaler):
    hires = Hires(scale=1.5, upscaler=upscaler, steps=3, strength=0.6)
    ours = pipelines[backend].generate(
        "a castle on a hill", negative_prompt=NEGATIVE, **FIRST, seed=SEED, scheduler=SCHEDULER, hires=hires
    )
    theirs = _by_hand(diffusers_pipe, img2img, "a castle on a hill", hires, (96, 104))
    assert_images_close(ours.images, theirs, bound=BOUND, size=(96, 104))
    text = ours.parameters[0]
    assert "Size: 72x64" in text and "Hires upscale: 1.5" in text and f"Hires upscaler: {upscaler}" in text
    assert "Denoising strength: 0.6" in text and "Hires steps: 3" in text
    assert ours.timings.steps == 4 + 1  # both passes: 4 steps, then int(3 * 0.6)


def test_hires_prompt_and_several_images(pipelines, diffusers_pipe, img2img):
    pipe = pipelines["torch"]
    hires = Hires(scale=1.5, strength=0.5, prompt="a sharp castle")
    ours = pipe.generate(
        "a castle", negative_prompt=NEGATIVE, **FIRST, seed=SEED, scheduler=SCHEDULER, hires=hires,
        num_images_per_prompt=2,
    )  # fmt: skip
    for i, image in enumerate(ours.images):
        theirs = _by_hand(diffusers_pipe, img2img, "a castle", hires, (96, 104), seed=SEED + i)
        assert_images_close([image], theirs, bound=BOUND, size=(96, 104))
    assert ours.seeds == [SEED, SEED + 1] and "Hires prompt: a sharp castle" in ours.parameters[0]


def test_hires_strength_zero_only_upscales(pipelines):
    pipe = pipelines["onnxruntime"]
    upscaled = pipe.generate("a cat", **FIRST, seed=3, hires=Hires(scale=2.0, upscaler="Nearest", strength=0.0))
    plain = pipe.generate("a cat", **FIRST, seed=3)
    expected = plain.images[0].resize((144, 128), Image.Resampling.NEAREST)
    assert np.array_equal(np.asarray(upscaled.images[0]), np.asarray(expected))


def test_hires_target_as_the_web_ui_computes_it():
    # hr_resize_x / hr_resize_y: one keeps the aspect ratio; both crop the latents, centred
    assert Hires(scale=2.0).geometry(64, 72, 8).size == (128, 144)
    assert Hires(width=144).geometry(64, 72, 8).size == (128, 144)
    assert Hires(height=96).geometry(64, 72, 8).size == (96, 104)  # 96 * 72 // 64 = 108 -> 13 latents
    crop = Hires(width=96, height=128).geometry(64, 72, 8)  # upscaled to 128x144, then 6 latent columns cut
    assert crop.upscaled == (128, 144) and crop.size == (128, 96) and crop.crop == (0, 3)


def test_hires_requests_batch_and_each_gets_its_images_alone(pipelines):
    pipe = pipelines["onnxruntime"]
    hires = Hires(scale=1.5, strength=0.5, steps=2)
    a = pipe.request("a dog", **FIRST, seed=1, hires=hires)
    b = pipe.request("[a cat:a fox:1]", **FIRST, seed=2, hires=hires)
    plain = pipe.request("a bird", **FIRST, seed=3)
    other = pipe.request("a dog", **FIRST, seed=4, hires=Hires(scale=2.0, strength=0.4))
    # a hires request's first pass is a plain text-to-image pass: it batches with plain requests and other hires
    # settings alike; its second pass is a request of its own, batched by its own key
    assert pipe.batch_key(a) == pipe.batch_key(b) == pipe.batch_key(plain) == pipe.batch_key(other)
    assert pipe.batch_key(a.next_pass) != pipe.batch_key(other.next_pass)
    together = pipe.run_batch([a, plain, b, other])
    for request, result in zip((a, plain, b, other), together, strict=True):
        alone = pipe.run(request)
        assert len(result.images) == 1 and result.images[0].size == alone.images[0].size
        assert np.abs(np.asarray(alone.images[0], np.int16) - np.asarray(result.images[0], np.int16)).max() <= 1


@pytest.mark.parametrize(
    ("hires", "message"),
    [
        (Hires(scale=4.0), r"hires: the second pass's height 256 .*|width 288 is outside the artifact's range"),
        (dict(upscaler="R-ESRGAN 4x+"), r"not served here; served: Latent, .*Lanczos, Nearest .*ESRGAN"),
        (dict(scale=0.5), r"hires scale 0.5 is outside 1..8"),
        (dict(strength=1.5), r"hires strength 1.5 is outside 0..1"),
        (dict(steps=True), r"hires steps True is not a positive integer"),
    ],
)
def test_bad_hires_is_refused_before_any_work(pipelines, hires, message):
    pipe = pipelines["onnxruntime"]
    with pytest.raises(ValueError, match=message):
        pipe.request("a cat", **FIRST, hires=hires if isinstance(hires, Hires) else Hires(**hires))
    with pytest.raises(ValueError, match="hires fixes text-to-image"):
        pipe.request("a cat", image=Image.new("RGB", (64, 64)), hires=Hires())


@pytest.mark.parametrize("name", ["esrgan-original", "realesrgan-x2plus"])
def test_hires_with_a_gan_upscaler_equals_its_passes_by_hand(pipelines, diffusers_pipe, img2img, upscaler_dir, name):
    """hr_upscaler names a file of the upscaler directory: the first pass's image is upscaled by it as the web UI
    resizes with an upscaler (its passes, then Lanczos to the 96x108 upscale), cropped, then denoised again."""
    from sdrt import Pipeline
    from sdrt.upscalers.library import UpscalerLibrary

    library = UpscalerLibrary(upscaler_dir)
    pipe = Pipeline(pipelines["onnxruntime"].model, upscalers=library)
    hires = Hires(scale=1.5, upscaler=name, steps=3, strength=0.6)
    ours = pipe.generate("a castle", negative_prompt=NEGATIVE, **FIRST, seed=SEED, scheduler=SCHEDULER, hires=hires)
    # by hand from sdrt's own first pass (its parity with diffusers is tested above; a random GAN's gain would
    # turn that pass's 1/255 rounding differences into more): upscale, crop, then diffusers' img2img
    first = pipe.generate("a castle", negative_prompt=NEGATIVE, **FIRST, seed=SEED, scheduler=SCHEDULER).images[0]
    source = library.get(name).resize(first, 108, 96).crop((0, 0, 104, 96))
    img2img.scheduler = make_scheduler(SCHEDULER, diffusers_pipe.original_scheduler.config)
    theirs = img2img(
        "a castle", image=source, negative_prompt=NEGATIVE, strength=0.6, num_inference_steps=3, guidance_scale=7.5,
        generator=[torch.Generator("cpu").manual_seed(SEED)],
    ).images  # fmt: skip
    assert_images_close(ours.images, theirs, bound=BOUND, size=(96, 104))
    assert f"Hires upscaler: {name}" in ours.parameters[0]
    with pytest.raises(ValueError, match=r"hires upscaler 'nope' is not served here; served: .*Nearest, compact-x4"):
        pipe.request("a cat", **FIRST, hires=Hires(upscaler="nope"))
