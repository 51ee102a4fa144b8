"""Random-weight models with the published architectures, so a benchmark times exactly what the real model costs.

Nothing is downloaded: the configs below are the published ones (SD 1.5 comes from sdrt.demo_model's
"sd15" preset; SDXL base 1.0's UNet, VAE, CLIP ViT-L and OpenCLIP ViT-bigG text encoders are written out
here). Only the tokenizers differ: sdrt's demo byte-level BPE stands in for CLIP's 49408-token one (the
embedding tables keep the published vocabulary size, so the parameter counts match). Random weights
give abstract images, and in fp16 they may overflow; neither changes how long the networks take.

    python -m benchmarks.models sdxl models/sdxl-random [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from sdrt.demo_model import write_demo_model
from sdrt.files import atomic_directory

CLIP_VOCAB = 49408

# stabilityai/stable-diffusion-xl-base-1.0 unet/config.json (2,567,463,684 parameters)
SDXL_UNET: dict[str, Any] = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,  # 6 x 256 (size and crop conditioning) + 1280 (pooled text)
    "norm_num_groups": 32,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
}
# its vae/config.json (83,653,863 parameters); force_upcast: diffusers decodes in fp32 even in an fp16 pipeline
SDXL_VAE: dict[str, Any] = {
    "sample_size": 1024,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "norm_num_groups": 32,
    "scaling_factor": 0.13025,
    "force_upcast": True,
}
# text_encoder: CLIP ViT-L/14's text tower (123,060,480 parameters)
SDXL_TEXT_ENCODER: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}
# text_encoder_2: OpenCLIP ViT-bigG/14's text tower with its projection (694,659,840 parameters)
SDXL_TEXT_ENCODER_2: dict[str, Any] = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "hidden_act": "gelu",
    "projection_dim": 1280,
}
SDXL_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "interpolation_type": "linear",
    "timestep_spacing": "leading",
    "steps_offset": 1,
    "use_karras_sigmas": False,
}

# The same topology at tiny widths (diffusers' own SDXL test sizes), so the SDXL code paths run in seconds
SDXL_TINY_UNET = SDXL_UNET | {
    "sample_size": 32,
    "block_out_channels": (32, 64),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "transformer_layers_per_block": (1, 2),
    "attention_head_dim": (2, 4),
    "cross_attention_dim": 64,
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 80,  # 6 x 8 + 32
}
SDXL_TINY_VAE = SDXL_VAE | {"sample_size": 128, "block_out_channels": (32, 32, 64, 64), "layers_per_block": 1}
SDXL_TINY_TEXT = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4}
SDXL_TINY_TEXT_ENCODER = SDXL_TEXT_ENCODER | SDXL_TINY_TEXT | {"projection_dim": 32}
SDXL_TINY_TEXT_ENCODER_2 = SDXL_TEXT_ENCODER_2 | SDXL_TINY_TEXT | {"projection_dim": 32}

SDXL_PRESETS = {
    "sdxl": (SDXL_UNET, SDXL_VAE, SDXL_TEXT_ENCODER, SDXL_TEXT_ENCODER_2),
    "sdxl-tiny": (SDXL_TINY_UNET, SDXL_TINY_VAE, SDXL_TINY_TEXT_ENCODER, SDXL_TINY_TEXT_ENCODER_2),
}
PRESETS = ("tiny", "sd15", *SDXL_PRESETS)

_SDXL_INDEX = {
    "_class_name": "StableDiffusionXLPipeline",
    "force_zeros_for_empty_prompt": True,
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def sdxl_modules(
    preset: str = "sdxl",
    seed: int = 0,
    device: str | torch.device = "cpu",
    bos_token_id: int = CLIP_VOCAB - 2,
    eos_token_id: int = CLIP_VOCAB - 1,
) -> dict[str, Any]:
    """The SDXL networks of `preset` with random weights, created on `device` ("meta" allocates nothing)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    unet, vae, text, text_2 = SDXL_PRESETS[preset]
    tokens = {
        "vocab_size": CLIP_VOCAB,
        "max_position_embeddings": 77,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "pad_token_id": eos_token_id,
    }
    modules = {}
    with torch.device(device):
        torch.manual_seed(seed)
        modules["text_encoder"] = CLIPTextModel(CLIPTextConfig(**text, **tokens))
        torch.manual_seed(seed + 1)
        modules["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig(**text_2, **tokens))
        torch.manual_seed(seed + 2)
        modules["unet"] = UNet2DConditionModel(**unet)
        torch.manual_seed(seed + 3)
        modules["vae"] = AutoencoderKL(**vae)
    return modules


def write_model(out_dir: str | os.PathLike, preset: str, seed: int = 0, device: str | None = None) -> Path:
    """Write a random-weight model of `preset` (tiny, sd15, sdxl, sdxl-tiny) in diffusers layout to `out_dir`.

    SDXL weights are created on `device` (default: cuda when there is one, which makes 3.5 B random
    numbers in seconds) and saved in fp16, as the published checkpoint is.
    """
    if preset not in PRESETS:
        raise ValueError(f"preset {preset!r} is not one of {', '.join(PRESETS)}")
    if preset in ("tiny", "sd15"):
        return write_demo_model(out_dir, seed=seed, preset=preset)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"output directory {out} exists and is not empty; choose another path or remove it")
    from diffusers import EulerDiscreteScheduler
    from transformers import CLIPTokenizer

    # the demo model's tokenizer, learned from its small prompt corpus (private there; one tokenizer, not two)
    from sdrt.demo_model import _CORPUS, _NUM_MERGES, learn_bpe

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if preset == "sdxl" else torch.float32
    vocab, merges = learn_bpe(_CORPUS, _NUM_MERGES)
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    modules = sdxl_modules(preset, seed, device, bos_token_id=bos, eos_token_id=eos)
    with atomic_directory(out) as tmp:
        for name in ("tokenizer", "tokenizer_2"):
            CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77).save_pretrained(tmp / name)
        for name, module in modules.items():
            if dtype != torch.float32:
                module = module.to(dtype=dtype)  # on the device first: half the bytes to move
            module.to("cpu").save_pretrained(tmp / name, safe_serialization=True)
        EulerDiscreteScheduler(**SDXL_SCHEDULER).save_pretrained(tmp / "scheduler")
        (tmp / "model_index.json").write_text(json.dumps(_SDXL_INDEX, indent=2) + "\n")
        (tmp / "README.md").write_text(
            f"Random weights in the SDXL base 1.0 architecture (preset {preset}), for benchmarks; "
            "its images are noise.\n"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preset", choices=PRESETS)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="where SDXL weights are created (default cuda if present)")
    args = parser.parse_args(argv)
    write_model(args.out_dir, args.preset, seed=args.seed, device=args.device)
    print(f"wrote a random-weight {args.preset} model to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
