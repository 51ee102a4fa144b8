"""Small random-weight Stable Diffusion models in diffusers layout, for the demo and the tests.

The topology is SD's (four UNet levels with cross-attention in the first three, a four-level VAE with 8x
downsampling, a CLIP text encoder, 77 tokens). The variant picks the family: "sd1" (CLIP with quick-GELU,
epsilon prediction), "sd2" (SD 2.x 768: GELU text encoder, linear-projection UNet with upcast attention,
v-prediction) or "inpaint" (SD 1.x with a 9-channel UNet input). Preset "tiny" has tiny widths, so every code path
a real model takes runs in seconds on a CPU; presets "sd15" and "sd21" have the published SD 1.5 and SD 2.1 sizes,
so they cost exactly what the real models cost (for benchmarks). The tokenizer is a real CLIP byte-level BPE whose
merges are learned from a small embedded corpus of prompt words.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    """Widths and depths of one demo architecture; the variant decides everything else."""

    text: dict[str, int]  # CLIPTextConfig sizes
    unet_channels: tuple[int, ...]  # UNet block_out_channels
    unet_layers: int  # UNet layers_per_block
    vae_channels: tuple[int, ...]  # VAE block_out_channels
    vae_layers: int  # VAE layers_per_block
    head_width: int  # channels per attention head in SD 2.x-style UNets (SD 2.1: 64)
    sample_size: int  # UNet sample_size: default latent size (64 -> 512 px, 96 -> 768 px)
    variants: tuple[str, ...]  # the variants that come in these sizes; the first is the default

    def __post_init__(self) -> None:
        if any(c % self.head_width for c in self.unet_channels):
            raise ValueError(f"head_width {self.head_width} does not divide the UNet widths {self.unet_channels}")
        if not self.variants:
            raise ValueError("a preset needs at least one variant")


PRESETS = {
    # tiny: seconds to write, export and run on a 2-core CPU
    "tiny": Preset(
        text={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4},
        unet_channels=(32, 32, 64, 64),
        unet_layers=1,
        vae_channels=(32, 32, 64, 64),
        vae_layers=1,
        head_width=8,
        sample_size=64,
        variants=("sd1", "sd2", "inpaint"),
    ),
    # sd15: the published Stable Diffusion 1.5 sizes (860M-parameter UNet), so it times like the real model
    "sd15": Preset(
        text={"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12},
        unet_channels=(320, 640, 1280, 1280),
        unet_layers=2,
        vae_channels=(128, 256, 512, 512),
        vae_layers=2,
        head_width=64,
        sample_size=64,
        variants=("sd1", "inpaint"),
    ),
    # sd21: the published Stable Diffusion 2.1 (768) sizes; SD 2 uses 23 of OpenCLIP ViT-H's 24 text layers
    "sd21": Preset(
        text={"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23, "num_attention_heads": 16},
        unet_channels=(320, 640, 1280, 1280),
        unet_layers=2,
        vae_channels=(128, 256, 512, 512),
        vae_layers=2,
        head_width=64,
        sample_size=96,
        variants=("sd2",),
    ),
}


@dataclass(frozen=True)
class Variant:
    """What one model family changes on top of a preset's sizes."""

    pipeline: str  # model_index.json _class_name
    hidden_act: str  # text encoder activation: SD 1.x's CLIP uses quick_gelu, SD 2.x's OpenCLIP gelu
    pad_token: str  # tokenizer pad token: SD 1.x pads with the end token, SD 2.x with "!"
    unet_in_channels: int  # 4 latent channels; inpainting adds 1 mask + 4 masked-image latent channels
    sd2_attention: bool  # SD 2.x UNet: per-block head counts of head_width channels, linear projections, upcast
    prediction_type: str  # what the UNet predicts: "epsilon" (SD 1.x) or "v_prediction" (SD 2.x 768)

    def __post_init__(self) -> None:
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type {self.prediction_type!r} is not one of epsilon, v_prediction")


VARIANTS = {
    "sd1": Variant(
        pipeline="StableDiffusionPipeline",
        hidden_act="quick_gelu",
        pad_token="<|endoftext|>",
        unet_in_channels=4,
        sd2_attention=False,
        prediction_type="epsilon",
    ),
    "sd2": Variant(
        pipeline="StableDiffusionPipeline",
        hidden_act="gelu",
        pad_token="!",
        unet_in_channels=4,
        sd2_attention=True,
        prediction_type="v_prediction",
    ),
    "inpaint": Variant(
        pipeline="StableDiffusionInpaintPipeline",
        hidden_act="quick_gelu",
        pad_token="<|endoftext|>",
        unet_in_channels=9,
        sd2_attention=False,
        prediction_type="epsilon",
    ),
}


def _unet_config(preset: Preset, variant: Variant) -> dict[str, Any]:
    """UNet2DConditionModel arguments for `preset` sizes in `variant`'s family."""
    if variant.sd2_attention:
        # SD 2.x: heads of a fixed width at every level (diffusers calls the per-block head counts attention_head_dim)
        attention: dict[str, Any] = {
            "attention_head_dim": tuple(c // preset.head_width for c in preset.unet_channels),
            "use_linear_projection": True,
            "upcast_attention": True,
        }
    else:
        attention = {"attention_head_dim": 8}  # SD 1.x: 8 heads at every level
    return {
        "sample_size": preset.sample_size,
        "in_channels": variant.unet_in_channels,
        "out_channels": 4,
        "block_out_channels": preset.unet_channels,
        "layers_per_block": preset.unet_layers,
        "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        "cross_attention_dim": preset.text["hidden_size"],
        **attention,
        "norm_num_groups": 32,
    }


def _components(seed: int, preset: Preset, variant: Variant):
    from diffusers import AutoencoderKL, DDIMScheduler, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab, merges = learn_bpe(_CORPUS, _NUM_MERGES)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77, pad_token=variant.pad_token)
    hidden = preset.text["hidden_size"]
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            **preset.text,
            max_position_embeddings=77,
            hidden_act=variant.hidden_act,
            projection_dim=hidden,
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab[variant.pad_token],
        )
    )
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(**_unet_config(preset, variant))
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
    # parity checks meaningful (a clipped image hides errors). It suits every variant: v-prediction's update mixes
    # the latents and the output, so there the output's share of the image is larger, not saturated.
    with torch.no_grad():
        unet.conv_out.weight.mul_(0.5)
        randomize_layer_norm(_final_layer_norm(text_encoder), seed + 3)
    if variant.prediction_type == "v_prediction":
        # the published SD 2.1 (768) scheduler config
        scheduler = DDIMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            num_train_timesteps=1000,
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
            prediction_type="v_prediction",
            timestep_spacing="leading",
        )
    else:
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


def randomize_layer_norm(norm: torch.nn.LayerNorm, seed: int) -> None:
    """Give a freshly made LayerNorm random scales and offsets, as a trained one has.

    transformers initializes them to 1 and 0, so a text encoder's normed output would have a mean of
    exactly ~0, and the web UI's emphasis (which divides by the mean of the weighted embeddings) would
    divide by rounding noise: a real CLIP's final norm has offsets that keep that mean away from 0.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        norm.weight.copy_(1.0 + 0.1 * torch.randn(norm.weight.shape, generator=generator))
        norm.bias.copy_(0.2 + 0.2 * torch.randn(norm.bias.shape, generator=generator))


def _final_layer_norm(text_encoder) -> torch.nn.LayerNorm:
    # transformers 5 keeps it on the model itself; older releases under .text_model
    return getattr(text_encoder, "final_layer_norm", None) or text_encoder.text_model.final_layer_norm


def _model_index(pipeline: str, scheduler: str) -> dict:
    """model_index.json: which class loads each part (no safety checker or feature extractor)."""
    index: dict = {"_class_name": pipeline}
    if pipeline == "StableDiffusionInpaintPipeline":
        import diffusers

        # diffusers' loader reads this to send pre-0.6 inpainting checkpoints to its legacy class; without it, it fails
        index["_diffusers_version"] = diffusers.__version__
    return index | {
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", scheduler],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


_README = {
    "sd1": "random weights in the Stable Diffusion 1.x architecture",
    "sd2": "random weights in the Stable Diffusion 2.x (768, v-prediction) architecture",
    "inpaint": "random weights in the Stable Diffusion 1.x inpainting architecture (9-channel UNet input)",
}


def resolve_variant(preset: str, variant: str | None) -> str:
    """The variant to write for `preset` (None: the preset's default); ValueError for unknown or mismatched names."""
    if preset not in PRESETS:
        raise ValueError(f"preset {preset!r} is not one of {', '.join(PRESETS)}")
    if variant is None:
        return PRESETS[preset].variants[0]
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r} is not one of {', '.join(VARIANTS)}")
    allowed = PRESETS[preset].variants
    if variant not in allowed:
        fits = [name for name, p in PRESETS.items() if variant in p.variants]
        raise ValueError(
            f"variant {variant!r} does not come in preset {preset!r}, which allows {', '.join(allowed)}; "
            f"variant {variant!r} comes in presets {', '.join(fits)}"
        )
    return variant


def write_demo_model(
    out_dir: str | os.PathLike, seed: int = 0, preset: str = "tiny", variant: str | None = None
) -> Path:
    """Write a random-weight model of `preset` sizes and `variant` family to `out_dir`.

    Variants: "sd1" (SD 1.x), "sd2" (SD 2.x 768: OpenCLIP-style gelu text encoder, linear-projection UNet with
    upcast attention, v-prediction DDIM scheduler), "inpaint" (SD 1.x inpainting: 9-channel UNet input). None picks
    the preset's own: "sd2" for "sd21", "sd1" otherwise. Written atomically: a temporary directory renamed into place.
    """
    out = Path(out_dir)
    variant = resolve_variant(preset, variant)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"output directory {out} exists and is not empty; choose another path or remove it")
    family = VARIANTS[variant]
    tokenizer, text_encoder, unet, vae, scheduler = _components(seed, PRESETS[preset], family)
    with atomic_directory(out) as tmp:
        tokenizer.save_pretrained(tmp / "tokenizer")
        text_encoder.save_pretrained(tmp / "text_encoder", safe_serialization=True)
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
        vae.save_pretrained(tmp / "vae", safe_serialization=True)
        scheduler.save_pretrained(tmp / "scheduler")
        index = _model_index(family.pipeline, type(scheduler).__name__)
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        (tmp / "README.md").write_text(
            f"sdrt demo model (preset {preset}{'' if variant == 'sd1' else f', variant {variant}'}): "
            f"{_README[variant]}.\n"
            "Its images are abstract patterns, not pictures. Point sdrt at a real model directory for real images.\n"
        )
    log.info("wrote demo model (preset %s, variant %s) to %s", preset, variant, out)
    return out
