"""The sampling loop: scale the latents, ask the denoiser, step the scheduler. Nothing in it knows conditioning."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

# the denoiser the loop calls: (scaled latents (N, C, h, w), timestep, index, timesteps of the pass) -> prediction
Denoiser = Callable[[torch.Tensor, torch.Tensor, int, int], torch.Tensor]
# after a scheduler step: (latents, index of the step just taken) -> latents (inpainting puts the known part back)
AfterStep = Callable[[torch.Tensor, int], torch.Tensor]
# callback(step index, timestep, latents (N, C, h, w)) after a denoising step
StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]


@dataclass
class Progress:
    """How far a pass got: steps run (the callback's index goes on from `steps`), and whether it was stopped."""

    steps: int = 0  # denoising steps run (a second-order sampler's two calls are one step)
    stopped: bool = False  # stop() said True before the last step
    callback: StepCallback | None = None  # called after every `callback_steps`-th step
    callback_steps: int = 1
    stop: Callable[[], bool] | None = None  # asked after each step: True ends the pass there (an interrupt)
    bar: bool = False  # show a progress bar


def denoise(
    denoiser: Denoiser,
    scheduler: Any,
    timesteps: torch.Tensor,
    latents: torch.Tensor,
    step_kwargs: dict[str, Any],
    progress: Progress,
    after_step: Sequence[AfterStep] = (),
    clock_stage: Callable[[], Any] | None = None,
) -> torch.Tensor:
    """Denoise `latents` over `timesteps`: one denoiser call per timestep, then the scheduler's step."""
    order = scheduler.order
    total = len(timesteps)
    # a step ends as diffusers' pipelines count them: every `order` calls after the schedule's warm-up calls (PLMS
    # runs its first timestep twice), and at the last; so the bar counts the steps asked for (PLMS: 10, not 11)
    asked = getattr(scheduler, "num_inference_steps", None)
    warmup = len(scheduler.timesteps) - asked * order if isinstance(asked, int) else 0
    ends = [i == total - 1 or (i + 1 > warmup and (i + 1) % order == 0) for i in range(total)]
    bar = tqdm(total=sum(ends), desc="denoise", unit="step", disable=not progress.bar)
    with bar:
        for i, t in enumerate(timesteps):
            model_input = scheduler.scale_model_input(latents, t)
            noise = denoiser(model_input, t, i, total)
            latents = scheduler.step(noise, t, latents, **step_kwargs, return_dict=False)[0]
            for hook in after_step:
                latents = hook(latents, i)
            if ends[i]:
                bar.update(1)
                if progress.callback is not None and progress.steps % progress.callback_steps == 0:
                    progress.callback(progress.steps, t, latents)
                progress.steps += 1
                if progress.stop is not None and i + 1 < total and progress.stop():
                    progress.stopped = True
                    break
    return latents


def step_kwargs(scheduler: Any, gens: list[torch.Generator], eta: float) -> dict[str, Any]:
    """eta and generator for schedulers whose step takes them, as diffusers' prepare_extra_step_kwargs."""
    accepted = inspect.signature(scheduler.step).parameters
    kwargs: dict[str, Any] = {}
    if "eta" in accepted:
        kwargs["eta"] = eta
    if "generator" in accepted:
        kwargs["generator"] = gens
    return kwargs
