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


def text_encoder_spec(hidden_size: int, vocab_size: int, num_layers: int) -> ComponentSpec:
    """CLIP text encoder: token ids (B, 77) int32 and a per-row CLIP skip (B,) int32 -> text embeddings (B, 77, D).

    Row i's embeddings are the output of layer `num_layers - 1 - clip_skip[i]` through the final layer
    norm, as diffusers' `clip_skip` numbering has it: 0 is the last layer (the usual embeddings), 1 the
    penultimate (the web UI's "CLIP skip 2"). Any value works without a re-export.
    """
    return ComponentSpec(
        name=TEXT_ENCODER,
        inputs=(
            TensorSpec("input_ids", "int32", ("cfg_batch", "text_length")),
            TensorSpec("clip_skip", "int32", ("cfg_batch",)),
        ),
        outputs=(TensorSpec("text_embeddings", "float32", ("cfg_batch", "text_length", hidden_size)),),
        batch_dim="cfg_batch",
        attributes={
            "hidden_size": hidden_size,
            "num_layers": num_layers,
            "input_ids_max": vocab_size,  # exclusive bounds of integer inputs
            "clip_skip_max": num_layers,
        },
    )


def unet_spec(
    in_channels: int,
    out_channels: int,
    text_hidden_size: int,
    num_train_timesteps: int,
    upcast_attention: bool = False,
) -> ComponentSpec:
    """Denoising UNet: latents (2B, C, h, w), per-sample timesteps (2B,), text states (2B, 77k, D) -> noise prediction.

    An inpainting UNet takes C = 9 channels (latents, mask, masked-image latents) and predicts 4.
    The text axis holds k consecutive 77-token chunks of a long prompt.
    """
    latent = ("cfg_batch", in_channels, "latent_height", "latent_width")
    return ComponentSpec(
        name=UNET,
        inputs=(
            TensorSpec("sample", "float32", latent),
            TensorSpec("timestep", "float32", ("cfg_batch",)),
            TensorSpec("encoder_hidden_states", "float32", ("cfg_batch", "text_sequence", text_hidden_size)),
        ),
        outputs=(TensorSpec("noise_pred", "float32", ("cfg_batch", out_channels, "latent_height", "latent_width")),),
        batch_dim="cfg_batch",
        attributes={
            "in_channels": in_channels,
            "out_channels": out_channels,
            "timestep_max": num_train_timesteps,
            # attention computed in fp32 (SD 2.x): an fp16 build must keep attention in fp32 to stay finite
            "upcast_attention": upcast_attention,
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
        TEXT_ENCODER: text_encoder_spec(text["hidden_size"], text["vocab_size"], text["num_hidden_layers"]),
        UNET: unet_spec(
            unet["in_channels"],
            unet["out_channels"],
            unet["cross_attention_dim"],
            configs["scheduler"].get("num_train_timesteps", 1000),
            bool(unet.get("upcast_attention", False)),
        ),
        VAE_DECODER: vae_decoder_spec(vae["latent_channels"], factor),
        VAE_ENCODER: vae_encoder_spec(vae["latent_channels"], factor),
    }


def latent_factor(vae_config: dict[str, Any]) -> int:
    """Pixels per latent cell: the VAE downsamples once per block after the first."""
    return 2 ** (len(vae_config["block_out_channels"]) - 1)


class TextEncoderModule(nn.Module):
    """CLIPTextModel with the spec's IO: int32 ids and CLIP skips in, the chosen layer's normalized states out."""

    def __init__(self, text_encoder: nn.Module) -> None:
        super().__init__()
        self.text_encoder = text_encoder
        # transformers 5 keeps the final layer norm on CLIPTextModel itself; older releases under .text_model
        owner = text_encoder if hasattr(text_encoder, "final_layer_norm") else text_encoder.text_model
        self.final_layer_norm = owner.final_layer_norm

    def forward(self, input_ids: torch.Tensor, clip_skip: torch.Tensor) -> torch.Tensor:
        out = self.text_encoder(input_ids.to(torch.int64), output_hidden_states=True, return_dict=True)
        layers = torch.stack(out.hidden_states[1:], dim=1)  # (B, L, T, D): every layer's output
        index = (layers.shape[1] - 1 - clip_skip.to(torch.int64)).view(-1, 1, 1, 1)
        picked = torch.gather(layers, 1, index.expand(-1, 1, layers.shape[2], layers.shape[3])).squeeze(1)
        return self.final_layer_norm(picked)


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
