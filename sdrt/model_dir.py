"""Reading a diffusers-format Stable Diffusion model directory strictly from disk."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdrt.components import latent_factor
from sdrt.files import read_json_object
from sdrt.hashing import files_sha256

log = logging.getLogger(__name__)

REQUIRED_PARTS = ("text_encoder", "tokenizer", "unet", "vae", "scheduler")
_WEIGHT_FILES = {
    "text_encoder": ("model.safetensors",),
    "unet": ("diffusion_pytorch_model.safetensors",),
    "vae": ("diffusion_pytorch_model.safetensors",),
}
# diffusers pipeline classes whose model directories hold one SD 1.x/2.x text encoder, UNet and VAE
SUPPORTED_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline")


@dataclass(frozen=True)
class ModelDir:
    """A validated diffusers model directory: its configs and weight files, nothing loaded yet."""

    path: Path  # the directory holding model_index.json
    family: str  # "sd1" or "sd2"
    configs: dict[str, Any]  # "text_encoder", "unet", "vae", "scheduler" -> config dict

    @classmethod
    def open(cls, path: str | os.PathLike) -> ModelDir:
        """Validate the layout and read the configs; raise ValueError naming what is missing or wrong."""
        root = Path(path)
        if not root.is_dir():
            raise ValueError(f"model directory {root} does not exist or is not a directory")
        index_file = root / "model_index.json"
        if not index_file.is_file():
            raise ValueError(
                f"{root} is not a diffusers model directory: it has no model_index.json "
                f"(expected model_index.json and {', '.join(p + '/' for p in REQUIRED_PARTS)})"
            )
        index = read_json_object(index_file)
        pipeline = index.get("_class_name")
        if pipeline not in SUPPORTED_PIPELINES:
            raise ValueError(
                f"{index_file}: pipeline {pipeline!r} is not supported; supported: {list(SUPPORTED_PIPELINES)}"
            )
        missing = [p for p in REQUIRED_PARTS if not (root / p).is_dir()]
        if missing:
            raise ValueError(f"model directory {root} lacks {', '.join(m + '/' for m in missing)}")
        configs = {
            "text_encoder": read_json_object(root / "text_encoder" / "config.json"),
            "unet": read_json_object(root / "unet" / "config.json"),
            "vae": read_json_object(root / "vae" / "config.json"),
            "scheduler": read_json_object(root / "scheduler" / "scheduler_config.json"),
        }
        for part, names in _WEIGHT_FILES.items():
            if not any((root / part / n).is_file() for n in names):
                pickles = sorted(p.name for p in (root / part).glob("*.bin"))
                hint = (
                    f"; it has {pickles}, pickle files that sdrt does not load (convert them to safetensors)"
                    if pickles
                    else ""
                )
                raise ValueError(f"{root / part} has no {' or '.join(names)}{hint}")
        text_act = configs["text_encoder"].get("hidden_act")
        family = "sd1" if text_act == "quick_gelu" else "sd2"  # SD 2.x's OpenCLIP text encoder uses plain GELU
        return cls(path=root, family=family, configs=configs)

    @property
    def latent_factor(self) -> int:
        return latent_factor(self.configs["vae"])

    @property
    def native_size(self) -> int:
        """Image size in pixels the UNet was trained at: 512 for SD 1.x, 768 for SD 2.x-768."""
        return int(self.configs["unet"].get("sample_size", 64)) * self.latent_factor

    def weight_files(self) -> list[str]:
        """Relative paths of the weight files, for the source hash."""
        return [
            f"{part}/{n}" for part, names in _WEIGHT_FILES.items() for n in names if (self.path / part / n).is_file()
        ]

    def weights_sha256(self) -> str:
        return files_sha256(self.path, self.weight_files())

    def load_modules(self):
        """Load the text encoder, UNet and VAE from safetensors on disk, in eval mode, fp32."""
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel

        opts = {"local_files_only": True, "use_safetensors": True}
        log.info("loading torch modules from %s", self.path)
        text_encoder = CLIPTextModel.from_pretrained(self.path / "text_encoder", **opts)
        unet = UNet2DConditionModel.from_pretrained(self.path / "unet", **opts)
        vae = AutoencoderKL.from_pretrained(self.path / "vae", **opts)
        return text_encoder.eval(), unet.eval(), vae.eval()
