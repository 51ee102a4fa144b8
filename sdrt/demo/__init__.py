"""Random-weight models in diffusers layout, for the demo, the tests and the benchmarks.

A variant picks the model family (SD 1.x, SD 2.x, inpainting, SDXL base, refiner and inpainting), a preset
its sizes: "tiny" runs every code path a real model takes in seconds on a CPU; "sd15", "sd21" and "sdxl"
have the published sizes, so they cost exactly what the real models cost. Random weights give abstract
images; the tokenizer is a real CLIP byte-level BPE learned from a small corpus of prompt words.
"""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path
from types import ModuleType

from sdrt.files import atomic_directory

log = logging.getLogger(__name__)

# preset -> the variants that come in its sizes; the first is the preset's default
PRESETS: dict[str, tuple[str, ...]] = {
    "tiny": (
        "sd1",
        "sd2",
        "inpaint",
        "sdxl",
        "sdxl-refiner",
        "sdxl-inpaint",
        "unclip",
        "controlnet",
        "controlnet-sdxl",
        "upscaler_x4",
    ),
    "sd15": ("sd1", "inpaint", "controlnet"),
    "sd21": ("sd2", "unclip"),
    "sdxl": ("sdxl", "sdxl-refiner", "controlnet-sdxl"),
    "sdxl-small": ("sdxl", "sdxl-refiner", "controlnet-sdxl"),  # SDXL's topologies at half widths, for CPU benchmarks
    "x4": ("upscaler_x4",),  # the SD x4 upscaler's published sizes
}
# every variant: those the presets list
VARIANT_NAMES = tuple(dict.fromkeys(variant for variants in PRESETS.values() for variant in variants))
# the modules that write them (each lists its VARIANTS); imported when a model is written, as they import torch
_WRITERS = ("sd", "sdxl", "unclip", "controlnet", "upscaler_x4")


def writers() -> dict[str, ModuleType]:
    """variant -> the module that writes it."""
    modules = [importlib.import_module(f"sdrt.demo.{name}") for name in _WRITERS]
    return {variant: module for module in modules for variant in module.VARIANTS}


def resolve_variant(preset: str, variant: str | None) -> str:
    """The variant to write for `preset` (None: the preset's default); ValueError for unknown or mismatched names."""
    if preset not in PRESETS:
        raise ValueError(f"preset {preset!r} is not one of {', '.join(PRESETS)}")
    if variant is None:
        return PRESETS[preset][0]
    if variant not in VARIANT_NAMES:
        raise ValueError(f"variant {variant!r} is not one of {', '.join(VARIANT_NAMES)}")
    allowed = PRESETS[preset]
    if variant not in allowed:
        fits = [name for name, variants in PRESETS.items() if variant in variants]
        raise ValueError(
            f"variant {variant!r} does not come in preset {preset!r}, which allows {', '.join(allowed)}; "
            f"variant {variant!r} comes in presets {', '.join(fits)}"
        )
    return variant


def write_demo_model(
    out_dir: str | os.PathLike,
    seed: int = 0,
    preset: str = "tiny",
    variant: str | None = None,
    device: str | None = None,
) -> Path:
    """Write a random-weight model of `preset` sizes and `variant` family to `out_dir`, atomically.

    Variants: "sd1" (SD 1.x), "sd2" (SD 2.x 768: OpenCLIP-style gelu text encoder, linear-projection UNet with
    upcast attention, v-prediction), "inpaint" (SD 1.x inpainting: 9-channel UNet input), "sdxl" (SDXL base: two
    text encoders, size and crop conditioning), "sdxl-refiner" (the SDXL refiner: ViT-bigG alone, aesthetic
    score), "sdxl-inpaint" (SDXL with a 9-channel UNet), "unclip" (SD 2.1 unCLIP image variations),
    "controlnet" / "controlnet-sdxl" (a ControlNet for the SD 1.x / SDXL model of the same preset) and "upscaler_x4"
    (the SD x4 upscaler; preset "x4" has its published sizes). None picks
    the preset's own (see PRESETS). Weights are made on `device` (default: the CPU; cuda for full-size SDXL when
    there is one, which makes 3.5 B random numbers in seconds).
    """
    out = Path(out_dir)
    variant = resolve_variant(preset, variant)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"output directory {out} exists and is not empty; choose another path or remove it")
    with atomic_directory(out) as tmp:
        description = writers()[variant].write(tmp, seed, preset, variant, device)
        (tmp / "README.md").write_text(
            f"sdrt demo model (preset {preset}, variant {variant}): {description}.\n"
            "Its images are abstract patterns, not pictures. Point sdrt at a real model directory for real images.\n"
        )
    log.info("wrote demo model (preset %s, variant %s) to %s", preset, variant, out)
    return out


__all__ = ["PRESETS", "VARIANT_NAMES", "resolve_variant", "write_demo_model", "writers"]
