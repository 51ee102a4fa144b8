"""What a request runs, decided once when it is checked: its model, where it starts, its share of the schedule,
what follows it, and the key of the requests it can share every engine call with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sdrt.lazy import deferred
from sdrt.runtime.init_latents import stage_timesteps
from sdrt.schedulers import canonical_sampler, make_scheduler

if TYPE_CHECKING:
    import torch
else:
    torch = deferred("torch")

# where denoising starts
NOISE = "noise"  # pure noise (text-to-image, variations)
IMAGE = "image"  # an input image, encoded and noised to the strength's first step (image-to-image)
INPAINT = "inpaint"  # an image and its mask
LATENTS = "latents"  # given latents, noised to the strength's first step (the hires fix's second pass)
CONTINUE = "continue"  # given latents as they are, from the pass's first step (the refiner after the base)
STARTS = (NOISE, IMAGE, INPAINT, LATENTS, CONTINUE)

# what follows a pass
REFINER = "refiner"  # the refiner's pass on these latents
HIRES = "hires"  # upscale, then a second pass per image
UPSCALE = "upscale"  # upscale only (a hires fix at strength 0)


@dataclass(frozen=True)
class Plan:
    """One request's pass: computed once, read by the checks, the batcher and the runner."""

    stage: str  # whose model runs it: "base" or "refiner"
    start: str  # where denoising starts, one of STARTS
    denoising_start: float | None  # the pass begins where this share of the schedule is done (the refiner)
    denoising_end: float | None  # the pass hands over when this share of the schedule is done (base -> refiner)
    timesteps: int  # scheduler timesteps the pass runs (a second-order sampler's count)
    then: str | None  # what follows: REFINER, HIRES, UPSCALE, or None
    key: tuple  # requests with equal keys share every engine call of this pass

    def window(self, scheduler: Any, request: Any) -> torch.Tensor:
        """The timesteps this pass runs, from a scheduler whose set_timesteps(request.steps) has been called."""
        strength = request.strength if self.start in (IMAGE, INPAINT, LATENTS) else None
        return stage_timesteps(scheduler, request.steps, strength, self.denoising_start, self.denoising_end)


def make_plan(request: Any, models: dict[str, Any]) -> Plan:
    """The plan of a request for a pipeline's models ("base", and "refiner" when loaded); ValueError if it cannot run.

    The key holds what a whole batch shares: model and start, size, steps, sampler, eta, strength, the pass's
    share of the schedule, the LoRA set and hypernetwork chain, and the conditioner's share (CLIP skip, prompt
    chunk count). A hires fix is not in it: the first pass is a plain text-to-image pass, and each second pass
    is a request of its own.
    """
    model = models.get(request.stage)
    if model is None:
        raise ValueError("refiner_switch_at needs a refiner: load the pipeline with refiner=REFINER_ARTIFACT")
    switch = request.refiner_switch_at
    then = None
    if switch is not None:
        if REFINER not in models:
            raise ValueError("refiner_switch_at needs a refiner: load the pipeline with refiner=REFINER_ARTIFACT")
        if request.mode == "inpaint":
            raise ValueError("inpainting runs on the base alone: leave out refiner_switch_at")
        then = REFINER
    elif request.hires is not None:
        then = HIRES if request.hires.strength > 0 else UPSCALE
    if request.denoising_start is not None:
        start = CONTINUE
    elif request.mode in ("txt2img", "variation"):
        start = NOISE
    elif request.init_latents is not None:
        start = LATENTS
    else:
        start = INPAINT if request.mode == "inpaint" else IMAGE
    scheduler = make_scheduler(request.scheduler, model.scheduler_config)
    scheduler.set_timesteps(request.steps)
    plan = Plan(request.stage, start, request.denoising_start, switch, 0, then, ())
    timesteps = len(plan.window(scheduler, request))
    if timesteps == 0:
        which = "base" if request.stage == "base" else "refiner"
        raise ValueError(
            f"refiner_switch_at {switch if switch is not None else request.denoising_start} leaves the {which} "
            f"no step of {request.steps}; move it or add steps"
        )
    key = (
        request.stage,
        start,
        request.mode,
        request.height,
        request.width,
        request.steps,
        canonical_sampler(request.scheduler),
        request.eta,
        request.strength,
        request.denoising_start,
        switch,
        request.loras,  # one LoRA set per batch: it changes the weights every image runs on
        request.deep_cache,  # one DeepCache setting per batch: full and shallow steps are the batch's
        request.hypernetworks,  # one hypernetwork chain per batch: it changes every attention layer
        request.tiling,  # seamless tiling runs other engines
        model.conditioner.batch_key(request),
    )
    return Plan(request.stage, start, request.denoising_start, switch, timesteps, then, key)
