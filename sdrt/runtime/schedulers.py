"""Sampler names -> diffusers scheduler classes and options, a fresh instance per generation."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import diffusers

# Sigma spacings a model's own scheduler config may switch on; a named sampler states its spacing in
# full, so "euler" on a model shipped with Karras sigmas is still plain Euler.
_SIGMA_SPACINGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")


@dataclass(frozen=True)
class Sampler:
    """A named sampler: the diffusers class and options that implement it, and the web UI's label for it."""

    name: str  # sdrt's name, e.g. "dpmpp_2m_karras"
    scheduler_class: str  # diffusers class name
    label: str  # the AUTOMATIC1111 web UI's name, written into PNG parameters
    options: Mapping[str, Any] = field(default_factory=dict)  # overrides on top of the model's scheduler config


SAMPLERS: dict[str, Sampler] = {
    s.name: s
    for s in (
        Sampler("ddim", "DDIMScheduler", "DDIM"),
        Sampler("pndm", "PNDMScheduler", "PLMS", {"skip_prk_steps": True}),
        Sampler("lms", "LMSDiscreteScheduler", "LMS"),
        Sampler("euler", "EulerDiscreteScheduler", "Euler"),
        Sampler("euler_a", "EulerAncestralDiscreteScheduler", "Euler a"),
        Sampler(
            "dpmpp_2m",
            "DPMSolverMultistepScheduler",
            "DPM++ 2M",
            {"algorithm_type": "dpmsolver++", "solver_order": 2},
        ),
        Sampler(
            "dpmpp_2m_karras",
            "DPMSolverMultistepScheduler",
            "DPM++ 2M Karras",
            {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
        ),
        Sampler("unipc", "UniPCMultistepScheduler", "UniPC"),
    )
}


def check_sampler(name: str | None) -> None:
    if name is not None and name not in SAMPLERS:
        raise ValueError(f"unknown scheduler {name!r}; known: {', '.join(SAMPLERS)}")


def make_scheduler(name: str | None, config: Mapping[str, Any]):
    """A new scheduler: sampler `name`, or the model's own scheduler class when `name` is None."""
    check_sampler(name)
    if name is None:
        class_name = config.get("_class_name")
        cls = getattr(diffusers, str(class_name), None)
        if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
            raise ValueError(f"scheduler config names {class_name!r}, which is not a diffusers scheduler class")
        return cls.from_config(config)
    sampler = SAMPLERS[name]
    cls = getattr(diffusers, sampler.scheduler_class)
    accepted = inspect.signature(cls.__init__).parameters
    plain = {k: False for k in _SIGMA_SPACINGS if k in accepted}
    return cls.from_config(config, **{**plain, **sampler.options})


def sampler_label(name: str | None, config: Mapping[str, Any]) -> str:
    """The web UI's label for the sampler that `make_scheduler(name, config)` gives."""
    if name is not None:
        return SAMPLERS[name].label
    class_name = config.get("_class_name")
    for sampler in SAMPLERS.values():
        if sampler.scheduler_class == class_name and all(config.get(k, v) == v for k, v in sampler.options.items()):
            return sampler.label
    return str(class_name)
