"""Decoded tensors -> PIL images, and PNGs carrying their generation parameters as the web UI writes them."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from sdrt.files import atomic_file
from sdrt.lazy import deferred

if TYPE_CHECKING:
    import torch
else:
    torch = deferred("torch")


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(N, 3, H, W) float in [-1, 1] -> 8-bit RGB images, rounded exactly as diffusers' VaeImageProcessor does."""
    from diffusers.image_processor import VaeImageProcessor

    return VaeImageProcessor.numpy_to_pil(VaeImageProcessor.pt_to_numpy(VaeImageProcessor.denormalize(images)))


@dataclass(frozen=True)
class Parameters:
    """The settings that produced one image, for the PNG `parameters` text chunk."""

    prompt: str  # positive prompt
    negative_prompt: str  # negative prompt ("" for none)
    steps: int  # denoising steps
    sampler: str  # the web UI's sampler label, e.g. "DPM++ 2M Karras"
    guidance_scale: float  # CFG scale
    seed: int  # the image's own seed
    width: int  # pixels
    height: int  # pixels
    model_hash: str  # short hash of the source weights
    model: str  # model name
    clip_skip: int = 0  # diffusers' numbering; the web UI writes it plus one ("Clip skip: 2")
    denoising_strength: float | None = None  # image-to-image / inpainting strength
    refiner: str | None = None  # the refiner model's name, when a refiner ran after the base
    refiner_switch_at: float | None = None  # the share of the schedule the base ran before the refiner
    vae: str | None = None  # the swapped-in VAE's file name, when the artifact was exported with one
    vae_hash: str | None = None  # its short hash
    extra: tuple[tuple[str, str], ...] = ()  # more "Key: value" pairs in order (the hires fix's)

    def infotext(self) -> str:
        """The AUTOMATIC1111 web UI's infotext: prompt, 'Negative prompt: ...', then 'Key: value' pairs."""
        from sdrt import __version__

        lines = [self.prompt]
        if self.negative_prompt:
            lines.append(f"Negative prompt: {self.negative_prompt}")
        pairs: dict[str, object] = {
            "Steps": self.steps,
            "Sampler": self.sampler,
            "CFG scale": f"{self.guidance_scale:g}",
            "Seed": self.seed,
            "Size": f"{self.width}x{self.height}",
            "Model hash": self.model_hash,
            "Model": self.model,
            **({"VAE hash": self.vae_hash, "VAE": self.vae} if self.vae is not None else {}),
            **({"Denoising strength": f"{self.denoising_strength:g}"} if self.denoising_strength is not None else {}),
            **({"Clip skip": self.clip_skip + 1} if self.clip_skip else {}),
            **(
                {"Refiner": self.refiner, "Refiner switch at": f"{self.refiner_switch_at:g}"}
                if self.refiner is not None
                else {}
            ),
            **dict(self.extra),
            "Version": f"sdrt {__version__}",
        }
        lines.append(", ".join(f"{k}: {_quote(str(v))}" for k, v in pairs.items()))
        return "\n".join(lines)


# one "Key: value" pair of an infotext's last line; a value is quoted when it holds "," or ":"
_PAIR = re.compile(r'\s*([^,:]+?):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def parse_infotext(text: str) -> dict[str, str]:
    """An infotext read back: "Prompt", "Negative prompt" and every "Key: value" of its last line (Size split too)."""
    lines = text.strip().split("\n")
    pairs: dict[str, str] = {}
    last = lines[-1] if lines else ""
    found = _PAIR.findall(last)
    if len(found) >= 3:  # a settings line (Steps, Sampler, ...), not a prompt that happens to hold a colon
        lines = lines[:-1]
        for key, value in found:
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            pairs[key.strip()] = value
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:") :].strip()
        (negative if in_negative else prompt).append(line)
    out = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative), **pairs}
    size = re.fullmatch(r"(\d+)x(\d+)", pairs.get("Size", ""))
    if size:
        out["Size-1"], out["Size-2"] = size.group(1), size.group(2)
    return out


def _quote(value: str) -> str:
    """Quote a value containing the separators, as the web UI does."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"' if ("," in value or ":" in value) else value


def save_png(image: Image.Image, path: str | os.PathLike, parameters: str) -> Path:
    """Write `image` with a `parameters` text chunk, to a temporary name renamed into place."""
    info = PngInfo()
    info.add_text("parameters", parameters)
    with atomic_file(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)
    return Path(path)
