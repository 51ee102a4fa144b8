"""Random-weight SDXL models: the demo variants "sdxl" (base), "sdxl-refiner" and "sdxl-inpaint" (9-channel UNet).

Preset "sdxl" has the published SDXL 1.0 architectures (base: 2.57 B-parameter UNet, CLIP ViT-L and OpenCLIP
ViT-bigG text encoders; refiner: 2.25 B-parameter UNet on ViT-bigG alone), so benchmarks time what the real
models cost; preset "tiny" keeps every part of the topology (two text encoders, the pooled embedding, size
and crop conditioning, four refiner levels) at widths that run in seconds on a CPU. The configs are the
published ones (stabilityai/stable-diffusion-xl-base-1.0 and -refiner-1.0); the tokenizers are the demo BPE,
the embedding tables keep CLIP's 49408 rows at full size so the parameter counts match.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from sdrt.demo.sd import final_layer_norm, randomize_layer_norm
from sdrt.demo.tokenizer import demo_tokenizer

CLIP_VOCAB = 49408

# stabilityai/stable-diffusion-xl-base-1.0 unet/config.json (2,567,463,684 parameters)
BASE_UNET: dict[str, Any] = {
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
# stabilityai/stable-diffusion-xl-refiner-1.0 unet/config.json: four levels, ViT-bigG states only, aesthetic score
REFINER_UNET: dict[str, Any] = BASE_UNET | {
    "block_out_channels": (384, 768, 1536, 1536),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "transformer_layers_per_block": 4,
    "attention_head_dim": (6, 12, 24, 24),
    "cross_attention_dim": 1280,
    "projection_class_embeddings_input_dim": 2560,  # 5 x 256 (size, crop, aesthetic score) + 1280
}
# its vae/config.json (83,653,863 parameters); force_upcast: diffusers decodes in fp32 even in an fp16 pipeline
VAE: dict[str, Any] = {
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
TEXT_ENCODER: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}
# text_encoder_2: OpenCLIP ViT-bigG/14's text tower with its projection (694,659,840 parameters)
TEXT_ENCODER_2: dict[str, Any] = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "hidden_act": "gelu",
    "projection_dim": 1280,
}
SCHEDULER: dict[str, Any] = {
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

# The same topologies at tiny widths, so every SDXL code path runs in seconds (three text layers, so CLIP skip 1
# still has a layer to pick after SDXL's penultimate-layer offset)
_TINY_TEXT = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 3, "num_attention_heads": 4}
TINY = {
    "unet": BASE_UNET
    | {
        "sample_size": 32,
        "block_out_channels": (32, 64),
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "transformer_layers_per_block": (1, 2),
        "attention_head_dim": (2, 4),
        "cross_attention_dim": 64,
        "addition_time_embed_dim": 8,
        "projection_class_embeddings_input_dim": 80,  # 6 x 8 + 32
    },
    "refiner_unet": REFINER_UNET
    | {
        "sample_size": 32,
        "block_out_channels": (32, 32, 64, 64),
        "transformer_layers_per_block": 1,
        "attention_head_dim": (2, 2, 4, 4),
        "cross_attention_dim": 32,
        "addition_time_embed_dim": 8,
        "projection_class_embeddings_input_dim": 72,  # 5 x 8 + 32
    },
    "vae": VAE | {"sample_size": 128, "block_out_channels": (32, 32, 64, 64), "layers_per_block": 1},
    "text_encoder": TEXT_ENCODER | _TINY_TEXT | {"projection_dim": 32},
    "text_encoder_2": TEXT_ENCODER_2 | _TINY_TEXT | {"projection_dim": 32},
}
FULL = {
    "unet": BASE_UNET,
    "refiner_unet": REFINER_UNET,
    "vae": VAE,
    "text_encoder": TEXT_ENCODER,
    "text_encoder_2": TEXT_ENCODER_2,
}
# The full topologies (levels, transformer depths, heads, time ids, 32 bigG layers) at half the widths: what a
# 2-core CPU benchmark can afford (a 0.64 B-parameter base UNet), timing like SDXL's shape of work
SMALL = {
    "unet": BASE_UNET
    | {
        "block_out_channels": (160, 320, 640),
        "cross_attention_dim": 1024,  # 384 + 640
        "projection_class_embeddings_input_dim": 2176,  # 6 x 256 + 640
    },
    "refiner_unet": REFINER_UNET
    | {
        "block_out_channels": (192, 384, 768, 768),
        "cross_attention_dim": 640,
        "projection_class_embeddings_input_dim": 1920,  # 5 x 256 + 640
    },
    "vae": VAE,
    "text_encoder": TEXT_ENCODER | {"hidden_size": 384, "intermediate_size": 1536, "num_attention_heads": 6,
                                    "projection_dim": 384},
    "text_encoder_2": TEXT_ENCODER_2 | {"hidden_size": 640, "intermediate_size": 2560, "num_attention_heads": 10,
                                        "projection_dim": 640},
}  # fmt: skip
CONFIGS = {"tiny": TINY, "sdxl-small": SMALL, "sdxl": FULL}

# variant -> (pipeline class, text encoders it has, UNet config key, UNet input channels, model_index extras)
_VARIANTS: dict[str, tuple[str, tuple[str, ...], str, int, dict[str, Any]]] = {
    "sdxl": ("StableDiffusionXLPipeline", ("text_encoder", "text_encoder_2"), "unet", 4, {}),
    "sdxl-refiner": (
        "StableDiffusionXLImg2ImgPipeline",
        ("text_encoder_2",),
        "refiner_unet",
        4,
        {"requires_aesthetics_score": True},
    ),
    "sdxl-inpaint": (
        "StableDiffusionXLInpaintPipeline",
        ("text_encoder", "text_encoder_2"),
        "unet",
        9,
        {"requires_aesthetics_score": False},
    ),
}
_README = {
    "sdxl": "random weights in the SDXL 1.0 base architecture",
    "sdxl-inpaint": "random weights in the SDXL 1.0 base architecture with a 9-channel (inpainting) UNet",
    "sdxl-refiner": "random weights in the SDXL 1.0 refiner architecture",
}
VARIANTS = tuple(_VARIANTS)


def sdxl_modules(
    preset: str = "sdxl", variant: str = "sdxl", seed: int = 0, device: str | torch.device = "cpu"
) -> dict[str, torch.nn.Module]:
    """Every network of an SDXL variant with random weights, made on `device` ("meta" allocates nothing)."""
    return dict(_modules(preset, variant, seed, device))


def _modules(preset: str, variant: str, seed: int, device: str | torch.device) -> Iterator[tuple[str, Any]]:
    """(part, module) one at a time, so a caller saving them holds one full-size network in memory at once."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    configs = CONFIGS[preset]
    _, encoders, unet_key, in_channels, _ = _VARIANTS[variant]
    vocab = demo_tokenizer().get_vocab()
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    tokens = {
        "vocab_size": len(vocab) if preset == "tiny" else CLIP_VOCAB,
        "max_position_embeddings": 77,
        "bos_token_id": bos,
        "eos_token_id": eos,
    }
    classes = {"text_encoder": CLIPTextModel, "text_encoder_2": CLIPTextModelWithProjection}
    pads = {"text_encoder": eos, "text_encoder_2": vocab["!"]}  # SDXL's second tokenizer pads with "!"
    with torch.device(device):
        for offset, name in enumerate(("text_encoder", "text_encoder_2")):
            if name not in encoders:
                continue
            torch.manual_seed(seed + offset)
            encoder = classes[name](CLIPTextConfig(**configs[name], **tokens, pad_token_id=pads[name]))
            if device != "meta":
                randomize_layer_norm(final_layer_norm(encoder), seed + 10 + offset)
            yield name, encoder
        torch.manual_seed(seed + 2)
        unet = UNet2DConditionModel(**{**configs[unet_key], "in_channels": in_channels})
        if device != "meta":
            with torch.no_grad():
                unet.conv_out.weight.mul_(0.5)  # keeps random-weight images from saturating, as the SD variants
        yield "unet", unet
        torch.manual_seed(seed + 3)
        yield "vae", AutoencoderKL(**configs["vae"])


def write(root: Path, seed: int, preset: str, variant: str, device: str | None = None) -> str:
    """Write an SDXL variant of `preset` sizes into `root`; return its one-line description.

    Full-size weights are made on `device` (default: cuda when there is one) and saved in fp16, as the
    published checkpoints are; one network at a time is held in memory.
    """
    from diffusers import EulerDiscreteScheduler

    pipeline, encoders, _, _, extras = _VARIANTS[variant]
    full = preset == "sdxl"
    device = device or ("cuda" if full and torch.cuda.is_available() else "cpu")
    tokenizers = {"text_encoder": ("tokenizer", "<|endoftext|>"), "text_encoder_2": ("tokenizer_2", "!")}
    for encoder in encoders:
        folder, pad = tokenizers[encoder]
        demo_tokenizer(pad).save_pretrained(root / folder)
    for name, module in _modules(preset, variant, seed, device):
        if full:
            module = module.to(dtype=torch.float16)  # on the device first: half the bytes to move
        module.to("cpu").save_pretrained(root / name, safe_serialization=True)
        del module
    EulerDiscreteScheduler(**SCHEDULER).save_pretrained(root / "scheduler")
    index: dict[str, Any] = {
        "_class_name": pipeline,
        "force_zeros_for_empty_prompt": variant != "sdxl-refiner",
        **extras,
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
    }
    for encoder, cls in (("text_encoder", "CLIPTextModel"), ("text_encoder_2", "CLIPTextModelWithProjection")):
        folder = tokenizers[encoder][0]
        present = encoder in encoders
        index[encoder] = ["transformers", cls] if present else [None, None]
        index[folder] = ["transformers", "CLIPTokenizer"] if present else [None, None]
    (root / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return _README[variant]
