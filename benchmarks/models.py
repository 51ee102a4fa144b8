"""Random-weight models with the published architectures, so a benchmark times exactly what the real model costs.

Nothing is downloaded: the configs are the published ones (`sdrt.demo`: SD 1.5 and SDXL 1.0 base and
refiner). Only the tokenizers differ: sdrt's demo byte-level BPE stands in for CLIP's 49408-token one (the
embedding tables keep the published vocabulary size, so the parameter counts match). Random weights give
abstract images, and in fp16 they may overflow; neither changes how long the networks take.

    python -m benchmarks.models sdxl models/sdxl-random [--device cuda]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from sdrt.demo import write_demo_model
from sdrt.demo.sdxl import sdxl_modules

__all__ = ["PRESETS", "sdxl_modules", "write_model"]

# benchmark preset -> (demo preset, demo variant)
PRESETS = {
    "tiny": ("tiny", "sd1"),
    "sd15": ("sd15", "sd1"),
    "sdxl": ("sdxl", "sdxl"),
    "sdxl-refiner": ("sdxl", "sdxl-refiner"),
    "sdxl-small": ("sdxl-small", "sdxl"),
    "sdxl-tiny": ("tiny", "sdxl"),
    "unclip": ("sd21", "unclip"),  # SD 2.1 768 with OpenCLIP ViT-H/14's vision encoder
    "unclip-tiny": ("tiny", "unclip"),
    "sdxl-refiner-tiny": ("tiny", "sdxl-refiner"),
    # ControlNets that fit the models above (the published ControlNet architecture: the UNet's encoder copied)
    "sd15-controlnet": ("sd15", "controlnet"),
    "sdxl-controlnet": ("sdxl", "controlnet-sdxl"),
    "sdxl-small-controlnet": ("sdxl-small", "controlnet-sdxl"),
    "controlnet-tiny": ("tiny", "controlnet"),
    "x4": ("x4", "upscaler_x4"),  # the SD x4 upscaler at its published sizes
    "x4-tiny": ("tiny", "upscaler_x4"),
}


def write_model(out_dir: str | os.PathLike, preset: str, seed: int = 0, device: str | None = None) -> Path:
    """Write a random-weight model of benchmark `preset` in diffusers layout to `out_dir`.

    SDXL weights are made on `device` (default: cuda when there is one, which makes 3.5 B random numbers in
    seconds) and saved in fp16, as the published checkpoint is.
    """
    if preset not in PRESETS:
        raise ValueError(f"preset {preset!r} is not one of {', '.join(PRESETS)}")
    demo_preset, variant = PRESETS[preset]
    return write_demo_model(out_dir, seed=seed, preset=demo_preset, variant=variant, device=device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preset", choices=list(PRESETS))
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="where SDXL weights are created (default cuda if present)")
    args = parser.parse_args(argv)
    write_model(args.out_dir, args.preset, seed=args.seed, device=args.device)
    print(f"wrote a random-weight {args.preset} model to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
