"""Seamless tiling equals diffusers' UNet and VAE with every Conv2d padding circularly, on every CPU backend."""

from __future__ import annotations

from contextlib import ExitStack

import numpy as np
import pytest
import torch

from sdrt import Pipeline
from sdrt.engines.base import circular_padding
from sdrt.manifest import read_manifest
from sdrt.schedulers import make_scheduler
from tests.runtime.compare import HEIGHT, STEPS, WIDTH, assert_images_close
from tests.runtime.test_img2img import input_image

SETTINGS = {"height": HEIGHT, "width": WIDTH, "num_inference_steps": STEPS}


@pytest.fixture(scope="module")
def seamless_pipelines(pipelines, artifact):
    return {**pipelines, "openvino": Pipeline.load(artifact, backend="openvino")}


def _circular(diffusers_pipe, img2img: bool = False, **kwargs):
    """diffusers' pipeline with its UNet's and VAE's convolutions padding circularly (the seamless recipe)."""
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = StableDiffusionImg2ImgPipeline(**diffusers_pipe.components) if img2img else diffusers_pipe
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = make_scheduler("euler_a", diffusers_pipe.original_scheduler.config)
    with ExitStack() as stack:
        stack.enter_context(circular_padding(pipe.unet))
        stack.enter_context(circular_padding(pipe.vae))
        return pipe(**kwargs, generator=[torch.Generator().manual_seed(9)]).images


@pytest.mark.parametrize("backend", ["torch", "onnxruntime", "openvino"])
def test_tiling_equals_diffusers_with_circular_convolutions(seamless_pipelines, diffusers_pipe, backend):
    pipe = seamless_pipelines[backend]
    ours = pipe.generate("a brick wall", **SETTINGS, seed=9, scheduler="euler_a", tiling=True)
    theirs = _circular(diffusers_pipe, prompt="a brick wall", **SETTINGS, guidance_scale=7.5)
    assert_images_close(ours.images, theirs)
    plain = pipe.generate("a brick wall", **SETTINGS, seed=9, scheduler="euler_a")
    assert np.abs(np.asarray(plain.images[0], np.int16) - np.asarray(ours.images[0], np.int16)).max() > 8


def test_img2img_tiling_encodes_circularly_too(seamless_pipelines, diffusers_pipe):
    image = input_image(WIDTH, HEIGHT, seed=2)
    ours = seamless_pipelines["onnxruntime"].generate(
        "a brick wall", image=image, strength=0.7, **SETTINGS, seed=9, scheduler="euler_a", tiling=True
    )
    theirs = _circular(diffusers_pipe, img2img=True, prompt="a brick wall", image=image, strength=0.7,
                       num_inference_steps=STEPS, guidance_scale=7.5)  # fmt: skip
    assert_images_close(ours.images, theirs)


def test_tiling_batches_apart_and_needs_the_graphs(seamless_pipelines, artifact, x4_pipelines):
    pipe = seamless_pipelines["onnxruntime"]
    assert pipe.batch_key(pipe.request("a", tiling=True)) != pipe.batch_key(pipe.request("a"))
    assert set(read_manifest(artifact).variants["tiling"]) == {"unet", "vae_decoder", "vae_encoder"}
    with pytest.raises(ValueError, match=r"tiling needs circular-padding graphs.*export it again with --tiling"):
        x4_pipelines["onnxruntime"].request("a", image=input_image(24, 16), tiling=True)
