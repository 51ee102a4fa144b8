"""Batched classifier-free guidance with per-sample scales."""

from __future__ import annotations

import pytest
import torch

from sdrt.conditioning.guidance import ClassifierFreeGuidance


def test_mixed_scales_share_one_batch():
    cfg = ClassifierFreeGuidance([7.5, 1.0, 3.0], torch.device("cpu"))
    latents = torch.randn(3, 4, 2, 2)
    batch = cfg.expand({"sample": latents})["sample"]
    assert batch.shape[0] == 5  # uncond for samples 0 and 2, cond for all three
    assert torch.equal(batch[:2], latents[[0, 2]]) and torch.equal(batch[2:], latents)
    assert cfg.guided_items(["a", "b", "c"]) == ["a", "c"]
    noise = torch.randn(5, 4, 2, 2)
    out = cfg.combine(noise)
    uncond, cond = noise[:2], noise[2:]
    assert torch.allclose(out[0], uncond[0] + 7.5 * (cond[0] - uncond[0]))
    assert torch.equal(out[1], cond[1])  # scale 1: the conditional prediction as is
    assert torch.allclose(out[2], uncond[1] + 3.0 * (cond[2] - uncond[1]))


def test_no_guidance_skips_the_unconditional_pass():
    cfg = ClassifierFreeGuidance([1.0, 0.5], torch.device("cpu"))
    latents = torch.randn(2, 4, 2, 2)
    assert cfg.num_uncond == 0 and cfg.expand({"sample": latents})["sample"] is latents
    assert cfg.guided_items(["a", "b"]) == []
    noise = torch.randn(2, 4, 2, 2)
    assert cfg.combine(noise) is noise


def test_every_named_input_follows_the_one_row_rule():
    """Conditioning inputs take their unconditional rows from `uncond`; the others repeat their guided rows."""
    cfg = ClassifierFreeGuidance([2.0, 1.0, 5.0], torch.device("cpu"))
    cond = {"encoder_hidden_states": torch.randn(3, 7, 8), "text_embeds": torch.randn(3, 4)}
    uncond = {"encoder_hidden_states": torch.randn(2, 7, 8), "text_embeds": torch.zeros(2, 4)}
    feeds = cfg.expand({**cond, "sample": torch.randn(3, 4, 2, 2)}, uncond)
    for name in cond:
        assert torch.equal(feeds[name], torch.cat([uncond[name], cond[name]]))
    assert feeds["sample"].shape[0] == 5
    with pytest.raises(ValueError, match="text_embeds has 1 unconditional rows for 2 guided images"):
        cfg.expand(cond, {**uncond, "text_embeds": torch.zeros(1, 4)})
