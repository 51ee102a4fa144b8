"""Random-weight GAN upscaler files, in the layouts and formats users have, for the tests, the demo and benchmarks.

Architectures: ESRGAN (RRDBNet, in the original ESRGAN's `model.N` layout, BSRGAN's, or Real-ESRGAN's with its
`params_ema` wrapper), Real-ESRGAN's compact SRVGGNetCompact, and SwinIR (with the mask and index buffers the
paper's files carry). Preset "tiny" runs in milliseconds; "full" has the published sizes (RealESRGAN_x4plus,
realesr-general-x4v3, the real-world SwinIR-L), so it costs what the real files cost. The last convolution is
scaled so random outputs spread over [0, 1] without saturating, where comparisons mean something.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from sdrt.upscalers import compact, esrgan, swinir
from sdrt.upscalers.models import BUILDERS, SUFFIXES

LAYOUTS = {"ESRGAN": ("realesrgan", "original", "bsrgan"), "Compact": ("realesrgan",), "SwinIR": ("swinir",)}
PRESETS = ("tiny", "full")
# the last convolution's weights are scaled by this: random outputs spread over [0, 1] without saturating
_LAST_SCALE = {"ESRGAN": 1.0, "Compact": 0.1, "SwinIR": 2.0}


def config(architecture: str, preset: str = "tiny", scale: int = 4):
    """The hyperparameters of `architecture` at `preset` sizes."""
    if preset not in PRESETS:
        raise ValueError(f"preset {preset!r} is not one of {', '.join(PRESETS)}")
    tiny = preset == "tiny"
    if architecture == esrgan.ARCHITECTURE:
        unshuffle = {4: 1, 2: 2, 1: 4}.get(scale)
        if unshuffle is None:
            raise ValueError(f"ESRGAN demo files are x4, x2 or x1, not x{scale}")
        return esrgan.EsrganConfig(blocks=1 if tiny else 23, features=8 if tiny else 64, growth=32,
                                   doublings=2, unshuffle=unshuffle)  # fmt: skip
    if architecture == compact.ARCHITECTURE:
        return compact.CompactConfig(features=8 if tiny else 64, convs=2 if tiny else 32, scale=scale)
    if architecture == swinir.ARCHITECTURE:
        head = {"upsampler": "nearest+conv", "scale": scale, "residual_convs": 3, "features": 64}  # real-world SR
        if tiny:
            return swinir.SwinIRConfig(embed_dim=12, depths=(2, 2), heads=(2, 3), window=4, mlp_hidden=24, **head)
        return swinir.SwinIRConfig(embed_dim=240, depths=(6,) * 9, heads=(8,) * 9, window=8, mlp_hidden=480, **head)
    raise ValueError(f"architecture {architecture!r} is not one of {', '.join(LAYOUTS)}")


def write_upscaler(
    path: str | os.PathLike,
    architecture: str = "ESRGAN",
    layout: str | None = None,
    preset: str = "tiny",
    scale: int = 4,
    seed: int = 0,
) -> Path:
    """Write a random upscaler file (`.safetensors`, or `.pth` / `.pt` pickles of tensors) in `layout`."""
    out = Path(path)
    if out.suffix.lower() not in SUFFIXES:
        raise ValueError(f"{out.name}: upscaler files are {', '.join(SUFFIXES)}")
    layout = layout or LAYOUTS[architecture][0]
    if layout not in LAYOUTS.get(architecture, ()):
        raise ValueError(f"{architecture} files come in layouts {LAYOUTS.get(architecture)}, not {layout!r}")
    torch.manual_seed(seed)
    cfg = config(architecture, preset, scale)
    module = BUILDERS[architecture](cfg)
    with torch.no_grad():
        for p in module.parameters():  # PyTorch's default init makes flat images; spread the weights a little
            if p.dim() > 1:
                p.mul_(1.5)
        last = module.body[-1] if architecture == compact.ARCHITECTURE else module.conv_last
        last.weight.mul_(_LAST_SCALE[architecture])
        last.bias.fill_(0.5 if architecture == esrgan.ARCHITECTURE else 0.0)
    state = {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}
    state = _in_layout(state, architecture, layout, cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(out))
    else:
        torch.save({"params_ema": state} if layout == "realesrgan" else state, str(out))
    return out


def _in_layout(state: dict, architecture: str, layout: str, cfg) -> dict:
    if architecture == swinir.ARCHITECTURE:  # the buffers the paper's files carry (at their 64-pixel training size)
        mask = swinir.shift_mask(64, 64, cfg.window, cfg.window // 2)
        index = swinir.WindowAttention(cfg.embed_dim, cfg.window, cfg.heads[0], True).position_index
        for i, depth in enumerate(cfg.depths):
            for j in range(depth):
                state[f"layers.{i}.residual_group.blocks.{j}.attn.relative_position_index"] = index.clone()
                if j % 2:
                    state[f"layers.{i}.residual_group.blocks.{j}.attn_mask"] = mask.clone()
        return state
    if layout == "realesrgan":
        return state
    out = {}
    n = cfg.doublings
    for key, value in state.items():
        head, _, tail = key.partition(".")
        if layout == "bsrgan":
            renamed = {"conv_body": "trunk_conv", "conv_hr": "HRconv"}.get(head, head.replace("conv_up", "upconv"))
            if head == "body":
                block, rdb, rest = tail.split(".", 2)
                out[f"RRDB_trunk.{block}.RDB{rdb[3:]}.{rest}"] = value
            else:
                out[f"{renamed}.{tail}"] = value
            continue
        if head == "conv_first":
            out[f"model.0.{tail}"] = value
        elif head == "body":
            block, rdb, conv, kind = tail.split(".")
            out[f"model.1.sub.{block}.RDB{rdb[3:]}.{conv}.0.{kind}"] = value
        elif head == "conv_body":
            out[f"model.1.sub.{cfg.blocks}.{tail}"] = value
        elif head.startswith("conv_up"):
            out[f"model.{3 * int(head[7:])}.{tail}"] = value
        else:
            out[f"model.{3 * n + (2 if head == 'conv_hr' else 4)}.{tail}"] = value
    return out
