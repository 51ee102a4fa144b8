"""Batched classifier-free guidance with per-sample scales."""

from __future__ import annotations

import torch

from sdrt.runtime.guidance import ClassifierFreeGuidance


def test_mixed_scales_share_one_batch():
    cfg = ClassifierFreeGuidance([7.5, 1.0, 3.0], torch.device("cpu"))
    latents = torch.randn(3, 4, 2, 2)
    batch = cfg.expand(latents)
    assert batch.shape[0] == 5  # uncond for samples 0 and 2, cond for all three
    assert torch.equal(batch[:2], latents[[0, 2]]) and torch.equal(batch[2:], latents)
    noise = torch.randn(5, 4, 2, 2)
    out = cfg.combine(noise)
    uncond, cond = noise[:2], noise[2:]
    assert torch.allclose(out[0], uncond[0] + 7.5 * (cond[0] - uncond[0]))
    assert torch.equal(out[1], cond[1])  # scale 1: the conditional prediction as is
    assert torch.allclose(out[2], uncond[1] + 3.0 * (cond[2] - uncond[1]))


def test_no_guidance_skips_the_unconditional_pass():
    cfg = ClassifierFreeGuidance([1.0, 0.5], torch.device("cpu"))
    latents = torch.randn(2, 4, 2, 2)
    assert cfg.num_uncond == 0 and cfg.expand(latents) is latents
    noise = torch.randn(2, 4, 2, 2)
    assert cfg.combine(noise) is noise
