"""Sampler names map to the diffusers classes and options users expect."""

from __future__ import annotations

import diffusers
import numpy as np
import pytest

from sdrt.schedulers import (
    SAMPLERS,
    canonical_sampler,
    check_sampler,
    make_scheduler,
    sampler_choices,
    sampler_label,
)

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
        ("lms_karras", diffusers.LMSDiscreteScheduler, {"use_karras_sigmas": True}),
        ("euler_karras", diffusers.EulerDiscreteScheduler, {"use_karras_sigmas": True}),
        ("heun", diffusers.HeunDiscreteScheduler, {"use_karras_sigmas": False}),
        ("dpm2", diffusers.KDPM2DiscreteScheduler, {"use_karras_sigmas": False}),
        ("dpm2_a", diffusers.KDPM2AncestralDiscreteScheduler, {"use_karras_sigmas": False}),
        ("dpmpp_sde_karras", diffusers.DPMSolverSDEScheduler, {"use_karras_sigmas": True}),
        (
            "dpmpp_2m_sde_karras",
            diffusers.DPMSolverMultistepScheduler,
            {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
        ),
        ("ddpm", diffusers.DDPMScheduler, {}),
        ("lcm", diffusers.LCMScheduler, {}),
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
    assert sampler_label("dpmpp_2m_karras", BASE) == "DPM++ 2M Karras"


@pytest.mark.parametrize(
    "alias, name",
    [
        ("DPM++ 2M Karras", "dpmpp_2m_karras"),
        ("dpm++ 2m sde karras", "dpmpp_2m_sde_karras"),
        ("Euler a", "euler_a"),
        ("euler A", "euler_a"),
        ("  Euler Karras ", "euler_karras"),
        ("PLMS", "pndm"),
        ("DPM2 a", "dpm2_a"),
        ("HEUN", "heun"),
        ("Lcm", "lcm"),
        ("DPMPP_SDE_KARRAS", "dpmpp_sde_karras"),
        ("ddim", "ddim"),
        (None, None),
    ],
)
def test_aliases_resolve(alias, name):
    assert canonical_sampler(alias) == name
    check_sampler(alias)
    if name is not None:
        assert type(make_scheduler(alias, BASE)) is type(make_scheduler(name, BASE))
        assert sampler_label(alias, BASE) == SAMPLERS[name].label


def test_every_name_and_label_resolves_to_its_own_sampler():
    for name, label in sampler_choices():
        assert canonical_sampler(name) == canonical_sampler(label) == canonical_sampler(label.upper()) == name
    assert [name for name, _ in sampler_choices()] == list(SAMPLERS)
    labels = [label for _, label in sampler_choices()]
    assert len(set(labels)) == len(labels)


@pytest.mark.parametrize("bad", ["dpm_fast", "k_euler_a", "Euler-a", "", 3])
def test_unknown_names_list_the_known_ones(bad):
    with pytest.raises(ValueError, match=f"{bad!r}") as info:
        canonical_sampler(bad)
    if isinstance(bad, str):
        message = str(info.value)
        assert message.startswith(f"unknown scheduler {bad!r}; known: ddim, pndm")
        assert all(name in message and repr(label) in message for name, label in sampler_choices())
    for call in (lambda: check_sampler(bad), lambda: make_scheduler(bad, BASE), lambda: sampler_label(bad, BASE)):
        with pytest.raises(ValueError):
            call()


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_label_round_trips(name):
    """A name's label resolves back to it, and a model config built by a sampler is labelled as that sampler."""
    label = sampler_label(name, BASE)
    assert canonical_sampler(label) == name
    scheduler = make_scheduler(name, BASE)
    own_config = {**scheduler.config, "_class_name": type(scheduler).__name__}
    assert sampler_label(None, own_config) == label


def test_seeds_seed_the_sde_samplers_brownian_trees_and_nothing_else():
    seeds = [11, 12]
    assert make_scheduler("dpmpp_sde_karras", BASE, seeds=seeds).config["noise_sampler_seed"] == seeds
    assert make_scheduler("DPM++ SDE Karras", BASE).config["noise_sampler_seed"] is None
    sde_config = {**make_scheduler("dpmpp_sde_karras", BASE).config, "_class_name": "DPMSolverSDEScheduler"}
    assert make_scheduler(None, sde_config, seeds=seeds).config["noise_sampler_seed"] == seeds
    for name in SAMPLERS:
        if name != "dpmpp_sde_karras":
            assert "noise_sampler_seed" not in make_scheduler(name, BASE, seeds=seeds).config


def test_sde_sampler_image_depends_on_its_own_seed_only(pipelines):
    """DPM++ SDE's Brownian noise is seeded per image: seed s alone, again, and second in a batch agree."""
    pipe = pipelines["onnxruntime"]
    kwargs = dict(height=64, width=64, num_inference_steps=4, scheduler="dpmpp_sde_karras")
    alone = np.asarray(pipe.generate("a red boat", seed=41, **kwargs).images[0], dtype=np.int16)
    again = np.asarray(pipe.generate("a red boat", seed=41, **kwargs).images[0], dtype=np.int16)
    batch = pipe.generate("a red boat", seed=40, num_images_per_prompt=2, **kwargs)
    assert batch.seeds == [40, 41]
    second = np.asarray(batch.images[1], dtype=np.int16)
    assert np.array_equal(alone, again)
    assert np.abs(alone - second).max() <= 1
    assert np.abs(np.asarray(batch.images[0], dtype=np.int16) - second).max() > 1
