"""SDXL base matches diffusers' StableDiffusionXL pipelines on the same weights: txt2img, img2img, inpainting."""

from __future__ import annotations

import pytest
import torch

from sdrt.schedulers import make_scheduler
from tests.conftest import BACKENDS, export, load_pipelines, write_model
from tests.runtime.compare import HEIGHT, STEPS, WIDTH, assert_images_close
from tests.runtime.test_img2img import input_image
from tests.runtime.test_inpaint import mask_image

SIZE = {"height": HEIGHT, "width": WIDTH}


def _generators(seed: int, n: int) -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(seed + i) for i in range(n)]


def reference(pipe, scheduler, seed, n=1, **kwargs):
    """diffusers' images for `kwargs`, with a fresh scheduler built from the model's own config."""
    pipe.scheduler = make_scheduler(scheduler, pipe.original_scheduler.config) if scheduler else pipe.original_scheduler
    per_prompt = kwargs.pop("num_images_per_prompt", 1)
    return pipe(**kwargs, num_images_per_prompt=per_prompt, generator=_generators(seed, n)).images


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scheduler", ["euler_a", "dpmpp_2m_karras", "heun"])
def test_txt2img_two_prompts_two_images_each(sdxl_pipelines, sdxl_diffusers, backend, scheduler):
    """A batch of 2 prompts x 2 images (UNet batch 8 over an engine of 4: chunked), empty negative prompts (zeros)."""
    prompts = ["an astronaut riding a horse", "a castle in the forest"]
    ours = sdxl_pipelines[backend].generate(
        prompts, **SIZE, num_inference_steps=STEPS, seed=10, num_images_per_prompt=2, scheduler=scheduler
    )
    theirs = reference(
        sdxl_diffusers["txt2img"], scheduler, 10, n=4, prompt=prompts, **SIZE, num_inference_steps=STEPS,
        guidance_scale=5.0, num_images_per_prompt=2,
    )  # fmt: skip
    assert_images_close(ours.images, theirs)
    assert ours.seeds == [10, 11, 12, 13] and "CFG scale: 5," in ours.parameters[0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_guidance_scales_and_negative_prompts_share_a_batch(sdxl_pipelines, sdxl_diffusers, backend):
    """Scales 7.0 and 1.0 in one UNet batch; one negative prompt given (encoded), one empty (zeros)."""
    ours = sdxl_pipelines[backend].generate(
        ["a cat on a table", "a dog on the beach", "a robot reading"],
        negative_prompt=["blurry, low quality", "", ""],
        guidance_scale=[7.0, 7.0, 1.0],
        **SIZE,
        num_inference_steps=STEPS,
        seed=20,
        scheduler="euler",
    )
    pipe = sdxl_diffusers["txt2img"]
    common = dict(**SIZE, num_inference_steps=STEPS)
    theirs = [
        *reference(pipe, "euler", 20, prompt="a cat on a table", negative_prompt="blurry, low quality",
                   guidance_scale=7.0, **common),
        *reference(pipe, "euler", 21, prompt="a dog on the beach", guidance_scale=7.0, **common),
        *reference(pipe, "euler", 22, prompt="a robot reading", guidance_scale=1.0, **common),
    ]  # fmt: skip
    assert_images_close(ours.images, theirs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_clip_skip_counts_from_the_penultimate_layer(sdxl_pipelines, sdxl_diffusers, backend):
    """diffusers' SDXL clip_skip=1 takes hidden_states[-3] of both encoders (its negative prompt stays at -2;
    with no negative prompt the unconditional rows are zeros in both)."""
    ours = sdxl_pipelines[backend].generate("a red car", **SIZE, num_inference_steps=STEPS, seed=3, clip_skip=1)
    theirs = reference(
        sdxl_diffusers["txt2img"], None, 3, prompt="a red car", **SIZE, num_inference_steps=STEPS,
        guidance_scale=5.0, clip_skip=1,
    )  # fmt: skip
    assert_images_close(ours.images, theirs)
    plain = sdxl_pipelines[backend].generate("a red car", **SIZE, num_inference_steps=STEPS, seed=3)
    assert plain.images[0].tobytes() != ours.images[0].tobytes()
    with pytest.raises(ValueError, match=r"clip_skip 2 is outside 0\.\.1 \(the text encoder has 3 layers\)"):
        sdxl_pipelines[backend].request("a red car", clip_skip=2)


def _hand_built_embeddings(pipe, chunks, weights):
    """Both encoders' penultimate states per chunk with web UI emphasis, concatenated; the first chunk's pooled."""
    from sdrt.conditioning.prompts import apply_emphasis

    states = []
    for encoder in (pipe.text_encoder, pipe.text_encoder_2):
        per_chunk = []
        for ids, w in zip(chunks[encoder is pipe.text_encoder_2], weights, strict=True):
            with torch.no_grad():
                hidden = encoder(torch.tensor([ids]), output_hidden_states=True).hidden_states[-2][0]
            per_chunk.append(apply_emphasis(hidden, torch.tensor(w)))
        states.append(torch.cat(per_chunk))
    with torch.no_grad():
        pooled = pipe.text_encoder_2(torch.tensor([chunks[1][0]])).text_embeds
    return torch.cat(states, dim=-1)[None], pooled


@pytest.mark.parametrize("backend", BACKENDS)
def test_long_prompt_with_emphasis(sdxl_pipelines, sdxl_diffusers, backend):
    """A 2-chunk prompt with weights: each encoder's chunks with emphasis, concatenated; pooled from chunk one."""
    from sdrt.conditioning.prompts import tokenize_prompt

    ours_pipe = sdxl_pipelines[backend]
    text = "a (castle:1.3) in the forest, " * 20 + "[fog]"
    tokenizers = [t for t, _ in ours_pipe.model.tokenizers.values()]
    tokenized = [tokenize_prompt(t, text) for t in tokenizers]
    assert tokenized[0].num_chunks == 2
    pipe = sdxl_diffusers["txt2img"]
    embeds, pooled = _hand_built_embeddings(pipe, [t.ids for t in tokenized], tokenized[0].weights)
    ours = ours_pipe.generate(text, **SIZE, num_inference_steps=STEPS, seed=4, scheduler="euler_a")
    theirs = reference(
        pipe, "euler_a", 4, prompt_embeds=embeds, pooled_prompt_embeds=pooled, **SIZE, num_inference_steps=STEPS,
        guidance_scale=5.0,
    )  # fmt: skip
    assert_images_close(ours.images, theirs)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("strength", "scheduler"), [(0.5, "euler_a"), (0.8, "dpmpp_2m")])
def test_img2img(sdxl_pipelines, sdxl_diffusers, backend, strength, scheduler):
    image = input_image()
    ours = sdxl_pipelines[backend].generate(
        "an oil painting", negative_prompt="blurry", image=image, strength=strength, num_inference_steps=STEPS,
        scheduler=scheduler, seed=31, num_images_per_prompt=2,
    )  # fmt: skip
    theirs = reference(
        sdxl_diffusers["img2img"], scheduler, 31, n=2, prompt="an oil painting", negative_prompt="blurry",
        image=image, strength=strength, num_inference_steps=STEPS, guidance_scale=5.0, num_images_per_prompt=2,
    )  # fmt: skip
    assert_images_close(ours.images, theirs)
    assert ours.timings.steps == int(STEPS * strength)


def test_img2img_default_strength_is_diffusers(sdxl_pipelines):
    request = sdxl_pipelines["onnxruntime"].request("a cat", image=input_image())
    assert request.strength == 0.3 and request.steps == 30 and request.guidance_scales == (5.0,)


@pytest.fixture(scope="module")
def sdxl_inpaint_pipelines(tmp_path_factory):
    model = write_model(tmp_path_factory, "sdxl-inpaint", variant="sdxl-inpaint")
    return model, load_pipelines(model, export(model, tmp_path_factory, "sdxl-inpaint"))


def _inpaint_reference(pipe, strength, scheduler, seed):
    return reference(
        pipe, scheduler, seed, prompt="a red door", negative_prompt="blurry", image=input_image(),
        mask_image=mask_image(), **SIZE, strength=strength, num_inference_steps=STEPS, guidance_scale=5.0,
    )  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("strength", "scheduler"), [(1.0, "euler_a"), (0.75, "ddim")])
def test_inpainting_with_a_4_channel_unet(sdxl_pipelines, sdxl_diffusers, backend, strength, scheduler):
    ours = sdxl_pipelines[backend].generate(
        "a red door", negative_prompt="blurry", image=input_image(), mask_image=mask_image(), strength=strength,
        num_inference_steps=STEPS, scheduler=scheduler, seed=41,
    )  # fmt: skip
    assert_images_close(ours.images, _inpaint_reference(sdxl_diffusers["inpaint"], strength, scheduler, 41))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("strength", "scheduler"), [(1.0, "euler_a"), (0.75, "dpmpp_2m")])
def test_inpainting_with_a_9_channel_unet(sdxl_inpaint_pipelines, backend, strength, scheduler):
    from diffusers import StableDiffusionXLInpaintPipeline

    model, pipelines = sdxl_inpaint_pipelines
    assert pipelines[backend].manifest.inpainting
    pipe = StableDiffusionXLInpaintPipeline.from_pretrained(model, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.original_scheduler = pipe.scheduler
    ours = pipelines[backend].generate(
        "a red door", negative_prompt="blurry", image=input_image(), mask_image=mask_image(), strength=strength,
        num_inference_steps=STEPS, scheduler=scheduler, seed=43,
    )  # fmt: skip
    assert_images_close(ours.images, _inpaint_reference(pipe, strength, scheduler, 43))


def test_sdxl_previews_use_sdxl_factors(sdxl_pipelines):
    from sdrt.families.sdxl import SDXL_LATENT_RGB

    assert sdxl_pipelines["onnxruntime"].family.latent_rgb == SDXL_LATENT_RGB
