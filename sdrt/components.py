"""The Stable Diffusion components, described once: their specs, and torch modules with exactly those IOs.

The exporter traces these modules, the torch backend runs them, and the ONNX and TensorRT backends
run what was traced from them; all of them check feeds against the same `ComponentSpec`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sdrt.spec import ComponentSpec, TensorSpec

TEXT_ENCODER = "text_encoder"
UNET = "unet"
VAE_DECODER = "vae_decoder"
VAE_ENCODER = "vae_encoder"
COMPONENTS = (TEXT_ENCODER, UNET, VAE_DECODER, VAE_ENCODER)


def text_encoder_spec(hidden_size: int, vocab_size: int) -> ComponentSpec:
    """CLIP text encoder: token ids (B, 77) int32 -> last hidden state after the final layer norm (B, 77, D)."""
    return ComponentSpec(
        name=TEXT_ENCODER,
        inputs=(TensorSpec("input_ids", "int32", ("cfg_batch", "text_length")),),
        outputs=(TensorSpec("last_hidden_state", "float32", ("cfg_batch", "text_length", hidden_size)),),
        batch_dim="cfg_batch",
        attributes={"hidden_size": hidden_size, "input_ids_max": vocab_size},
    )


def unet_spec(in_channels: int, out_channels: int, text_hidden_size: int, num_train_timesteps: int) -> ComponentSpec:
    """Denoising UNet: latents (2B, C, h, w), per-sample timesteps (2B,), text states -> noise prediction."""
    latent = ("cfg_batch", in_channels, "latent_height", "latent_width")
    return ComponentSpec(
        name=UNET,
        inputs=(
            TensorSpec("sample", "float32", latent),
            TensorSpec("timestep", "float32", ("cfg_batch",)),
            TensorSpec("encoder_hidden_states", "float32", ("cfg_batch", "text_length", text_hidden_size)),
        ),
        outputs=(TensorSpec("noise_pred", "float32", ("cfg_batch", out_channels, "latent_height", "latent_width")),),
        batch_dim="cfg_batch",
        attributes={
            "in_channels": in_channels,
            "out_channels": out_channels,
            "timestep_max": num_train_timesteps,
        },
    )


def vae_decoder_spec(latent_channels: int, latent_factor: int) -> ComponentSpec:
    """VAE decoder: unscaled latents (B, C, h, w) -> images (B, 3, 8h, 8w) in [-1, 1]."""
    f = latent_factor
    return ComponentSpec(
        name=VAE_DECODER,
        inputs=(TensorSpec("latent", "float32", ("batch", latent_channels, "latent_height", "latent_width")),),
        outputs=(TensorSpec("images", "float32", ("batch", 3, f"{f}*latent_height", f"{f}*latent_width")),),
        attributes={"latent_channels": latent_channels},
    )


def vae_encoder_spec(latent_channels: int, latent_factor: int) -> ComponentSpec:
    """VAE encoder: images (B, 3, 8h, 8w) in [-1, 1] -> latent distribution parameters (B, 2C, h, w): mean, logvar."""
    f = latent_factor
    return ComponentSpec(
        name=VAE_ENCODER,
        inputs=(TensorSpec("images", "float32", ("batch", 3, f"{f}*latent_height", f"{f}*latent_width")),),
        outputs=(
            TensorSpec("latent_parameters", "float32", ("batch", 2 * latent_channels, "latent_height", "latent_width")),
        ),
        attributes={"latent_channels": latent_channels},
    )


def component_specs(configs: dict[str, Any]) -> dict[str, ComponentSpec]:
    """All component specs of an SD model from its configs (text_encoder, unet, vae, scheduler dicts)."""
    text, unet, vae = configs["text_encoder"], configs["unet"], configs["vae"]
    factor = latent_factor(vae)
    return {
        TEXT_ENCODER: text_encoder_spec(text["hidden_size"], text["vocab_size"]),
        UNET: unet_spec(
            unet["in_channels"],
            unet["out_channels"],
            unet["cross_attention_dim"],
            configs["scheduler"].get("num_train_timesteps", 1000),
        ),
        VAE_DECODER: vae_decoder_spec(vae["latent_channels"], factor),
        VAE_ENCODER: vae_encoder_spec(vae["latent_channels"], factor),
    }


def latent_factor(vae_config: dict[str, Any]) -> int:
    """Pixels per latent cell: the VAE downsamples once per block after the first."""
    return 2 ** (len(vae_config["block_out_channels"]) - 1)


class TextEncoderModule(nn.Module):
    """CLIPTextModel with the spec's IO: int32 ids in, last hidden state out."""

    def __init__(self, text_encoder: nn.Module) -> None:
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids.to(torch.int64), return_dict=False)[0]


class UNetModule(nn.Module):
    """UNet2DConditionModel with the spec's IO: one timestep per sample."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]


class VaeDecoderModule(nn.Module):
    """AutoencoderKL.decode on latents already divided by the scaling factor."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent, return_dict=False)[0]


class VaeEncoderModule(nn.Module):
    """AutoencoderKL.encode returning the diagonal Gaussian's parameters; the runtime samples with its own generator."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(images, return_dict=False)[0].parameters


def component_modules(text_encoder: nn.Module, unet: nn.Module, vae: nn.Module) -> dict[str, nn.Module]:
    """The torch module of every component, in eval mode."""
    modules = {
        TEXT_ENCODER: TextEncoderModule(text_encoder),
        UNET: UNetModule(unet),
        VAE_DECODER: VaeDecoderModule(vae),
        VAE_ENCODER: VaeEncoderModule(vae),
    }
    return {name: module.eval() for name, module in modules.items()}
