"""Sampler names map to the diffusers classes and options users expect."""

from __future__ import annotations

import diffusers
import pytest

from sdrt.runtime.schedulers import SAMPLERS, make_scheduler, sampler_label

# as read from a model's scheduler/scheduler_config.json, which names its class
BASE = {
    "_class_name": "PNDMScheduler",
    **diffusers.PNDMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, skip_prk_steps=True
    ).config,
}


@pytest.mark.parametrize(
    "name, cls, options",
    [
        ("ddim", diffusers.DDIMScheduler, {}),
        ("pndm", diffusers.PNDMScheduler, {"skip_prk_steps": True}),
        ("lms", diffusers.LMSDiscreteScheduler, {"use_karras_sigmas": False}),
        ("euler", diffusers.EulerDiscreteScheduler, {"use_karras_sigmas": False}),
        ("euler_a", diffusers.EulerAncestralDiscreteScheduler, {}),
        (
            "dpmpp_2m",
            diffusers.DPMSolverMultistepScheduler,
            {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": False},
        ),
        (
            "dpmpp_2m_karras",
            diffusers.DPMSolverMultistepScheduler,
            {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True},
        ),
        ("unipc", diffusers.UniPCMultistepScheduler, {"use_karras_sigmas": False}),
    ],
)
def test_mapping(name, cls, options):
    scheduler = make_scheduler(name, BASE)
    assert type(scheduler) is cls
    for key, value in options.items():
        assert scheduler.config[key] == value
    assert scheduler.config["beta_schedule"] == "scaled_linear"  # the model's training schedule is kept


def test_model_karras_setting_does_not_leak_into_plain_samplers():
    karras_config = dict(make_scheduler("dpmpp_2m_karras", BASE).config)
    assert make_scheduler("unipc", karras_config).config["use_karras_sigmas"] is False
    assert make_scheduler("euler", karras_config).config["use_karras_sigmas"] is False


def test_default_is_the_models_own_and_fresh_each_time():
    a, b = make_scheduler(None, BASE), make_scheduler(None, BASE)
    assert type(a) is diffusers.PNDMScheduler and a is not b
    assert sampler_label(None, BASE) == "PLMS"
    assert [sampler_label(n, BASE) for n in SAMPLERS][-2:] == ["DPM++ 2M Karras", "UniPC"]
