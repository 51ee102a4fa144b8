"""Real-ESRGAN's compact generator, SRVGGNetCompact (Wang et al., 2021, "Real-ESRGAN"; the realesr-general-x4v3
and realesr-animevideov3 files).

A plain VGG-style stack at the input's resolution: a 3x3 convolution to `features` channels and `convs` more,
each followed by a per-channel PReLU; a last 3x3 convolution to `channels * scale**2` channels, rearranged into
the `scale`x larger image (pixel shuffle) and added to the nearest-neighbour upscaled input, so the network
learns the residual. Weights are `body.N` (convolutions at even N, PReLUs at odd N).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

ARCHITECTURE = "Compact"


@dataclass(frozen=True)
class CompactConfig:
    """An SRVGGNetCompact's hyperparameters, read from its weights."""

    features: int  # feature channels (64)
    convs: int  # 3x3 convolutions between the first and the last (32 for general-x4v3, 16 for animevideov3)
    scale: int  # output pixels per input pixel along each axis
    channels: int = 3  # image channels in and out

    def __post_init__(self) -> None:
        if self.features < 1 or self.convs < 0 or self.scale < 1:
            raise ValueError(f"Compact features {self.features}, convs {self.convs}, scale {self.scale} are invalid")

    multiple = 1  # any input size

    def describe(self) -> str:
        return f"{self.convs} convolutions, {self.features} features"


class SRVGGNetCompact(nn.Module):
    """Images (B, C, H, W) in [0, 1] -> (B, C, sH, sW)."""

    def __init__(self, config: CompactConfig) -> None:
        super().__init__()
        self.config = config
        f, c = config.features, config.channels
        layers: list[nn.Module] = [nn.Conv2d(c, f, 3, 1, 1), nn.PReLU(f)]
        for _ in range(config.convs):
            layers += [nn.Conv2d(f, f, 3, 1, 1), nn.PReLU(f)]
        layers.append(nn.Conv2d(f, c * config.scale**2, 3, 1, 1))
        self.body = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        residual = F.pixel_shuffle(self.body(image), self.config.scale)
        return residual + F.interpolate(image, scale_factor=float(self.config.scale), mode="nearest")


def claims(state: Mapping[str, torch.Tensor]) -> bool:
    """True for SRVGGNetCompact weights: `body.0` a 3x3 convolution, `body.1` its activation."""
    first = state.get("body.0.weight")
    return first is not None and first.dim() == 4 and "conv_first.weight" not in state


def canonical(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return dict(state)


def config_of(state: Mapping[str, torch.Tensor]) -> CompactConfig:
    """The hyperparameters, from the keys and shapes of `body.N`."""
    indices = sorted({int(k.split(".")[1]) for k in state if k.startswith("body.")})
    last = indices[-1]
    if "body.1.weight" not in state:
        raise ValueError(
            "Compact weights without PReLU parameters (a ReLU or LeakyReLU model): their activation cannot be told "
            "from the weights, so they are not supported"
        )
    first = state["body.0.weight"]
    features, channels = int(first.shape[0]), int(first.shape[1])
    out = int(state[f"body.{last}.weight"].shape[0])
    scale = math.isqrt(out // channels)
    if scale * scale * channels != out or last % 2:
        raise ValueError(f"Compact weights end in {out} channels at body.{last}: not an upscaler of {channels}")
    return CompactConfig(features=features, convs=(last - 2) // 2, scale=scale, channels=channels)
