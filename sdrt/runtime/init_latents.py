"""Where denoising starts: noise (text-to-image), a noised encoded image (image-to-image), or inpainting state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sdrt.lazy import deferred
from sdrt.runtime.request import strength_steps

if TYPE_CHECKING:
    import torch
    import torch.nn.functional as F
else:
    torch = deferred("torch")
    F = deferred("torch.nn.functional")


def stage_timesteps(
    scheduler, steps: int, strength: float | None, start: float | None = None, end: float | None = None
) -> torch.Tensor:
    """The timesteps a stage runs, from a scheduler whose `set_timesteps(steps)` has been called.

    - `start` (diffusers' `denoising_start`, a refiner after the base): the timesteps below the cut-off
      `round(T * (1 - start))`, one more for a second-order scheduler so no step is cut in half;
    - else `strength` (image-to-image, SDEdit, Meng et al. 2021): the last int(steps * strength) steps (at least 1);
    - else all of them;
    then `end` (diffusers' `denoising_end`, the base before a refiner) keeps those at or above the cut-off
    `round(T * (1 - end))`. The scheduler's begin index moves to the first step run, so samplers that index
    their sigmas by step (Euler, DPM++) start at the right noise level, as in diffusers' img2img pipelines.
    """
    timesteps = scheduler.timesteps
    train_steps = scheduler.config.num_train_timesteps
    begin = None
    if start is not None:
        cutoff = int(round(train_steps - start * train_steps))
        run = int((timesteps < cutoff).sum())
        if scheduler.order == 2 and run % 2 == 0:
            run += 1
        begin = len(timesteps) - run
    elif strength is not None:
        run = strength_steps(steps, strength)
        begin = (steps - run) * scheduler.order
    if begin is not None:
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(begin)
        timesteps = timesteps[begin:]
    if end is not None:
        cutoff = int(round(train_steps - end * train_steps))
        timesteps = timesteps[: int((timesteps >= cutoff).sum())]
    return timesteps


@dataclass(frozen=True)
class Inpainting:
    """A 4-channel UNet's inpainting: it denoises everything, and after each step the known region is put back,
    re-noised to the next step's level, as diffusers' StableDiffusionInpaintPipeline does. (A 9-channel
    inpainting UNet sees the mask and masked-image latents as channels instead: CONCAT conditioning.)
    """

    mask: torch.Tensor  # (N, 1, h, w): 1 where the image is repainted, 0 where it is kept
    image_latents: torch.Tensor  # (N, C, h, w) the image's latents
    noise: torch.Tensor  # (N, C, h, w) the initial noise, to re-noise the known region

    def blend(self, latents: torch.Tensor, scheduler, next_timestep: torch.Tensor | None) -> torch.Tensor:
        """After a step: put the known region back (noised to `next_timestep`; clean after the last step)."""
        known = self.image_latents
        if next_timestep is not None:
            known = scheduler.add_noise(known, self.noise, next_timestep.reshape(1))
        return (1 - self.mask) * known + self.mask * latents


def latent_mask(mask: torch.Tensor, height: int, width: int, count: int) -> torch.Tensor:
    """A (1, 1, H, W) pixel mask at latent size (nearest), one row per image: (count, 1, height, width)."""
    return F.interpolate(mask, size=(height, width)).expand(count, -1, -1, -1)
