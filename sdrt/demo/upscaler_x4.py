"""Random-weight Stable Diffusion x4 upscalers: the demo variant "upscaler_x4".

Preset "tiny" runs in seconds on a CPU; preset "x4" has the published sizes of stabilityai's x4 upscaler (its
original config, x4-upscaling.yaml: a 256/512/512/1024-channel UNet taking 7 channels, with a 1000-class noise-level
embedding, self-attention only at the lowest level; a 128/256/512 VAE, 4x, scaling factor 0.08333; OpenCLIP ViT-H's
23 text layers), so it costs what the real model costs. Schedulers as the original config: v-prediction, its
"linear" 0.0001..0.02 schedule (diffusers' scaled_linear) for both the sampler and the low-res noising.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sdrt.demo import sd
from sdrt.demo.tokenizer import demo_tokenizer

VARIANTS = ("upscaler_x4",)
# (UNet block widths, heads, VAE widths, VAE layers per block, text sizes) per preset
SIZES = {
    "tiny": ((32, 32, 64, 64), 4, (32, 32, 64), 1, sd.SIZES["tiny"].text),
    "x4": ((256, 512, 512, 1024), 8, (128, 256, 512), 2, sd.SIZES["sd21"].text),
}
SCHEDULE = {"beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}


def write(root: Path, seed: int, preset: str, variant: str, device: str | None = None) -> str:
    """Write an x4 upscaler of `preset` sizes into `root`; return its one-line description."""
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet_widths, heads, vae_widths, vae_layers, text = SIZES[preset]
    tokenizer = demo_tokenizer("!")  # OpenCLIP's tokenizer pads with "!"
    vocab = tokenizer.get_vocab()
    with torch.device(device or "cpu"):
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(vocab), **text, max_position_embeddings=77, hidden_act="gelu",
                projection_dim=text["hidden_size"], bos_token_id=vocab["<|startoftext|>"],
                eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["!"],
            )
        )  # fmt: skip
        torch.manual_seed(seed + 1)
        unet = UNet2DConditionModel(
            sample_size=128,
            in_channels=7,
            out_channels=4,
            block_out_channels=unet_widths,
            layers_per_block=2 if preset == "x4" else 1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            only_cross_attention=(True, True, True, False),
            attention_head_dim=heads,
            cross_attention_dim=text["hidden_size"],
            use_linear_projection=True,
            num_class_embeds=1000,
            norm_num_groups=32,
        )
        torch.manual_seed(seed + 2)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, block_out_channels=vae_widths, down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4, layers_per_block=vae_layers,
            norm_num_groups=32, sample_size=256, scaling_factor=0.08333,
        )  # fmt: skip
        with torch.no_grad():  # as sd.py: a halved output keeps random images from saturating
            unet.conv_out.weight.mul_(0.5)
            sd.randomize_layer_norm(sd.final_layer_norm(text_encoder), seed + 3)
    tokenizer.save_pretrained(root / "tokenizer")
    for name, module in (("text_encoder", text_encoder), ("unet", unet), ("vae", vae)):
        module.to("cpu").save_pretrained(root / name, safe_serialization=True)
    DDIMScheduler(**SCHEDULE, prediction_type="v_prediction", clip_sample=False, set_alpha_to_one=False,
                  steps_offset=1).save_pretrained(root / "scheduler")  # fmt: skip
    DDPMScheduler(**SCHEDULE).save_pretrained(root / "low_res_scheduler")
    index = {
        "_class_name": "StableDiffusionUpscalePipeline",
        "low_res_scheduler": ["diffusers", "DDPMScheduler"],
        "max_noise_level": 350,
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (root / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return "random weights in the Stable Diffusion x4 upscaler architecture"
