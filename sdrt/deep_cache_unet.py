"""DeepCache's two UNet networks (Ma et al., CVPR 2024, "DeepCache: Accelerating Diffusion Models for Free").

A branch id picks a skip branch the way the authors' `DeepCacheSDHelper` does: block `branch // 3` and layer
`branch % 3` of it. On a full step the whole UNet runs and keeps the branch's deep feature: the hidden state the
branch's up layer takes before it is concatenated with its skip connection. On a shallow step only the shallow
part runs: conv_in, the down blocks before the branch's block and that block's layers before the branch's layer,
then the branch's up layer (from the cached feature) and every up layer after it. Where the cached feature is
the mid block's output, the shallow step adds the ControlNet mid residual to it, as the helper adds the current
residual to the cached mid output; a shallow step likewise adds the residuals its skip connections take.

Layer ids are the helper's: in a down block, the resnet(+attention) pairs are 0..L-1 and the downsampler L; in an
up block (L+1 pairs) the ids count from its last pair (id 0) upwards. A down layer runs on a shallow step when its
id is below the branch's layer; an up layer when its id is at most the branch's layer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from sdrt.components import FEATURE
from sdrt.network_modules import SpecModule
from sdrt.spec import ComponentSpec, TensorSpec

TEXT_STATES = "encoder_hidden_states"
LAYERS_PER_BRANCH_BLOCK = 3  # the helper's branch id = 3 * block + layer
PARTS = ("full", "shallow")  # the two networks of a branch
SUFFIX = "_deep_cache"  # a UNet's DeepCache networks are named <unet>_deep_cache_<part>_<branch>
SUPPORTED_BLOCKS = frozenset({"CrossAttnDownBlock2D", "DownBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"})


@dataclass(frozen=True)
class Branch:
    """Where a branch id cuts a UNet of a given config; every shape the two networks have follows from it."""

    branch: int  # the helper's cache_branch_id
    block: int  # cache_block_id: the down block (and the up block mirroring it) the branch leaves from
    layer: int  # cache_layer_id
    down_layers: int  # resnet(+attention) pairs of that down block run on a shallow step
    up_first: int  # position of the first up pair of that up block run on a shallow step (0: all of them)
    from_mid: bool  # the cached feature is the mid block's output (the branch's up block is the first)
    feature_channels: int
    feature_downsamplings: int  # the feature is at the latents' size over 2 ** this, rounded up
    residuals: tuple[int, ...]  # indices of the down-block residuals (ControlNet) a shallow step adds: 0..k


def network_name(unet: str, part: str, branch: int) -> str:
    """The name of the `part` network ("full" or "shallow") of DeepCache branch `branch` of UNet network `unet`."""
    return f"{unet}{SUFFIX}_{part}_{branch}"


def branches(config: Mapping[str, Any]) -> int:
    """How many branch ids a UNet of this config has (0..n-1)."""
    return LAYERS_PER_BRANCH_BLOCK * len(config["block_out_channels"])


def branch_of(config: Mapping[str, Any], branch: int) -> Branch:
    """The cut of `branch` through a UNet of `config`; ValueError for an id outside the UNet or an unsupported UNet."""
    blocks = tuple(config.get("down_block_types", ())) + tuple(config.get("up_block_types", ()))
    unsupported = sorted({b for b in blocks if b not in SUPPORTED_BLOCKS})
    if unsupported:
        raise ValueError(
            f"DeepCache runs UNets made of {', '.join(sorted(SUPPORTED_BLOCKS))}; this one has {unsupported}"
        )
    count = branches(config)
    if isinstance(branch, bool) or not isinstance(branch, int) or not 0 <= branch < count:
        raise ValueError(f"deep_cache branch {branch!r} is outside 0..{count - 1} for this UNet ({count // 3} blocks)")
    channels = tuple(int(c) for c in config["block_out_channels"])
    n = len(channels)
    layers = config.get("layers_per_block", 2)
    per_block = [int(layers)] * n if isinstance(layers, int) else [int(x) for x in layers]
    block, layer = branch // LAYERS_PER_BRANCH_BLOCK, branch % LAYERS_PER_BRANCH_BLOCK
    pairs = per_block[block]  # down pairs; its up block has pairs + 1
    down_layers = min(layer, pairs)
    up_first = pairs - min(layer, pairs)  # up id k sits at position pairs - k
    from_mid = up_first == 0 and block == n - 1
    if up_first > 0:  # the output of the branch block's up pair before it
        feature_channels = channels[block]
    elif from_mid:
        feature_channels = channels[-1]
    else:  # the output of the up block before (its upsampler brings it to this block's size)
        feature_channels = channels[block + 1]
    # the skip connections the up pairs run take: every entry of diffusers' down_block_res_samples up to the
    # branch's, (block, down_layers); entry (block, 1) is at `start`, (block, 0) the one before it
    start = 1 + sum(per_block[i] + 1 for i in range(block))
    residuals = tuple(range(start + down_layers))
    return Branch(branch, block, layer, down_layers, up_first, from_mid, feature_channels, block, residuals)


def deep_cache_specs(
    unet: ComponentSpec, config: Mapping[str, Any], branch: int
) -> tuple[ComponentSpec, ComponentSpec]:
    """The full network (the UNet's inputs; noise_pred and the feature out) and the shallow one (the inputs a
    shallow step reads, the feature among them; noise_pred out) for `branch` of a UNet with spec `unet`."""
    cut = branch_of(config, branch)
    suffix = f"/{2**cut.feature_downsamplings}" if cut.feature_downsamplings else ""
    feature = TensorSpec(
        FEATURE, "float32", ("cfg_batch", cut.feature_channels, f"latent_height{suffix}", f"latent_width{suffix}")
    )
    residuals = tuple(unet.attributes.get("residuals", ()))
    kept = {residuals[i] for i in cut.residuals} if residuals else set()
    if residuals and cut.from_mid:
        kept.add(residuals[-1])
    inputs = tuple(t for t in unet.inputs if t.name not in residuals or t.name in kept)
    if not _shallow_attends(config, cut):  # a graph has no input it never reads: the shallow one may not take the text
        inputs = tuple(t for t in inputs if t.name != TEXT_STATES)
    attributes = {**unet.attributes, "deep_cache_branch": branch}
    full = replace(
        unet,
        name=network_name(unet.name, "full", branch),
        outputs=(*unet.outputs, feature),
        attributes={**attributes, "deep_cache_part": "full"},
    )
    shallow = replace(
        unet,
        name=network_name(unet.name, "shallow", branch),
        inputs=(*inputs, feature),
        attributes={
            **attributes,
            "deep_cache_part": "shallow",
            "residuals": [r for r in residuals if r in kept],
        },
    )
    return full, shallow


def _shallow_attends(config: Mapping[str, Any], cut: Branch) -> bool:
    """True when a shallow step reads the text states: a cross-attention block runs in it, or the UNet's embedding
    reads them (any addition embedding but SDXL's size/pooled-text one, a projection of the states)."""
    if config.get("addition_embed_type") not in (None, "text_time") or config.get("encoder_hid_dim_type") is not None:
        return True
    down, up = tuple(config["down_block_types"]), tuple(config["up_block_types"])
    n = len(down)
    running_down = [*down[: cut.block], *((down[cut.block],) if cut.down_layers else ())]
    running_up = [up[n - 1 - b] for b in range(cut.block + 1)]
    return any(block.startswith("CrossAttn") for block in (*running_down, *running_up))


class DeepCacheUNetModule(SpecModule):
    """A diffusers UNet2DConditionModel run as DeepCache's full network (noise_pred, feature) or its shallow one.

    It walks the UNet's own submodules layer by layer in the order of diffusers' forward (the same calls, so the
    full network's noise_pred equals the UNet's), skipping on a shallow step what the branch caches.
    """

    def __init__(self, unet: torch.nn.Module, spec: ComponentSpec, config: Mapping[str, Any]) -> None:
        super().__init__(spec)
        self.unet = unet
        self.cut = branch_of(config, int(spec.attributes["deep_cache_branch"]))
        self.shallow = spec.attributes["deep_cache_part"] == "shallow"
        self.added_cond = tuple(spec.attributes.get("added_cond", ()))
        self.residuals = tuple(spec.attributes.get("residuals", ()))
        for block in (*unet.up_blocks, *unet.down_blocks):
            if all(getattr(block, name, None) for name in ("s1", "s2", "b1", "b2")):
                raise ValueError("DeepCache does not run a UNet with FreeU enabled")

    @property
    def adapted(self) -> torch.nn.Module:
        """The diffusers UNet a LoRA adapts (shared with the plain UNet engine)."""
        return self.unet

    def forward(self, *args: torch.Tensor, **kwargs: torch.Tensor):
        feeds = self.bind(args, kwargs)
        unet, cut, shallow = self.unet, self.cut, self.shallow
        sample, emb, states = self._prelude(feeds)
        residuals = [feeds[name] for name in self.residuals]
        mid_residual = residuals.pop() if residuals and (not shallow or cut.from_mid) else None
        up_factor = 2**unet.num_upsamplers
        forward_upsample_size = any(dim % up_factor != 0 for dim in sample.shape[-2:])

        # down: every entry of diffusers' down_block_res_samples this network computes, in its order
        h = unet.conv_in(sample)
        res: list[torch.Tensor] = [h]
        for b, block in enumerate(unet.down_blocks):
            last = shallow and b == cut.block
            pairs = len(block.resnets) if not last else cut.down_layers
            for k in range(pairs):
                h = block.resnets[k](h, emb)
                if getattr(block, "attentions", None):
                    h = self._attend(block.attentions[k], h, states)
                res.append(h)
            if last:
                break
            if block.downsamplers is not None:
                for downsampler in block.downsamplers:
                    h = downsampler(h)
                res.append(h)
        if residuals:  # ControlNet: added to the skip connections, as diffusers adds them after the down blocks
            for i, residual in enumerate(residuals):
                res[i] = res[i] + residual

        feature = None
        if shallow:
            h = feeds[FEATURE]
            if cut.from_mid and mid_residual is not None:
                h = h + mid_residual
        else:
            mid = unet.mid_block
            if getattr(mid, "has_cross_attention", False):
                h = mid(h, emb, encoder_hidden_states=states)
            else:
                h = mid(h, emb)
            if cut.from_mid:
                feature = h
            if mid_residual is not None:
                h = h + mid_residual

        # up: block b of the helper's numbering is up_blocks[n - 1 - b]
        n = len(unet.up_blocks)
        upsample_size = None
        for i, block in enumerate(unet.up_blocks):
            b = n - 1 - i
            if shallow and b > cut.block:
                continue
            own = shallow and b == cut.block  # the branch's up block on a shallow step: from the cached feature
            first = cut.up_first if b == cut.block else 0
            if b == cut.block and not shallow and first == 0 and not cut.from_mid:
                feature = h
            total = len(block.resnets)
            taken = res[-(total - first if own else total) :]  # pair j takes entry total - 1 - j
            res = res[: -len(taken)]
            if i < n - 1 and forward_upsample_size:
                upsample_size = res[-1].shape[2:]
            for j in range(first if own else 0, total):
                if j == first and first > 0 and b == cut.block and not shallow:
                    feature = h
                h = torch.cat([h, taken[total - 1 - j]], dim=1)
                h = block.resnets[j](h, emb)
                if getattr(block, "attentions", None):
                    h = self._attend(block.attentions[j], h, states)
            if block.upsamplers is not None:
                for upsampler in block.upsamplers:
                    h = upsampler(h, upsample_size)

        if unet.conv_norm_out is not None:
            h = unet.conv_act(unet.conv_norm_out(h))
        h = unet.conv_out(h)
        return h if shallow else (h, feature)

    @staticmethod
    def _attend(attention: torch.nn.Module, h: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        return attention(h, encoder_hidden_states=states, return_dict=False)[0]

    def _prelude(self, feeds: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The latents as conv_in takes them, the time embedding, the text states: diffusers' forward before conv_in."""
        unet = self.unet
        # the text states are absent from a shallow network that never reads them (no cross-attention runs in it)
        sample, timestep, states = feeds["sample"], feeds["timestep"], feeds.get(TEXT_STATES)
        added = {name: feeds[name] for name in self.added_cond}
        if unet.config.center_input_sample:
            sample = 2 * sample - 1.0
        emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), None)
        class_emb = unet.get_class_embed(sample=sample, class_labels=feeds.get("class_labels"))
        if class_emb is not None:
            emb = torch.cat([emb, class_emb], dim=-1) if unet.config.class_embeddings_concat else emb + class_emb
        aug_emb = unet.get_aug_embed(emb=emb, encoder_hidden_states=states, added_cond_kwargs=added)
        if unet.config.addition_embed_type == "image_hint":
            raise ValueError("DeepCache does not run UNets with an image-hint addition embedding")
        if aug_emb is not None:
            emb = emb + aug_emb
        if unet.time_embed_act is not None:
            emb = unet.time_embed_act(emb)
        states = unet.process_encoder_hidden_states(encoder_hidden_states=states, added_cond_kwargs=added)
        return sample, emb, states


__all__: Sequence[str] = (
    "FEATURE",
    "PARTS",
    "Branch",
    "DeepCacheUNetModule",
    "branch_of",
    "branches",
    "deep_cache_specs",
    "network_name",
)
