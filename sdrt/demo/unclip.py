"""Random-weight Stable unCLIP 2.1 models: the demo variant "unclip" (SD 2.x plus a CLIP image embedding).

Its parts are SD 2.x's (preset sizes: "tiny", or "sd21" for the published SD 2.1 768 architecture) with a
projection class embedding on the UNet, a CLIP vision encoder with projection (tiny, or ViT-H/14 at full
size), the image processor, the image normalizer and the image-noising scheduler, as
StableUnCLIPImg2ImgPipeline loads them.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from sdrt.demo import sd

# CLIPVisionConfig sizes and the processor's image size per preset; "sd21": OpenCLIP ViT-H/14 (632 M parameters)
VISION: dict[str, dict[str, Any]] = {
    "tiny": {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
             "image_size": 32, "patch_size": 4, "projection_dim": 32},
    "sd21": {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 16,
             "image_size": 224, "patch_size": 14, "projection_dim": 1024, "hidden_act": "gelu"},
}  # fmt: skip
VARIANTS = ("unclip",)
# OpenAI CLIP's image normalization, which the published unCLIP feature extractor uses
_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def write(root: Path, seed: int, preset: str, variant: str, device: str | None = None) -> str:
    """Write an unCLIP model of `preset` sizes into `root`; return its one-line description."""
    from diffusers import DDPMScheduler
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    vision = VISION[preset]
    embedding = vision["projection_dim"]
    family = replace(sd._FAMILIES["sd2"], pipeline="StableUnCLIPImg2ImgPipeline", class_labels=2 * embedding)
    with torch.device(device or "cpu"):
        tokenizer, text_encoder, unet, vae, scheduler = sd._components(seed, sd.SIZES[preset], family)
        torch.manual_seed(seed + 4)
        image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**vision))
        normalizer = StableUnCLIPImageNormalizer(embedding_dim=embedding)
        generator = torch.Generator().manual_seed(seed + 5)
        with torch.no_grad():  # a trained normalizer's statistics, not the identity it starts as
            normalizer.mean.copy_(0.5 * torch.randn(normalizer.mean.shape, generator=generator))
            normalizer.std.copy_(0.5 + torch.rand(normalizer.std.shape, generator=generator))
    tokenizer.save_pretrained(root / "tokenizer")
    for name, module in (("text_encoder", text_encoder), ("image_encoder", image_encoder), ("unet", unet),
                         ("vae", vae), ("image_normalizer", normalizer)):  # fmt: skip
        module.to("cpu").save_pretrained(root / name, safe_serialization=True)
    scheduler.save_pretrained(root / "scheduler")
    DDPMScheduler(beta_schedule="squaredcos_cap_v2", num_train_timesteps=1000).save_pretrained(
        root / "image_noising_scheduler"
    )
    size = vision["image_size"]
    CLIPImageProcessor(
        crop_size={"height": size, "width": size}, size={"shortest_edge": size}, image_mean=_CLIP_MEAN,
        image_std=_CLIP_STD,
    ).save_pretrained(root / "feature_extractor")  # fmt: skip
    index = sd.model_index(family.pipeline, type(scheduler).__name__) | {
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
        "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
        "image_normalizer": ["stable_diffusion", "StableUnCLIPImageNormalizer"],
        "image_noising_scheduler": ["diffusers", "DDPMScheduler"],
    }
    for unused in ("safety_checker", "requires_safety_checker"):
        index.pop(unused, None)
    (root / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return "random weights in the Stable unCLIP 2.1 architecture (image variations)"
