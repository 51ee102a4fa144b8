"""Sampler names -> diffusers scheduler classes and options, a fresh instance per generation."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sdrt.excerpt import excerpt

# Sigma spacings a model's own scheduler config may switch on; a named sampler states its spacing in
# full, so "euler" on a model shipped with Karras sigmas is still plain Euler.
_SIGMA_SPACINGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")

# DPMSolverSDEScheduler draws its noise from torchsde Brownian trees seeded by this config field, not
# from the pipeline's generators; a list gives one tree per batch row, so image i depends on seed i only.
_NOISE_SEED_OPTION = "noise_sampler_seed"


@dataclass(frozen=True)
class Sampler:
    """A named sampler: the diffusers class and options that implement it, and the web UI's label for it."""

    name: str  # sdrt's name, e.g. "dpmpp_2m_karras"
    scheduler_class: str  # diffusers class name
    label: str  # the AUTOMATIC1111 web UI's name, written into PNG parameters and accepted as an alias
    options: Mapping[str, Any] = field(default_factory=dict)  # overrides on top of the model's scheduler config


_KARRAS = {"use_karras_sigmas": True}
_DPMPP_2M = {"algorithm_type": "dpmsolver++", "solver_order": 2}

# Classes and options as in the A1111 <-> diffusers table of diffusers' "Schedulers" docs page. New samplers
# go at the end: the order is what `sampler_choices` and the CLI's help show.
SAMPLERS: dict[str, Sampler] = {
    s.name: s
    for s in (
        Sampler("ddim", "DDIMScheduler", "DDIM"),
        Sampler("pndm", "PNDMScheduler", "PLMS", {"skip_prk_steps": True}),
        Sampler("lms", "LMSDiscreteScheduler", "LMS"),
        Sampler("euler", "EulerDiscreteScheduler", "Euler"),
        Sampler("euler_a", "EulerAncestralDiscreteScheduler", "Euler a"),
        Sampler("dpmpp_2m", "DPMSolverMultistepScheduler", "DPM++ 2M", _DPMPP_2M),
        Sampler("dpmpp_2m_karras", "DPMSolverMultistepScheduler", "DPM++ 2M Karras", {**_DPMPP_2M, **_KARRAS}),
        Sampler("unipc", "UniPCMultistepScheduler", "UniPC"),
        Sampler("lms_karras", "LMSDiscreteScheduler", "LMS Karras", _KARRAS),
        Sampler("euler_karras", "EulerDiscreteScheduler", "Euler Karras", _KARRAS),
        Sampler("heun", "HeunDiscreteScheduler", "Heun"),
        Sampler("dpm2", "KDPM2DiscreteScheduler", "DPM2"),
        Sampler("dpm2_a", "KDPM2AncestralDiscreteScheduler", "DPM2 a"),
        Sampler("dpmpp_sde_karras", "DPMSolverSDEScheduler", "DPM++ SDE Karras", _KARRAS),
        Sampler(
            "dpmpp_2m_sde_karras",
            "DPMSolverMultistepScheduler",
            "DPM++ 2M SDE Karras",
            {**_DPMPP_2M, "algorithm_type": "sde-dpmsolver++", **_KARRAS},
        ),
        Sampler("ddpm", "DDPMScheduler", "DDPM"),
        Sampler("lcm", "LCMScheduler", "LCM"),
    )
}

# Every name and label, case-folded, to sdrt's name.
_ALIASES: dict[str, str] = {key.casefold(): s.name for s in SAMPLERS.values() for key in (s.name, s.label)}


def sampler_choices() -> list[tuple[str, str]]:
    """(name, web UI label) of every sampler, in a stable order, for APIs and UIs that list them."""
    return [(s.name, s.label) for s in SAMPLERS.values()]


def canonical_sampler(name: str | None) -> str | None:
    """sdrt's name for `name`, which may be a name or a web UI label in any case; None stays None."""
    if name is None:
        return None
    if not isinstance(name, str):
        raise ValueError(f"scheduler {excerpt(name)} is not a string; give a sampler name such as 'euler_a'")
    canonical = _ALIASES.get(name.strip().casefold())
    if canonical is None:
        names = ", ".join(SAMPLERS)
        labels = ", ".join(repr(s.label) for s in SAMPLERS.values())
        raise ValueError(f"unknown scheduler {excerpt(name)}; known: {names}; or their web UI labels: {labels}")
    return canonical


def check_sampler(name: str | None) -> None:
    """Raise ValueError unless `name` is None, a sampler name or a web UI label."""
    canonical_sampler(name)


def make_scheduler(name: str | None, config: Mapping[str, Any], *, seeds: Sequence[int] | None = None):
    """A new scheduler: sampler `name` (or label), or the model's own scheduler class when `name` is None.

    `seeds` (one per image) seed schedulers that draw noise from their own sampler rather than from the
    pipeline's generators (DPM++ SDE's Brownian trees); without them that noise is random.
    """
    import diffusers  # here, not at the top: the CLI reads the sampler table without loading torch

    canonical = canonical_sampler(name)
    if canonical is None:
        class_name = config.get("_class_name")
        cls = getattr(diffusers, str(class_name), None)
        if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
            raise ValueError(f"scheduler config names {class_name!r}, which is not a diffusers scheduler class")
        options: dict[str, Any] = {}
    else:
        sampler = SAMPLERS[canonical]
        cls = getattr(diffusers, sampler.scheduler_class)
        options = _stated_options(sampler, cls)
    if seeds is not None and _NOISE_SEED_OPTION in inspect.signature(cls.__init__).parameters:
        options[_NOISE_SEED_OPTION] = [int(s) for s in seeds]
    return cls.from_config(config, **options)


def sampler_label(name: str | None, config: Mapping[str, Any]) -> str:
    """The web UI's label for the sampler that `make_scheduler(name, config)` gives."""
    import diffusers

    canonical = canonical_sampler(name)
    if canonical is not None:
        return SAMPLERS[canonical].label
    class_name = config.get("_class_name")
    for sampler in SAMPLERS.values():
        if sampler.scheduler_class != class_name:
            continue
        stated = _stated_options(sampler, getattr(diffusers, sampler.scheduler_class))
        if all(config.get(k, v) == v for k, v in stated.items()):
            return sampler.label
    return str(class_name)


def _stated_options(sampler: Sampler, cls: type) -> dict[str, Any]:
    """The sampler's options, with every sigma spacing the class accepts off unless the sampler turns it on."""
    accepted = inspect.signature(cls.__init__).parameters
    plain = {k: False for k in _SIGMA_SPACINGS if k in accepted}
    return {**plain, **sampler.options}
