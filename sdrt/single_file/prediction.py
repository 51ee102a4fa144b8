"""What an SD 2.x UNet predicts, found from its weights: SD 2.x single files do not record it.

The web UI decides with one forward pass at the last training timestep (999), where the noisy latents are almost
all noise (sqrt(alpha_bar) is 0.07 on SD's schedule): there the epsilon target is about the input itself, so an
epsilon UNet returns about what it is given, while the v target is about minus the clean latents, which a v UNet
guesses from what it learnt. Its test input is latents and text states of 0.5 everywhere, and it takes the UNet for
v-prediction when the output's mean is more than 1 below the input's.

sdrt runs that pass and one more check on two inputs of unit noise: how the output follows the input (the slope
of output against input). The epsilon target follows it one for one; the v target hardly at all (for clean
latents of unit variance, as SD's scaled latents are, the best v guess does not depend on the noise). A UNet is
called one or the other only when both checks agree; random weights (which follow their input neither way) and
anything else come out undecided, and the caller asks for `--prediction-type`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

PROBE_TIMESTEP = 999  # the last training timestep: the input is noise
PROBE_VALUE = 0.5  # the web UI's test latents and text states
PROBE_SIZE = 8  # latent height and width
PROBE_TOKENS = 2
V_OFFSET = -1.0  # the web UI's threshold on mean(output - input)
EPSILON_SLOPE = 0.7  # an epsilon UNet follows its input about one for one at t=999
V_SLOPE = 0.3  # a v UNet hardly follows it


@dataclass(frozen=True)
class Probe:
    """What the test passes measured, and what they say the UNet predicts (None: undecided)."""

    offset: float  # mean(output - input) on the web UI's input
    slope: float  # <d output, d input> / |d input|^2 between two unit-noise inputs
    prediction_type: str | None

    def describe(self) -> str:
        return f"mean(output - input) {self.offset:.3f} (v below {V_OFFSET:g}), slope {self.slope:.3f} " \
            f"(epsilon above {EPSILON_SLOPE:g}, v below {V_SLOPE:g})"  # fmt: skip


def decide(offset: float, slope: float) -> str | None:
    """epsilon or v_prediction when the two checks agree, None otherwise."""
    if offset >= V_OFFSET and slope > EPSILON_SLOPE:
        return "epsilon"
    if offset < V_OFFSET and abs(slope) < V_SLOPE:
        return "v_prediction"
    return None


@torch.no_grad()
def probe_unet(unet: torch.nn.Module, cross_attention_dim: int) -> Probe:
    """Run the test passes on a diffusers UNet2DConditionModel (float32, CPU) and decide."""
    g = torch.Generator().manual_seed(0)
    shape = (1, int(unet.config.in_channels), PROBE_SIZE, PROBE_SIZE)
    constant = torch.full(shape, PROBE_VALUE)
    noise = torch.randn((2, *shape[1:]), generator=g)
    sample = torch.cat([constant, noise])
    states = torch.full((3, PROBE_TOKENS, cross_attention_dim), PROBE_VALUE)
    timestep = torch.tensor([PROBE_TIMESTEP] * 3)
    out = unet(sample, timestep, encoder_hidden_states=states).sample.float()
    if not torch.isfinite(out).all():
        return Probe(float("nan"), float("nan"), None)
    offset = float((out[0] - constant[0]).mean())
    d_in, d_out = noise[0] - noise[1], out[1] - out[2]
    slope = float((d_out * d_in).sum() / (d_in * d_in).sum())
    return Probe(offset, slope, decide(offset, slope))


def probe_checkpoint(checkpoint: Mapping[str, torch.Tensor], unet_config: Mapping[str, Any]) -> Probe:
    """Probe the UNet of a single file in the original layout (converted by diffusers' function, as for writing).

    ValueError when the UNet cannot be run (its weights do not fit `unet_config`, or hold no data)."""
    from diffusers import UNet2DConditionModel

    from sdrt.single_file.checkpoint import convert_part

    weights = convert_part(checkpoint, "unet", "diffusers", "UNet2DConditionModel", unet_config)
    if any(v.is_meta for v in weights.values()):
        raise ValueError("its UNet weights hold no data (meta tensors)")
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(dict(unet_config))
    unet.load_state_dict({k: v.float() for k, v in weights.items()}, assign=True)
    return probe_unet(unet.eval(), int(unet_config["cross_attention_dim"]))
