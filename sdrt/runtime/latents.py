"""Seeds, generators and initial noise, drawn exactly as diffusers draws them from a list of CPU generators."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sdrt.lazy import deferred

if TYPE_CHECKING:
    import torch
else:
    torch = deferred("torch")


MAX_SEED = 2**64 - 1  # torch generators take 64-bit seeds (a negative one is its two's complement)


def random_seed() -> int:
    return random.SystemRandom().randrange(2**32)


def generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per image, as `generator=[torch.Generator("cpu").manual_seed(s) ...]` in diffusers."""
    return [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]


def initial_noise(gens: Sequence[torch.Generator], shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Noise (N, *shape) float32: row i drawn from gens[i] on the CPU (like diffusers' randn_tensor), then moved."""
    rows = [torch.randn((1, *shape), generator=g, dtype=torch.float32) for g in gens]
    return torch.cat(rows).to(device)


def sample_vae_latents(parameters: torch.Tensor, gens: Sequence[torch.Generator], scaling: float) -> torch.Tensor:
    """Scaled latents (N, C, h, w) drawn from the VAE encoder's Gaussian (1 or N, 2C, h, w): row i from gens[i].

    As diffusers' DiagonalGaussianDistribution.sample (log-variance clamped to [-30, 20]) times the
    VAE's scaling factor, with the same draws `retrieve_latents(..., generator=gens[i])` makes.
    """
    mean, logvar = parameters.chunk(2, dim=1)
    std = torch.exp(0.5 * torch.clamp(logvar, -30.0, 20.0))
    noise = initial_noise(gens, tuple(mean.shape[1:]), mean.device)
    return scaling * (mean + std * noise)
