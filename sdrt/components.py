"""The networks Stable Diffusion families are made of, described once: their specs (data, no torch).

A family (`sdrt.families`) picks and parametrizes these: which text encoders, which UNet conditioning
inputs, which VAE parts. The torch modules with these IOs are in `sdrt.network_modules`: the exporter traces
them, the torch backend runs them, and the ONNX and TensorRT backends run what was traced from them; all of
them check feeds against the same `ComponentSpec`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sdrt.spec import ComponentSpec, TensorSpec

# the network names every family uses for the parts the generic runtime drives
UNET = "unet"
CONTROLNET = "controlnet"
IMAGE_ENCODER = "image_encoder"
VAE_DECODER = "vae_decoder"
VAE_ENCODER = "vae_encoder"
# DeepCache (`sdrt.deep_cache_unet`): the cached feature, an output of the full network and an input of the shallow one
FEATURE = "deep_feature"


TEXT_LENGTH = 77  # tokens per text-encoder row: begin token, 75 prompt tokens, end token


def text_encoder_spec(
    name: str,
    hidden_size: int,
    vocab_size: int,
    num_layers: int,
    *,
    final_layer_norm: bool = True,
    layer_offset: int = 0,
    pooled_size: int | None = None,
) -> ComponentSpec:
    """CLIP text encoder: token embeddings (B, 77, D) and a per-row CLIP skip (B,) int32 -> text embeddings (B, 77, D).

    The engine starts after the token-embedding lookup: the runtime looks ids up in the token table the
    artifact keeps beside the graph (`vocab_size` rows), so textual-inversion vectors join a prompt without
    a re-export. Row i's embeddings are the hidden state `layer_offset + clip_skip[i]` layers before the last
    (diffusers' `clip_skip` numbering), through the final layer norm when `final_layer_norm`: SD 1.x/2.x take
    the last layer normed (offset 0), SDXL the penultimate without the norm (offset 1). Any clip_skip works
    without a re-export. With `pooled_size`, also the pooled, projected embedding (B, P) of
    CLIPTextModelWithProjection, taken at each row's `eos_position` (the end token's index).
    """
    inputs = [
        TensorSpec("inputs_embeds", "float32", ("cfg_batch", "text_length", hidden_size)),
        TensorSpec("clip_skip", "int32", ("cfg_batch",)),
    ]
    outputs = [TensorSpec("text_embeddings", "float32", ("cfg_batch", "text_length", hidden_size))]
    if pooled_size is not None:
        inputs.append(TensorSpec("eos_position", "int32", ("cfg_batch",)))
        outputs.append(TensorSpec("pooled_embeddings", "float32", ("cfg_batch", pooled_size)))
    return ComponentSpec(
        name=name,
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        batch_dim="cfg_batch",
        role="text_encoder",
        attributes={
            "hidden_size": hidden_size,
            "num_layers": num_layers,
            "final_layer_norm": final_layer_norm,
            "layer_offset": layer_offset,
            "vocab_size": vocab_size,  # rows of the token table
            # exclusive bounds of integer inputs
            "clip_skip_max": num_layers - layer_offset,  # clip_skip picks a layer at or after the first
            **({"eos_position_max": TEXT_LENGTH} if pooled_size is not None else {}),
        },
    )


def residual_specs(config: Mapping[str, Any]) -> tuple[TensorSpec, ...]:
    """The residuals a ControlNet adds inside a UNet of this config, in diffusers' order.

    `down_block_residual_i`: one after conv_in and one after every resnet and every downsampler of the down blocks
    (diffusers' down_block_additional_residuals); `mid_block_residual` after the mid block. Each is at the latents'
    size over 2 per downsampling before it, rounded up ("latent_height/4"). A ControlNet's outputs and the UNet's
    residual inputs are these same specs, so a ControlNet fits a UNet exactly when their specs agree.
    """
    channels = tuple(int(c) for c in config["block_out_channels"])
    layers = config.get("layers_per_block", 2)
    per_block = [int(layers)] * len(channels) if isinstance(layers, int) else [int(n) for n in layers]
    levels: list[tuple[int, int]] = [(channels[0], 0)]  # (channels, downsamplings so far)
    level = 0
    for i, width in enumerate(channels):
        levels += [(width, level)] * per_block[i]
        if i < len(channels) - 1:
            level += 1
            levels.append((width, level))

    def spec(name: str, width: int, downsamplings: int) -> TensorSpec:
        suffix = f"/{2**downsamplings}" if downsamplings else ""
        return TensorSpec(name, "float32", ("cfg_batch", width, f"latent_height{suffix}", f"latent_width{suffix}"))

    down = tuple(spec(f"down_block_residual_{i}", width, d) for i, (width, d) in enumerate(levels))
    return (*down, spec("mid_block_residual", channels[-1], level))


def unet_spec(
    in_channels: int,
    out_channels: int,
    text_hidden_size: int,
    num_train_timesteps: int,
    upcast_attention: bool = False,
    added_cond: Sequence[TensorSpec] = (),
    class_labels: TensorSpec | None = None,
    fp32_inputs: Sequence[str] = ("timestep",),
    input_bounds: Mapping[str, float] | None = None,
    residuals: Sequence[TensorSpec] = (),
) -> ComponentSpec:
    """Denoising UNet: latents (2B, C, h, w), per-sample timesteps (2B,), text states (2B, 77k, D) -> noise prediction.

    An inpainting UNet takes C = 2 * latent channels + 1 (latents, mask, masked-image latents). The text axis
    holds k consecutive 77-token chunks of a long prompt. `added_cond` are the UNet's `added_cond_kwargs`
    (SDXL: `text_embeds`, `time_ids`), `class_labels` its class-embedding input (unCLIP's image embedding),
    `residuals` what ControlNets add inside it (`residual_specs`; zeros when a request has no ControlNet).
    """
    latent = ("cfg_batch", in_channels, "latent_height", "latent_width")
    inputs = [
        TensorSpec("sample", "float32", latent),
        TensorSpec("timestep", "float32", ("cfg_batch",)),
        TensorSpec("encoder_hidden_states", "float32", ("cfg_batch", "text_sequence", text_hidden_size)),
        *added_cond,
    ]
    if class_labels is not None:
        inputs.append(class_labels)
    inputs += residuals
    bounds = {f"{name}_max": value for name, value in (input_bounds or {}).items()}
    return ComponentSpec(
        name=UNET,
        inputs=tuple(inputs),
        outputs=(TensorSpec("noise_pred", "float32", ("cfg_batch", out_channels, "latent_height", "latent_width")),),
        batch_dim="cfg_batch",
        role="denoiser",
        attributes={
            "in_channels": in_channels,
            "out_channels": out_channels,
            "timestep_max": num_train_timesteps,
            **bounds,
            "fp32_inputs": list(fp32_inputs),
            "added_cond": [t.name for t in added_cond],
            "residuals": [t.name for t in residuals],  # down blocks', then the mid block's
            # attention computed in fp32 (SD 2.x): an fp16 build must keep attention in fp32 to stay finite
            "upcast_attention": upcast_attention,
        },
    )


def controlnet_spec(config: Mapping[str, Any], num_train_timesteps: int = 1000) -> ComponentSpec:
    """ControlNet: latents, timesteps, text states (and SDXL's added vectors), its conditioning image (B, 3, 8h, 8w)
    in [0, 1] -> the residuals (`residual_specs`) a UNet of its architecture adds, unscaled and unpooled."""
    embedding = tuple(config.get("conditioning_embedding_out_channels") or (16, 32, 96, 256))
    factor = 2 ** (len(embedding) - 1)
    latent = ("cfg_batch", int(config.get("in_channels", 4)), "latent_height", "latent_width")
    inputs = [
        TensorSpec("sample", "float32", latent),
        TensorSpec("timestep", "float32", ("cfg_batch",)),
        TensorSpec(
            "encoder_hidden_states", "float32", ("cfg_batch", "text_sequence", int(config["cross_attention_dim"]))
        ),
    ]
    added: list[TensorSpec] = []
    if config.get("addition_embed_type") == "text_time":  # SDXL: the pooled text and 6 size-and-crop ids
        ids = 6
        pooled = int(config["projection_class_embeddings_input_dim"]) - ids * int(config["addition_time_embed_dim"])
        added = [
            TensorSpec("text_embeds", "float32", ("cfg_batch", pooled)),
            TensorSpec("time_ids", "float32", ("cfg_batch", ids)),
        ]
    elif config.get("addition_embed_type") or config.get("class_embed_type"):
        raise ValueError(
            f"ControlNets with {config.get('addition_embed_type') or config.get('class_embed_type')} embeddings "
            "are not supported (sdrt runs SD 1.x, 2.x and SDXL ControlNets)"
        )
    cond = (
        "cfg_batch",
        int(config.get("conditioning_channels", 3)),
        f"{factor}*latent_height",
        f"{factor}*latent_width",
    )
    residuals = residual_specs(config)
    return ComponentSpec(
        name=CONTROLNET,
        inputs=(*inputs, *added, TensorSpec("controlnet_cond", "float32", cond)),
        outputs=residuals,
        batch_dim="cfg_batch",
        role="controlnet",
        attributes={
            "timestep_max": num_train_timesteps,
            **({"time_ids_max": 4096} if added else {}),
            "fp32_inputs": ["timestep", *(["time_ids"] if added else [])],
            "added_cond": [t.name for t in added],
            "residuals": [t.name for t in residuals],
            "cross_attention_dim": int(config["cross_attention_dim"]),
            "global_pool_conditions": bool(config.get("global_pool_conditions", False)),
            "upcast_attention": bool(config.get("upcast_attention") or False),
        },
    )


def image_encoder_spec(image_size: int, embedding_dim: int) -> ComponentSpec:
    """CLIP vision encoder with projection: preprocessed images (B, 3, S, S) -> image embeddings (B, E)."""
    return ComponentSpec(
        name=IMAGE_ENCODER,
        inputs=(TensorSpec("pixel_values", "float32", ("batch", 3, image_size, image_size)),),
        outputs=(TensorSpec("image_embeds", "float32", ("batch", embedding_dim)),),
        role="image_encoder",
        attributes={"image_size": image_size, "embedding_dim": embedding_dim},
    )


def vae_decoder_spec(
    latent_channels: int, latent_factor: int, force_upcast: bool = False, sample_size: int | None = None
) -> ComponentSpec:
    """VAE decoder: unscaled latents (B, C, h, w) -> images (B, 3, 8h, 8w) in [-1, 1].

    `sample_size` (the VAE config's, in pixels) is the tile size of a tiled decode (`runtime.vae_tiles`)."""
    f = latent_factor
    return ComponentSpec(
        name=VAE_DECODER,
        inputs=(TensorSpec("latent", "float32", ("batch", latent_channels, "latent_height", "latent_width")),),
        outputs=(TensorSpec("images", "float32", ("batch", 3, f"{f}*latent_height", f"{f}*latent_width")),),
        role="vae_decoder",
        attributes={"latent_channels": latent_channels, "force_upcast": force_upcast, "sample_size": sample_size},
    )


def vae_encoder_spec(
    latent_channels: int, latent_factor: int, force_upcast: bool = False, sample_size: int | None = None
) -> ComponentSpec:
    """VAE encoder: images (B, 3, 8h, 8w) in [-1, 1] -> latent distribution parameters (B, 2C, h, w): mean, logvar."""
    f = latent_factor
    return ComponentSpec(
        name=VAE_ENCODER,
        inputs=(TensorSpec("images", "float32", ("batch", 3, f"{f}*latent_height", f"{f}*latent_width")),),
        outputs=(
            TensorSpec("latent_parameters", "float32", ("batch", 2 * latent_channels, "latent_height", "latent_width")),
        ),
        role="vae_encoder",
        attributes={"latent_channels": latent_channels, "force_upcast": force_upcast, "sample_size": sample_size},
    )


def vae_specs(vae_config: Mapping[str, Any], encoder: bool = True) -> dict[str, ComponentSpec]:
    """The VAE decoder (and encoder) of an AutoencoderKL config."""
    channels, factor = int(vae_config["latent_channels"]), latent_factor(vae_config)
    upcast = bool(vae_config.get("force_upcast", False))
    size = vae_config.get("sample_size")
    size = int(size[0] if isinstance(size, (list, tuple)) else size) if size else None
    specs = {VAE_DECODER: vae_decoder_spec(channels, factor, upcast, size)}
    if encoder:
        specs[VAE_ENCODER] = vae_encoder_spec(channels, factor, upcast, size)
    return specs


def latent_factor(vae_config: Mapping[str, Any]) -> int:
    """Pixels per latent cell: the VAE downsamples once per block after the first."""
    return 2 ** (len(vae_config["block_out_channels"]) - 1)


# the networks whose convolutions pad circularly for seamless tiling (the web UI's `tiling`), by role
TILING_ROLES = ("denoiser", "vae_decoder", "vae_encoder")
TILING = "tiling"  # the name of their circular-padding variant (manifest `variants`, `sdrt export --tiling`)
