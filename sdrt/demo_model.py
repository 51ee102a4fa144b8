"""A small random-weight Stable Diffusion 1.x model in diffusers layout, for the demo and the tests.

The topology is SD 1.5's (four UNet levels with cross-attention in the first three, a four-level
VAE with 8x downsampling, a CLIP text encoder with quick-GELU, 77 tokens). Preset "tiny" has tiny
widths, so every code path a real model takes runs in seconds on a CPU; preset "sd15" has the
published SD 1.5 sizes, so it costs exactly what the real model costs (for benchmarks). The tokenizer is a real CLIP
byte-level BPE whose merges are learned from a small embedded corpus of prompt words.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from sdrt.files import atomic_directory

log = logging.getLogger(__name__)

_CORPUS = """
a photo of an astronaut riding a horse on the moon, highly detailed, sharp focus, studio lighting
portrait of a woman with red hair in a garden, oil painting, trending on artstation, 4k, 8k
a cat sitting on a wooden table next to a cup of coffee, morning light, bokeh, cinematic
landscape with mountains and a lake at sunset, dramatic clouds, wide angle, masterpiece
a futuristic city at night with neon lights and flying cars, cyberpunk, concept art
blurry, low quality, worst quality, jpeg artifacts, watermark, text, deformed, ugly, extra fingers
an old castle in the forest, fantasy, illustration, digital art, intricate, elegant, colorful
a dog running on the beach, golden hour, photograph, realistic, high resolution, detailed fur
still life of flowers in a vase, watercolor, soft pastel colors, painting by a famous artist
a robot reading a book in a library, warm light, dust, volumetric, octane render, unreal engine
"""

_NUM_MERGES = 400


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def learn_bpe(corpus: str, num_merges: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Learn CLIP-style BPE merges (words end in '</w>') and build the vocabulary CLIP's tokenizer expects."""
    byte_chars = _bytes_to_unicode()
    words = collections.Counter(
        tuple("".join(byte_chars[b] for b in w.encode())) for w in corpus.lower().replace(",", " , ").split()
    )
    splits = {w: list(w[:-1]) + [w[-1] + "</w>"] for w in words}
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: collections.Counter[tuple[str, str]] = collections.Counter()
        for w, count in words.items():
            parts = splits[w]
            for a, b in itertools.pairwise(parts):
                pairs[(a, b)] += count
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))  # ties broken deterministically
        merges.append(best)
        for w in words:
            parts, merged, i = splits[w], [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            splits[w] = merged
    chars = list(byte_chars.values())
    tokens = chars + [c + "</w>" for c in chars] + [a + b for a, b in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab: dict[str, int] = {}
    for token in tokens:
        vocab.setdefault(token, len(vocab))
    return vocab, merges


@dataclass(frozen=True)
class Preset:
    """Widths and depths of one demo architecture; everything else is SD 1.x's."""

    text: dict[str, int]  # CLIPTextConfig sizes
    unet_channels: tuple[int, ...]  # UNet block_out_channels
    unet_layers: int  # UNet layers_per_block
    vae_channels: tuple[int, ...]  # VAE block_out_channels
    vae_layers: int  # VAE layers_per_block


PRESETS = {
    # tiny: seconds to write, export and run on a 2-core CPU
    "tiny": Preset(
        text={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4},
        unet_channels=(32, 32, 64, 64),
        unet_layers=1,
        vae_channels=(32, 32, 64, 64),
        vae_layers=1,
    ),
    # sd15: the published Stable Diffusion 1.5 sizes (860M-parameter UNet), so it times like the real model
    "sd15": Preset(
        text={"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12},
        unet_channels=(320, 640, 1280, 1280),
        unet_layers=2,
        vae_channels=(128, 256, 512, 512),
        vae_layers=2,
    ),
}


def _components(seed: int, preset: Preset):
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab, merges = learn_bpe(_CORPUS, _NUM_MERGES)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    hidden = preset.text["hidden_size"]
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            **preset.text,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            projection_dim=hidden,
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
        )
    )
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        block_out_channels=preset.unet_channels,
        layers_per_block=preset.unet_layers,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=hidden,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    torch.manual_seed(seed + 2)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=preset.vae_channels,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=preset.vae_layers,
        norm_num_groups=32,
        sample_size=512,
        scaling_factor=0.18215,
    )
    # The weights are random; halving the UNet's output keeps the images from saturating, which keeps
    # parity checks meaningful (a clipped image hides errors).
    with torch.no_grad():
        unet.conv_out.weight.mul_(0.5)
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        skip_prk_steps=True,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return tokenizer, text_encoder, unet, vae, scheduler


_MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "feature_extractor": [None, None],
    "requires_safety_checker": False,
    "safety_checker": [None, None],
    "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def write_demo_model(out_dir: str | os.PathLike, seed: int = 0, preset: str = "tiny") -> Path:
    """Write a random-weight model of `preset` to `out_dir` (atomically: a temporary directory renamed into place)."""
    out = Path(out_dir)
    if preset not in PRESETS:
        raise ValueError(f"preset {preset!r} is not one of {', '.join(PRESETS)}")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"output directory {out} exists and is not empty; choose another path or remove it")
    tokenizer, text_encoder, unet, vae, scheduler = _components(seed, PRESETS[preset])
    with atomic_directory(out) as tmp:
        tokenizer.save_pretrained(tmp / "tokenizer")
        text_encoder.save_pretrained(tmp / "text_encoder", safe_serialization=True)
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
        vae.save_pretrained(tmp / "vae", safe_serialization=True)
        scheduler.save_pretrained(tmp / "scheduler")
        (tmp / "model_index.json").write_text(json.dumps(_MODEL_INDEX, indent=2) + "\n")
        (tmp / "README.md").write_text(
            f"sdrt demo model (preset {preset}): random weights in the Stable Diffusion 1.x architecture.\n"
            "Its images are abstract patterns, not pictures. Point sdrt at a real model directory for real images.\n"
        )
    log.info("wrote demo model to %s", out)
    return out
