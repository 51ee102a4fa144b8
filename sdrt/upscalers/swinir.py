"""SwinIR (Liang et al., 2021, "SwinIR: Image Restoration Using Swin Transformer") for super-resolution.

A 3x3 convolution to `embed_dim` channels (shallow features); residual Swin transformer blocks (RSTB: Swin
layers alternating plain and half-window-shifted window attention with a learned relative position bias, then a
convolution, added to the block's input); a layer norm and a convolution added to the shallow features; and one
of the paper's reconstruction heads: pixel shuffle (classical SR), one-step pixel shuffle (lightweight SR), or
nearest-neighbour upsampling with convolutions (real-world SR, the web UI's "SwinIR 4x"). Images are shifted by
the DIV2K RGB mean and scaled by `image_range` around the network.

Inputs must be multiples of the window size (the runner pads them by reflection, as the paper's code does).
The shifted windows' attention mask is computed from the input's size inside the graph, so one export serves
every size; the mask and position-index buffers the files carry are not read.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

ARCHITECTURE = "SwinIR"
UPSAMPLERS = ("pixelshuffle", "pixelshuffledirect", "nearest+conv", "")
RGB_MEAN = (0.4488, 0.4371, 0.4040)  # DIV2K's mean colour, subtracted before the network
MASKED = -100.0  # attention logit between tokens of different regions of a shifted window


@dataclass(frozen=True)
class SwinIRConfig:
    """A SwinIR's hyperparameters, read from its weights."""

    embed_dim: int  # token channels (180 classical, 240 real-world large, 60 lightweight)
    depths: tuple[int, ...]  # Swin layers per RSTB
    heads: tuple[int, ...]  # attention heads per RSTB
    window: int  # attention window side (8; 7 for the JPEG models)
    mlp_hidden: int  # MLP hidden channels (2 x embed_dim)
    upsampler: str  # one of UPSAMPLERS
    scale: int  # output pixels per input pixel along each axis
    residual_convs: int = 1  # RSTB closing convolutions: 1 ("1conv") or 3 ("3conv")
    features: int = 64  # reconstruction channels (pixelshuffle and nearest+conv heads)
    patch_norm: bool = True  # layer norm after the patch embedding
    qkv_bias: bool = True
    channels: int = 3  # image channels in and out

    def __post_init__(self) -> None:
        if self.upsampler not in UPSAMPLERS:
            raise ValueError(f"SwinIR upsampler {self.upsampler!r} is not one of {UPSAMPLERS}")
        if len(self.depths) != len(self.heads) or not self.depths:
            raise ValueError(f"SwinIR depths {self.depths} and heads {self.heads} must pair up")
        if any(self.embed_dim % h for h in self.heads):
            raise ValueError(f"SwinIR embed_dim {self.embed_dim} is not divisible by the heads {self.heads}")
        if self.residual_convs not in (1, 3) or self.window < 2 or self.scale < 1:
            raise ValueError(f"SwinIR residual_convs {self.residual_convs}, window {self.window}, scale {self.scale}")

    @property
    def multiple(self) -> int:
        return self.window

    @property
    def image_range(self) -> float:
        """The paper's JPEG models (window 7) work on 0..255 values; the SR models on 0..1."""
        return 255.0 if self.window == 7 else 1.0

    def describe(self) -> str:
        return f"{len(self.depths)} RSTB x {self.depths[0]} layers, {self.embed_dim} channels, window {self.window}"


def _residual_conv(dim: int, convs: int) -> nn.Module:
    if convs == 1:
        return nn.Conv2d(dim, dim, 3, 1, 1)
    return nn.Sequential(
        nn.Conv2d(dim, dim // 4, 3, 1, 1),
        nn.LeakyReLU(0.2),
        nn.Conv2d(dim // 4, dim // 4, 1, 1, 0),
        nn.LeakyReLU(0.2),
        nn.Conv2d(dim // 4, dim, 3, 1, 1),
    )


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, with a relative position bias per head."""

    def __init__(self, dim: int, window: int, heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.heads, self.window = heads, window
        self.scale = (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
        self.register_buffer("position_index", relative[..., 0] * (2 * window - 1) + relative[..., 1], persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x (B*nW, N, C) tokens of each window; mask (nW, N, N) of 0 / MASKED, or None."""
        n, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(n, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.position_index.reshape(-1)].reshape(tokens, tokens, -1)
        attn = attn + bias.permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            windows = mask.shape[0]
            attn = attn.reshape(-1, windows, self.heads, tokens, tokens) + mask[None, :, None]
            attn = attn.reshape(-1, self.heads, tokens, tokens)
        out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(n, tokens, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwinLayer(nn.Module):
    """One Swin transformer layer: (shifted) window attention and an MLP, each pre-normed and residual."""

    def __init__(self, config: SwinIRConfig, heads: int, shift: int) -> None:
        super().__init__()
        dim = config.embed_dim
        self.window, self.shift = config.window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, config.window, heads, config.qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, config.mlp_hidden)

    def forward(self, x: torch.Tensor, height: int, width: int, mask: torch.Tensor) -> torch.Tensor:
        batch, _, dim = x.shape
        ws = self.window
        image = self.norm1(x).reshape(batch, height, width, dim)
        if self.shift:
            image = torch.roll(image, shifts=(-self.shift, -self.shift), dims=(1, 2))
        windows = image.reshape(batch, height // ws, ws, width // ws, ws, dim).permute(0, 1, 3, 2, 4, 5)
        attended = self.attn(windows.reshape(-1, ws * ws, dim), mask if self.shift else None)
        attended = attended.reshape(batch, height // ws, width // ws, ws, ws, dim).permute(0, 1, 3, 2, 4, 5)
        image = attended.reshape(batch, height, width, dim)
        if self.shift:
            image = torch.roll(image, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + image.reshape(batch, height * width, dim)
        return x + self.mlp(self.norm2(x))


class ResidualGroup(nn.Module):
    def __init__(self, config: SwinIRConfig, depth: int, heads: int) -> None:
        super().__init__()
        shift = config.window // 2
        self.blocks = nn.ModuleList(SwinLayer(config, heads, 0 if i % 2 == 0 else shift) for i in range(depth))


class RSTB(nn.Module):
    """Residual Swin transformer block: Swin layers, a convolution on their image, plus the block's input."""

    def __init__(self, config: SwinIRConfig, depth: int, heads: int) -> None:
        super().__init__()
        self.residual_group = ResidualGroup(config, depth, heads)
        self.conv = _residual_conv(config.embed_dim, config.residual_convs)

    def forward(self, x: torch.Tensor, height: int, width: int, mask: torch.Tensor) -> torch.Tensor:
        out = x
        for block in self.residual_group.blocks:
            out = block(out, height, width, mask)
        batch, _, dim = x.shape
        image = self.conv(out.transpose(1, 2).reshape(batch, dim, height, width))
        return image.flatten(2).transpose(1, 2) + x


class PatchEmbed(nn.Module):
    """The feature image as tokens (B, HW, C), layer-normed when the model has the norm."""

    def __init__(self, dim: int, norm: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim) if norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.flatten(2).transpose(1, 2)
        return tokens if self.norm is None else self.norm(tokens)


def shift_mask(height: torch.Tensor | int, width: torch.Tensor | int, window: int, shift: int) -> torch.Tensor:
    """(nW, N, N) attention mask of the shifted windows: 0 within a region, MASKED across the rolled-in edge.

    After the roll, the last `window` rows split into the `window - shift` rows that were there and the `shift`
    rows rolled in from the top (likewise columns); tokens of different regions must not attend to each other.
    """
    rows = torch.arange(height)
    cols = torch.arange(width)
    row_region = (rows >= height - window).long() + (rows >= height - shift).long()
    col_region = (cols >= width - window).long() + (cols >= width - shift).long()
    region = row_region[:, None] * 3 + col_region[None, :]
    windows = region.reshape(height // window, window, width // window, window).permute(0, 2, 1, 3)
    windows = windows.reshape(-1, window * window)
    different = windows[:, None, :] != windows[:, :, None]
    return torch.where(different, torch.tensor(MASKED), torch.tensor(0.0))


class SwinIR(nn.Module):
    """Images (B, C, H, W) in [0, 1] -> (B, C, sH, sW); H and W multiples of the window."""

    def __init__(self, config: SwinIRConfig) -> None:
        super().__init__()
        self.config = config
        dim, feat, c = config.embed_dim, config.features, config.channels
        mean = RGB_MEAN if c == 3 else (0.0,) * c
        self.register_buffer("mean", torch.tensor(mean).view(1, c, 1, 1), persistent=False)
        self.conv_first = nn.Conv2d(c, dim, 3, 1, 1)
        self.patch_embed = PatchEmbed(dim, config.patch_norm)
        self.layers = nn.ModuleList(RSTB(config, d, h) for d, h in zip(config.depths, config.heads, strict=True))
        self.norm = nn.LayerNorm(dim)
        self.conv_after_body = _residual_conv(dim, config.residual_convs)
        if config.upsampler in ("pixelshuffle", "nearest+conv"):
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(dim, feat, 3, 1, 1), nn.LeakyReLU())
        if config.upsampler == "pixelshuffle":
            steps: list[nn.Module] = []
            factors = [3] if config.scale == 3 else [2] * int(math.log2(config.scale))
            for factor in factors:
                steps += [nn.Conv2d(feat, factor * factor * feat, 3, 1, 1), nn.PixelShuffle(factor)]
            self.upsample = nn.Sequential(*steps)
            self.conv_last = nn.Conv2d(feat, c, 3, 1, 1)
        elif config.upsampler == "pixelshuffledirect":
            self.upsample = nn.Sequential(nn.Conv2d(dim, config.scale**2 * c, 3, 1, 1), nn.PixelShuffle(config.scale))
        elif config.upsampler == "nearest+conv":
            for i in range(1, int(math.log2(config.scale)) + 1):
                setattr(self, f"conv_up{i}", nn.Conv2d(feat, feat, 3, 1, 1))
            self.conv_hr = nn.Conv2d(feat, feat, 3, 1, 1)
            self.conv_last = nn.Conv2d(feat, c, 3, 1, 1)
        else:
            self.conv_last = nn.Conv2d(dim, c, 3, 1, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The deep features: tokens through every RSTB, normed, back to an image."""
        batch, dim, height, width = x.shape
        mask = shift_mask(height, width, self.config.window, self.config.window // 2).to(x.dtype)
        tokens = self.patch_embed(x)
        for layer in self.layers:
            tokens = layer(tokens, height, width, mask)
        return self.norm(tokens).transpose(1, 2).reshape(batch, dim, height, width)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        scale, upsampler = self.config.scale, self.config.upsampler
        x = (image - self.mean) * self.config.image_range
        shallow = self.conv_first(x)
        deep = self.conv_after_body(self.features(shallow)) + shallow
        if upsampler == "pixelshuffle":
            out = self.conv_last(self.upsample(self.conv_before_upsample(deep)))
        elif upsampler == "pixelshuffledirect":
            out = self.upsample(deep)
        elif upsampler == "nearest+conv":
            feat = self.conv_before_upsample(deep)
            for i in range(1, int(math.log2(scale)) + 1):
                up = F.interpolate(feat, scale_factor=2.0, mode="nearest")
                feat = F.leaky_relu(getattr(self, f"conv_up{i}")(up), 0.2)
            out = self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))
        else:
            out = x + self.conv_last(deep)
        return out / self.config.image_range + self.mean


def claims(state: Mapping[str, torch.Tensor]) -> bool:
    return "layers.0.residual_group.blocks.0.attn.relative_position_bias_table" in state and (
        "conv_first.weight" in state or "conv_first.1.weight" in state
    )


# buffers the paper's code saves with the weights; computed here instead
_BUFFERS = re.compile(r".*\.(attn_mask|relative_position_index)$")


def canonical(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if "conv_first.1.weight" in state:
        raise ValueError("SwinIR with a pixel-unshuffled input (conv_first.1) is not supported")
    if "absolute_pos_embed" in state:
        raise ValueError("SwinIR with an absolute position embedding (tied to one input size) is not supported")
    return {k: v for k, v in state.items() if not _BUFFERS.match(k)}


def config_of(state: Mapping[str, torch.Tensor]) -> SwinIRConfig:
    """The hyperparameters, from the keys and shapes."""
    first = state["conv_first.weight"]
    dim, channels = int(first.shape[0]), int(first.shape[1])
    layers = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"layers\.(\d+)\.", k)))
    depths, heads = [], []
    for i in range(layers):
        blocks = {
            int(m.group(1)) for k in state if (m := re.match(rf"layers\.{i}\.residual_group\.blocks\.(\d+)\.", k))
        }
        depths.append(max(blocks) + 1)
        heads.append(int(state[f"layers.{i}.residual_group.blocks.0.attn.relative_position_bias_table"].shape[1]))
    table = int(state["layers.0.residual_group.blocks.0.attn.relative_position_bias_table"].shape[0])
    window = (math.isqrt(table) + 1) // 2
    features = 64
    if "conv_before_upsample.0.weight" in state:
        features = int(state["conv_before_upsample.0.weight"].shape[0])
        if "conv_up1.weight" in state:
            upsampler = "nearest+conv"
            scale = 2 ** sum(1 for k in state if re.fullmatch(r"conv_up\d\.weight", k))
        else:
            upsampler = "pixelshuffle"
            convs = [state[k] for k in sorted(state) if re.fullmatch(r"upsample\.\d+\.weight", k)]
            scale = 3 if len(convs) == 1 and convs[0].shape[0] == 9 * features else 2 ** len(convs)
    elif "upsample.0.weight" in state:
        upsampler = "pixelshuffledirect"
        scale = math.isqrt(int(state["upsample.0.weight"].shape[0]) // channels)
    else:
        upsampler, scale = "", 1
    return SwinIRConfig(
        embed_dim=dim,
        depths=tuple(depths),
        heads=tuple(heads),
        window=window,
        mlp_hidden=int(state["layers.0.residual_group.blocks.0.mlp.fc1.weight"].shape[0]),
        upsampler=upsampler,
        scale=scale,
        residual_convs=1 if "conv_after_body.weight" in state else 3,
        features=features,
        patch_norm="patch_embed.norm.weight" in state,
        qkv_bias="layers.0.residual_group.blocks.0.attn.qkv.bias" in state,
        channels=channels,
    )
