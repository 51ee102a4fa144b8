"""ControlNets (Zhang et al. 2023) as artifacts of their own: one network, steering a base model's UNet.

Exported from a diffusers ControlNetModel directory (config.json and its weights; a single file converted to one),
with the same size flags as any export, built by every backend. It takes the UNet's latents, timestep and text
states (and SDXL's added vectors) plus its conditioning image, and returns the residuals the UNet adds after
each down block and after its mid block: the same names and shapes as the UNet's residual inputs, so a
ControlNet fits a base model exactly when those agree (`fits`, checked when a request names it). The manifest
says which base families and text width it was made for. Its residuals are exported unscaled and unpooled:
scale, guess mode and pooling are the runtime's (`sdrt.runtime.control_residuals`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sdrt.components import CONTROLNET, controlnet_spec
from sdrt.conditioning.embedders import ConditioningContext, Embedder
from sdrt.families import register
from sdrt.families.base import Family, ModedRequest, model_part


def base_families(config: Mapping[str, Any]) -> list[str]:
    """The model families whose UNets a ControlNet of this config was made for (its architecture tells)."""
    if config.get("addition_embed_type") == "text_time":
        return ["sdxl"]
    return ["sd2"] if config.get("use_linear_projection") else ["sd1"]


@dataclass(frozen=True)
class ControlNetFamily(Family):
    """A ControlNet: no text encoders, no VAE, no generation of its own."""

    def claims(self, index: Mapping[str, Any], configs: Mapping[str, Any]) -> bool:
        return index.get("_class_name") == "ControlNetModel"

    def networks(self, configs: Mapping[str, Any]) -> dict:
        return {CONTROLNET: controlnet_spec(configs[CONTROLNET])}

    def latent_factor(self, configs: Mapping[str, Any]) -> int:
        """Its conditioning image's embedding downsamples once per entry after the first (8 for every published one)."""
        return 2 ** (len(configs[CONTROLNET].get("conditioning_embedding_out_channels") or (16, 32, 96, 256)) - 1)

    def vae_scaling_factor(self, configs: Mapping[str, Any]) -> float | None:
        return None  # no VAE

    def native_size(self, configs: Mapping[str, Any]) -> int:
        return {"sdxl": 1024, "sd2": 768}.get(base_families(configs[CONTROLNET])[0], 512)

    def prediction_type(self, configs: Mapping[str, Any]) -> str:
        return "epsilon"  # it predicts residuals; the base model's scheduler decides

    def manifest_extras(self, index: Mapping[str, Any], configs: Mapping[str, Any]) -> dict[str, Any]:
        config = configs[CONTROLNET]
        return {
            "fits": base_families(config),
            "cross_attention_dim": int(config["cross_attention_dim"]),
            "global_pool_conditions": bool(config.get("global_pool_conditions", False)),
        }

    def embedders(self, context: ConditioningContext) -> list[Embedder]:
        raise ValueError("a ControlNet steers a base model: load the base model and name the ControlNet in control=")

    def check_request(self, request: ModedRequest) -> None:
        raise ValueError("a ControlNet steers a base model: load the base model and name the ControlNet in control=")


CONTROLNET_FAMILY = register(
    ControlNetFamily(
        name="controlnet",
        parts=(model_part(CONTROLNET, "ControlNetModel"),),
        network_names=(CONTROLNET,),
        text_encoders=(),
        description="ControlNet",
        modes=(),
        extras_defaults={"fits": [], "cross_attention_dim": 0, "global_pool_conditions": False},
    )
)
