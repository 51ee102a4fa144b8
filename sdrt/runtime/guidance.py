"""Classifier-free guidance (Ho & Salimans, 2022), batched: unconditional and conditional in one UNet call."""

from __future__ import annotations

from collections.abc import Sequence

import torch


class ClassifierFreeGuidance:
    """Per-sample guidance scales; samples with scale <= 1 skip the unconditional pass.

    The UNet batch is [uncond of guided samples; cond of all samples], so requests with different
    scales (or none) share one call. Guided samples get `uncond + scale * (cond - uncond)`.
    """

    def __init__(self, scales: Sequence[float], device: torch.device) -> None:
        self.scales = torch.tensor([float(s) for s in scales], dtype=torch.float32)
        self.guided = torch.nonzero(self.scales > 1.0).flatten().to(device)
        self._guided_scales = self.scales[self.guided.cpu()].to(device)

    @property
    def num_uncond(self) -> int:
        return int(self.guided.numel())

    def expand(self, latents: torch.Tensor) -> torch.Tensor:
        """The UNet's sample batch for `latents` (N, ...): guided samples twice."""
        return torch.cat([latents[self.guided], latents]) if self.num_uncond else latents

    def combine(self, noise: torch.Tensor) -> torch.Tensor:
        """Guided noise prediction (N, ...) from the UNet's output on the expanded batch."""
        k = self.num_uncond
        if k == 0:
            return noise
        uncond, cond = noise[:k], noise[k:]
        scale = self._guided_scales.view(-1, *([1] * (noise.dim() - 1)))
        guided = uncond + scale * (cond[self.guided] - uncond)
        if k == cond.shape[0]:
            return guided
        out = cond.clone()
        out[self.guided] = guided
        return out
