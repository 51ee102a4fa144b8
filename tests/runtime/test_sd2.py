"""SD 2.x: OpenCLIP-style text encoder (GELU), linear-projection attention with fp32 upcast, v-prediction."""

from __future__ import annotations

import pytest
import torch

from sdrt.schedulers import make_scheduler
from tests.conftest import BACKENDS, export, load_pipelines
from tests.runtime.compare import HEIGHT, STEPS, WIDTH, assert_images_close


@pytest.fixture(scope="module")
def sd2_pipelines(sd2_model, tmp_path_factory):
    # no opt_size: the export picks the model's native size (768), clamped into 64..256
    return load_pipelines(sd2_model, export(sd2_model, tmp_path_factory, "sd2", opt_size=None))


@pytest.fixture(scope="module")
def sd2_diffusers(sd2_model):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(sd2_model, safety_checker=None, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.original_scheduler = pipe.scheduler
    return pipe


def test_manifest_records_sd2_facts(sd2_pipelines):
    manifest = sd2_pipelines["onnxruntime"].manifest
    assert manifest.family == "sd2" and manifest.prediction_type == "v_prediction"
    assert manifest.components["unet"].attributes["upcast_attention"] is True
    assert manifest.ranges.opt_size == 256  # the model's native size (96 latents = 768 px), clamped into 64..256


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scheduler", [None, "euler", "dpmpp_2m_karras", "euler_a"])
def test_v_prediction_model_matches_diffusers(sd2_pipelines, sd2_diffusers, backend, scheduler):
    prompt, negative = "a futuristic city at night", "blurry"
    ours = sd2_pipelines[backend].generate(
        prompt, negative_prompt=negative, height=HEIGHT, width=WIDTH, num_inference_steps=STEPS,
        scheduler=scheduler, seed=4,
    )  # fmt: skip
    pipe = sd2_diffusers
    config = pipe.original_scheduler.config
    pipe.scheduler = make_scheduler(scheduler, config) if scheduler else pipe.original_scheduler
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    theirs = pipe(
        prompt, negative_prompt=negative, height=HEIGHT, width=WIDTH, num_inference_steps=STEPS,
        generator=[torch.Generator("cpu").manual_seed(4)],
    ).images  # fmt: skip
    assert_images_close(ours.images, theirs)
