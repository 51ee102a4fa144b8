"""ESRGAN's generator, RRDBNet (Wang et al., 2018, "ESRGAN: Enhanced Super-Resolution Generative Adversarial
Networks"), as the original ESRGAN, BSRGAN, Real-ESRGAN and the community "4x-..." files hold it.

The network: a 3x3 convolution to `features` channels; `blocks` residual-in-residual dense blocks (RRDB: three
dense blocks of five 3x3 convolutions, each seeing every earlier output, growth `growth` channels, LeakyReLU 0.2,
residuals scaled by 0.2) and a 3x3 convolution, added to the first features; one nearest-neighbour x2 upsampling
with a 3x3 convolution and LeakyReLU per doubling; a 3x3 convolution with LeakyReLU; a 3x3 convolution to RGB.
Real-ESRGAN's x2 and x1 models first fold 2x2 (4x4) pixel blocks into channels (pixel unshuffle) and then
upsample x4.

Files come in three key layouts, renamed here to one (Real-ESRGAN's): the original ESRGAN's sequential
`model.N...`, BSRGAN's `RRDB_trunk`/`trunk_conv`/`upconv`/`HRconv`, and Real-ESRGAN's `body`/`conv_body`/`conv_up`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

ARCHITECTURE = "ESRGAN"
RESIDUAL_SCALE = 0.2  # dense-block and RRDB residuals are scaled by this (the paper's beta)
SLOPE = 0.2  # LeakyReLU negative slope


@dataclass(frozen=True)
class EsrganConfig:
    """An RRDBNet's hyperparameters, read from its weights."""

    blocks: int  # RRDB blocks (23 for ESRGAN and Real-ESRGAN x4plus, 6 for the anime model)
    features: int  # feature channels (64)
    growth: int  # dense-block growth channels (32)
    doublings: int  # x2 upsamplings after the body (2: x4)
    unshuffle: int = 1  # pixel-unshuffle factor before the body (Real-ESRGAN x2plus: 2, x1: 4)
    channels: int = 3  # image channels in and out

    def __post_init__(self) -> None:
        for name in ("blocks", "features", "growth"):
            if getattr(self, name) < 1:
                raise ValueError(f"ESRGAN {name} {getattr(self, name)} must be at least 1")
        if self.doublings < 0 or self.unshuffle not in (1, 2, 4):
            raise ValueError(f"ESRGAN doublings {self.doublings} / unshuffle {self.unshuffle} are not supported")
        if 2**self.doublings < self.unshuffle:
            raise ValueError(f"ESRGAN scale 2**{self.doublings}/{self.unshuffle} is below 1")

    @property
    def scale(self) -> int:
        """Output pixels per input pixel, along each axis."""
        return 2**self.doublings // self.unshuffle

    @property
    def multiple(self) -> int:
        """Input sizes must be multiples of this (the unshuffle's blocks)."""
        return self.unshuffle

    def describe(self) -> str:
        return f"{self.blocks} blocks, {self.features} features" + (
            f", pixel unshuffle {self.unshuffle}" if self.unshuffle > 1 else ""
        )


class DenseBlock(nn.Module):
    """Five 3x3 convolutions, each reading the block input and every earlier output; a scaled residual."""

    def __init__(self, features: int, growth: int) -> None:
        super().__init__()
        for i in range(1, 6):
            out = features if i == 5 else growth
            setattr(self, f"conv{i}", nn.Conv2d(features + (i - 1) * growth, out, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seen = [x]
        for i in range(1, 5):
            seen.append(F.leaky_relu(getattr(self, f"conv{i}")(torch.cat(seen, 1)), SLOPE))
        return self.conv5(torch.cat(seen, 1)) * RESIDUAL_SCALE + x


class RRDB(nn.Module):
    """Residual in residual dense block: three dense blocks, their output scaled and added to the input."""

    def __init__(self, features: int, growth: int) -> None:
        super().__init__()
        self.rdb1 = DenseBlock(features, growth)
        self.rdb2 = DenseBlock(features, growth)
        self.rdb3 = DenseBlock(features, growth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * RESIDUAL_SCALE + x


class RRDBNet(nn.Module):
    """Images (B, C, H, W) in [0, 1] -> (B, C, sH, sW); H and W multiples of `config.multiple`."""

    def __init__(self, config: EsrganConfig) -> None:
        super().__init__()
        self.config = config
        c, f = config.channels, config.features
        self.conv_first = nn.Conv2d(c * config.unshuffle**2, f, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(f, config.growth) for _ in range(config.blocks)))
        self.conv_body = nn.Conv2d(f, f, 3, 1, 1)
        for i in range(1, config.doublings + 1):
            setattr(self, f"conv_up{i}", nn.Conv2d(f, f, 3, 1, 1))
        self.conv_hr = nn.Conv2d(f, f, 3, 1, 1)
        self.conv_last = nn.Conv2d(f, c, 3, 1, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image
        if self.config.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.config.unshuffle)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for i in range(1, self.config.doublings + 1):
            up = F.interpolate(feat, scale_factor=2.0, mode="nearest")
            feat = F.leaky_relu(getattr(self, f"conv_up{i}")(up), SLOPE)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), SLOPE))


def claims(state: Mapping[str, torch.Tensor]) -> bool:
    """True for the weights of an RRDBNet in any of the three layouts."""
    return (
        {"model.0.weight", "model.1.sub.0.RDB1.conv1.0.weight"} <= state.keys()
        or {"conv_first.weight", "body.0.rdb1.conv1.weight", "conv_body.weight"} <= state.keys()
        or {"conv_first.weight", "RRDB_trunk.0.RDB1.conv1.weight", "trunk_conv.weight"} <= state.keys()
    )


def canonical(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights under RRDBNet's names here (Real-ESRGAN's), from any of the three layouts."""
    if "model.0.weight" in state:
        return _from_sequential(state)
    renames = [
        (r"^RRDB_trunk\.(\d+)\.RDB(\d)\.", r"body.\1.rdb\2."),
        (r"^trunk_conv\.", "conv_body."),
        (r"^upconv(\d)\.", r"conv_up\1."),
        (r"^HRconv\.", "conv_hr."),
    ]
    out = {}
    for key, value in state.items():
        for pattern, replacement in renames:
            key = re.sub(pattern, replacement, key)
        out[key] = value
    return out


def _from_sequential(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The original ESRGAN's `model.N` layout: conv, shortcut(RRDBs + conv), [upsample, conv, act] per x2,
    conv, act, conv."""
    if any(".conv1x1." in k for k in state):
        raise ValueError("ESRGAN+ weights (dense blocks with 1x1 convolutions) are not supported")
    blocks = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"model\.1\.sub\.(\d+)\.RDB", k)))
    top = max(int(k.split(".")[1]) for k in state if k.startswith("model."))  # index of the last convolution
    doublings = (top - 4) // 3
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        index = int(parts[1])
        if index == 0:
            out[f"conv_first.{parts[-1]}"] = value
        elif index == 1:
            if parts[3] == str(blocks):  # the body's closing convolution
                out[f"conv_body.{parts[-1]}"] = value
            else:  # model.1.sub.B.RDBk.convj.0.weight
                out[f"body.{parts[3]}.rdb{parts[4][3:]}.{parts[5]}.{parts[-1]}"] = value
        elif index <= 3 * doublings and index % 3 == 0:
            out[f"conv_up{index // 3}.{parts[-1]}"] = value
        elif index == 3 * doublings + 2:
            out[f"conv_hr.{parts[-1]}"] = value
        elif index == 3 * doublings + 4:
            out[f"conv_last.{parts[-1]}"] = value
        else:
            raise ValueError(f"ESRGAN weight {key} does not fit the original layout of {doublings} upsamplings")
    return out


def config_of(state: Mapping[str, torch.Tensor]) -> EsrganConfig:
    """The hyperparameters of canonical RRDBNet weights, from their keys and shapes."""
    first = state["conv_first.weight"]
    features, in_channels = int(first.shape[0]), int(first.shape[1])
    channels = int(state["conv_last.weight"].shape[0])
    blocks = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"body\.(\d+)\.", k)))
    doublings = sum(1 for k in state if re.fullmatch(r"conv_up\d+\.weight", k))
    if in_channels % channels or (in_channels // channels) not in (1, 4, 16):
        raise ValueError(f"ESRGAN takes {in_channels} input channels for {channels} output channels: not supported")
    unshuffle = {1: 1, 4: 2, 16: 4}[in_channels // channels]
    growth = int(state["body.0.rdb1.conv1.weight"].shape[0])
    return EsrganConfig(blocks, features, growth, doublings, unshuffle, channels)
