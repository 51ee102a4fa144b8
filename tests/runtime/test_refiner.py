"""SDXL base + refiner (diffusers' ensemble of expert denoisers) and the refiner alone, against diffusers."""

from __future__ import annotations

import pytest
import torch

from sdrt import Pipeline
from sdrt.schedulers import make_scheduler
from tests.conftest import BACKENDS
from tests.runtime.compare import HEIGHT, WIDTH, assert_images_close
from tests.runtime.test_img2img import input_image

SIZE = {"height": HEIGHT, "width": WIDTH}
STEPS = 10  # enough for a switch at 0.7-0.8 to leave both experts several steps


def _ensemble(sdxl_diffusers, prompt, negative, switch, scheduler, seed, n=1, **refiner_kwargs):
    """diffusers' recipe: the base to denoising_end=F as latents, the refiner from denoising_start=F, one generator."""
    base, refiner = sdxl_diffusers["txt2img"], sdxl_diffusers["refiner"]
    base.scheduler = make_scheduler(scheduler, base.original_scheduler.config)
    refiner.scheduler = make_scheduler(scheduler, refiner.original_scheduler.config)
    generators = [torch.Generator("cpu").manual_seed(seed + i) for i in range(n)]
    common = dict(prompt=prompt, negative_prompt=negative, num_inference_steps=STEPS, guidance_scale=5.0)
    latents = base(
        **common, **SIZE, denoising_end=switch, output_type="latent", num_images_per_prompt=n, generator=generators
    ).images
    return refiner(
        **common, image=latents, denoising_start=switch, num_images_per_prompt=n, generator=generators,
        **refiner_kwargs,
    ).images  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("switch", "scheduler"), [(0.7, "euler_a"), (0.8, "dpmpp_2m"), (0.75, "heun")])
def test_base_then_refiner_matches_diffusers_chained(sdxl_pipelines, sdxl_diffusers, backend, switch, scheduler):
    """Heun is second order: the refiner's window gets one more timestep so no step is cut in half."""
    ours = sdxl_pipelines[backend].generate(
        "a lighthouse at dusk", negative_prompt="blurry", **SIZE, num_inference_steps=STEPS, seed=60,
        num_images_per_prompt=2, scheduler=scheduler, refiner_switch_at=switch,
    )  # fmt: skip
    theirs = _ensemble(sdxl_diffusers, "a lighthouse at dusk", "blurry", switch, scheduler, 60, n=2)
    assert_images_close(ours.images, theirs)
    assert f"Refiner switch at: {switch:g}" in ours.parameters[0] and "Refiner: " in ours.parameters[0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_aesthetic_scores_are_the_refiners_conditioning(sdxl_pipelines, sdxl_diffusers, backend):
    ours = sdxl_pipelines[backend].generate(
        "a lighthouse at dusk", **SIZE, num_inference_steps=STEPS, seed=61, scheduler="euler",
        refiner_switch_at=0.6, aesthetic_score=8.0, negative_aesthetic_score=1.0,
    )  # fmt: skip
    theirs = _ensemble(
        sdxl_diffusers,
        "a lighthouse at dusk",
        None,
        0.6,
        "euler",
        61,
        aesthetic_score=8.0,
        negative_aesthetic_score=1.0,
    )
    assert_images_close(ours.images, theirs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_refiner_alone_refines_an_image(sdxl_refiner_model, sdxl_refiner_artifact, sdxl_diffusers, backend):
    from tests.conftest import RANGES

    path = sdxl_refiner_model if backend == "torch" else sdxl_refiner_artifact
    pipe = Pipeline.load(path, backend=backend, ranges=RANGES)
    image = input_image()
    ours = pipe.generate("a sharp photo", negative_prompt="blurry", image=image, num_inference_steps=STEPS, seed=70)
    assert ours.request.strength == 0.3  # diffusers' StableDiffusionXLImg2ImgPipeline default
    refiner = sdxl_diffusers["refiner"]
    refiner.scheduler = refiner.original_scheduler
    theirs = refiner(
        "a sharp photo", negative_prompt="blurry", image=image, strength=0.3, num_inference_steps=STEPS,
        guidance_scale=5.0, generator=[torch.Generator("cpu").manual_seed(70)],
    ).images  # fmt: skip
    assert_images_close(ours.images, theirs)
    with pytest.raises(
        ValueError, match="a Stable Diffusion XL refiner model runs img2img, not txt2img: give an input image"
    ):
        pipe.request("a sharp photo")


def test_refiner_requests_are_checked_before_any_engine_runs(sdxl_pipelines, pipelines):
    pipe = sdxl_pipelines["onnxruntime"]
    with pytest.raises(ValueError, match=r"refiner_switch_at 1\.5 is outside 0 < F < 1"):
        pipe.request("a cat", refiner_switch_at=1.5)
    # 2 Euler steps run at timesteps 501 and 1: a switch at 0.3 (timestep 700) leaves the base none of them
    with pytest.raises(ValueError, match="refiner_switch_at 0.3 leaves the base no step of 2"):
        pipe.request("a cat", num_inference_steps=2, refiner_switch_at=0.3)
    with pytest.raises(ValueError, match="inpainting runs on the base alone"):
        pipe.request("a cat", image=input_image(), mask_image=input_image().convert("L"), refiner_switch_at=0.8)
    with pytest.raises(ValueError, match="refiner_switch_at needs a refiner"):
        pipelines["onnxruntime"].request("a cat", refiner_switch_at=0.8)
    with pytest.raises(
        ValueError, match="a Stable Diffusion XL refiner model cannot refine a Stable Diffusion 1.x model"
    ):
        Pipeline(pipelines["onnxruntime"].model, refiner=pipe.refiner)


def test_with_and_without_the_refiner_batch_apart(sdxl_pipelines):
    pipe = sdxl_pipelines["onnxruntime"]
    plain, refined = pipe.request("a cat", seed=1), pipe.request("a cat", seed=2, refiner_switch_at=0.8)
    assert pipe.batch_key(plain) != pipe.batch_key(refined)
    assert pipe.batch_key(refined) == pipe.batch_key(pipe.request("a dog", seed=3, refiner_switch_at=0.8))
    assert pipe.batch_key(refined) != pipe.batch_key(pipe.request("a dog", seed=3, refiner_switch_at=0.7))
