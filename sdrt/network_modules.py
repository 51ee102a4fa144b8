"""Torch modules with exactly a network's spec IO (`sdrt.components`), around the model parts diffusers and
transformers load: what the exporter traces and the torch backend runs.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from sdrt.spec import ComponentSpec


class SpecModule(nn.Module):
    """A module whose forward takes the spec's inputs, positionally (tracing) or by name (the torch backend)."""

    def __init__(self, spec: ComponentSpec) -> None:
        super().__init__()
        self.spec = spec

    def bind(self, args: tuple, kwargs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        feeds = dict(zip(self.spec.input_names, args, strict=False))
        feeds.update(kwargs)
        if set(feeds) != set(self.spec.input_names):
            raise ValueError(f"{self.spec.name} takes {self.spec.input_names}, got {sorted(feeds)}")
        return feeds


class TextEncoderModule(SpecModule):
    """CLIPTextModel(WithProjection) after its token lookup: embeddings and CLIP skips in, a chosen layer out.

    transformers' CLIP text models take token ids only, so this runs their parts (position embeddings,
    causal self-attention layers, final norm, projection) on the embeddings the runtime looked up.
    """

    def __init__(self, text_encoder: nn.Module, spec: ComponentSpec) -> None:
        super().__init__(spec)
        self.text_encoder = text_encoder
        # transformers 5 flattens CLIPTextModel (its parts on the model itself); WithProjection keeps .text_model
        self.text_model = getattr(text_encoder, "text_model", text_encoder)
        self.layer_offset = int(spec.attributes["layer_offset"])
        self.pooled = "pooled_embeddings" in spec.output_names
        self.final_layer_norm = self.text_model.final_layer_norm if spec.attributes["final_layer_norm"] else None

    @property
    def adapted(self) -> nn.Module:
        """The transformers text model a LoRA adapts."""
        return self.text_encoder

    def token_table(self) -> torch.Tensor:
        """The token-embedding matrix (vocab, D) the runtime looks ids up in."""
        return self.text_encoder.get_input_embeddings().weight

    def forward(self, *args: torch.Tensor, **kwargs: torch.Tensor):
        from transformers.masking_utils import create_causal_mask

        feeds = self.bind(args, kwargs)
        clip_skip = feeds["clip_skip"].to(torch.int64)
        hidden = self.text_model.embeddings(inputs_embeds=feeds["inputs_embeds"])
        mask = create_causal_mask(
            config=self.text_model.config, inputs_embeds=hidden, attention_mask=None, past_key_values=None
        )
        layers = []
        for layer in self.text_model.encoder.layers:
            hidden = layer(hidden, mask, is_causal=True)
            layers.append(hidden)
        stacked = torch.stack(layers, dim=1)  # (B, L, T, D): every layer's output
        index = (stacked.shape[1] - 1 - self.layer_offset - clip_skip).view(-1, 1, 1, 1)
        picked = torch.gather(stacked, 1, index.expand(-1, 1, stacked.shape[2], stacked.shape[3])).squeeze(1)
        if self.final_layer_norm is not None:
            picked = self.final_layer_norm(picked)
        if not self.pooled:
            return picked
        last = self.text_model.final_layer_norm(hidden)
        rows = torch.arange(last.shape[0], device=last.device)
        pooled = last[rows, feeds["eos_position"].to(torch.int64)]
        return picked, self.text_encoder.text_projection(pooled)


class UNetModule(SpecModule):
    """UNet2DConditionModel with the spec's IO: one timestep per sample, conditioning inputs by name."""

    def __init__(self, unet: nn.Module, spec: ComponentSpec) -> None:
        super().__init__(spec)
        self.unet = unet
        self.added_cond = tuple(spec.attributes.get("added_cond", ()))
        self.residuals = tuple(spec.attributes.get("residuals", ()))

    @property
    def adapted(self) -> nn.Module:
        """The diffusers UNet a LoRA adapts."""
        return self.unet

    def forward(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        feeds = self.bind(args, kwargs)
        sample, timestep, states = feeds.pop("sample"), feeds.pop("timestep"), feeds.pop("encoder_hidden_states")
        added = {name: feeds.pop(name) for name in self.added_cond}
        if self.residuals:  # what ControlNets add after each down block and the mid block (zeros without any)
            *down, mid = (feeds.pop(name) for name in self.residuals)
            feeds.update(down_block_additional_residuals=tuple(down), mid_block_additional_residual=mid)
        return self.unet(
            sample,
            timestep,
            encoder_hidden_states=states,
            added_cond_kwargs=added or None,
            return_dict=False,
            **feeds,  # class_labels, for UNets with a class embedding; the residuals
        )[0]


class ControlNetModule(SpecModule):
    """ControlNetModel with the spec's IO: its residuals at scale 1 and never pooled (the runtime scales and pools)."""

    def __init__(self, controlnet: nn.Module, spec: ComponentSpec) -> None:
        super().__init__(spec)
        self.controlnet = controlnet
        if getattr(controlnet.config, "global_pool_conditions", False):
            # pooled residuals are (B, C, 1, 1), not the spec's shapes: the runtime pools after scaling, as diffusers
            controlnet.register_to_config(global_pool_conditions=False)
        self.added_cond = tuple(spec.attributes.get("added_cond", ()))

    @property
    def adapted(self) -> nn.Module:
        return self.controlnet

    def forward(self, *args: torch.Tensor, **kwargs: torch.Tensor):
        feeds = self.bind(args, kwargs)
        added = {name: feeds.pop(name) for name in self.added_cond}
        down, mid = self.controlnet(
            feeds["sample"],
            feeds["timestep"],
            encoder_hidden_states=feeds["encoder_hidden_states"],
            controlnet_cond=feeds["controlnet_cond"],
            conditioning_scale=1.0,
            added_cond_kwargs=added or None,
            guess_mode=False,
            return_dict=False,
        )
        return (*down, mid)


class ImageEncoderModule(nn.Module):
    """CLIPVisionModelWithProjection with the spec's IO: pixel values in, the projected image embedding out."""

    def __init__(self, image_encoder: nn.Module) -> None:
        super().__init__()
        self.image_encoder = image_encoder

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(pixel_values, return_dict=True).image_embeds


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
