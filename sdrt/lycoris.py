"""LyCORIS networks (KohakuBlueleaf/LyCORIS) merged into torch modules by their definitions, and the kohya names
they use for a model's layers.

Each adapted layer of a file is one kind, told by its keys (`ΔW` is added to the layer's weight, times the
request's multiplier; `scale` is alpha / rank, or 1 where the file has no alpha):

- LoRA / LoCon (`lora_down`, `lora_up`): ΔW = up @ down * scale; a conv's k x k down and 1 x 1 up flatten to
  matrices. With `lora_mid` (LoCon's CP/Tucker form): ΔW[o, i] = Σ mid[m, n] up[o, m] down[n, i] * scale.
- LoHa (`hada_w1_a`, `hada_w1_b`, `hada_w2_a`, `hada_w2_b`): ΔW = (w1a @ w1b) ⊙ (w2a @ w2b) * scale, rank =
  rows of w1b; with `hada_t1`/`hada_t2` (Tucker) each factor is Σ t[i, j] w_a[i, o] w_b[j, c] instead.
- LoKr (`lokr_w1` or `lokr_w1_a` @ `lokr_w1_b`; `lokr_w2`, `lokr_w2_a` @ `lokr_w2_b` or their Tucker form with
  `lokr_t2`): ΔW = w1 ⊗ w2 (Kronecker) * scale, rank = rows of w1_b (else of w2_b, which is the Tucker rank too,
  as the web UI reads it); with both halves full the scale is 1.
- Full (`diff`, `diff_b`): ΔW = diff, Δb = diff_b.

Kinds whose merge needs more than these (DoRA's `dora_scale`, OFT/BOFT, IA3, GLoRA, norm layers) are refused
naming the kind. Layers are named as kohya's sd-scripts name them: `lora_unet_` + the UNet module's path with
"_" for ".", in diffusers' naming (SD 1.x/2.x) or the original SGM naming (SDXL: `input_blocks_4_1_...`),
`lora_te_` / `lora_te1_` / `lora_te2_` + the text encoder's `text_model_...` path.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

# a layer's keys, by kind; every other key is refused
_KEYS = {
    "lora": {"lora_down.weight", "lora_up.weight", "lora_mid.weight", "alpha", "scale"},
    "loha": {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2", "alpha"},
    "lokr": {"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2", "alpha"},
    "full": {"diff", "diff_b", "alpha"},
}
_MARKERS = {"lora": "lora_down.weight", "loha": "hada_w1_a", "lokr": None, "full": "diff"}
_SCALARS = {"alpha", "scale"}
# kinds sdrt refuses, by a key only they have
REFUSED = {
    "dora_scale": "DoRA (weight-decomposed: its magnitudes need the merged weight's norms)",
    "oft_blocks": "LyCORIS OFT",
    "oft_diag": "LyCORIS OFT",
    "oft_R": "LyCORIS BOFT",
    "w_norm": "LyCORIS norm-layer",
    "b_norm": "LyCORIS norm-layer",
    "on_input": "LyCORIS IA3",
    "a1.weight": "LyCORIS GLoRA",
}
# kohya's prefixes of each part's layers
PART_PREFIXES = {
    "unet": ("lora_unet_",),
    "text_encoder": ("lora_te_", "lora_te1_"),
    "text_encoder_2": ("lora_te2_",),
}
# keys that only LyCORIS files have (a file with any of them is merged here, not by diffusers)
LYCORIS_ONLY = ("hada_w1_a", "lokr_w1", "lokr_w2", "lora_mid.weight", ".diff")


def is_lycoris(keys: Iterable[str]) -> bool:
    """True for a kohya-named file holding a LyCORIS kind diffusers does not read (LoHa, LoKr, CP LoCon, full)."""
    return any(marker in key for key in keys for marker in LYCORIS_ONLY)


def refused_kind(keys: Iterable[str]) -> str | None:
    """The kind sdrt does not merge that a file holds, or None."""
    for key in keys:
        for marker, kind in REFUSED.items():
            if key.endswith(f".{marker}") or marker == key:
                return kind
    return None


@dataclass(frozen=True)
class LycorisLayer:
    """One adapted layer of a LyCORIS file: its kind and its tensors by key suffix (float32)."""

    name: str  # kohya's layer name, e.g. "lora_unet_down_blocks_0_resnets_0_conv1"
    kind: str  # "lora", "loha", "lokr" or "full"
    w: Mapping[str, torch.Tensor]

    @property
    def scale(self) -> float:
        """alpha / rank (LyCORIS: an alpha of 0 or none means alpha = rank); 1 for full weights."""
        w = self.w
        if "scale" in w:
            return float(w["scale"])
        if self.kind == "lora":
            rank = w["lora_down.weight"].shape[0]
        elif self.kind == "loha":
            rank = w["hada_w1_b"].shape[0]
        elif self.kind == "lokr" and "lokr_w1_b" in w:
            rank = w["lokr_w1_b"].shape[0]
        elif self.kind == "lokr" and "lokr_w2_b" in w:  # rows of w2_b: the rank in the Tucker form too
            rank = w["lokr_w2_b"].shape[0]
        else:  # LoKr with both halves full, or a full weight: no alpha scaling
            return 1.0
        alpha = float(w["alpha"]) if "alpha" in w else 0.0
        return 1.0 if alpha == 0.0 else alpha / rank

    def shape(self) -> tuple[int, ...]:
        """The shape of ΔW as the definition builds it (its element count must be the layer weight's)."""
        w = self.w
        if self.kind == "lora":
            up, down = w["lora_up.weight"], w["lora_down.weight"]
            if "lora_mid.weight" in w:
                return (up.shape[0], down.shape[1], *w["lora_mid.weight"].shape[2:])
            return (up.shape[0], math.prod(down.shape[1:]))
        if self.kind == "loha":
            if "hada_t1" in w:
                return (w["hada_w1_a"].shape[1], w["hada_w1_b"].shape[1], *w["hada_t1"].shape[2:])
            return (w["hada_w1_a"].shape[0], math.prod(w["hada_w1_b"].shape[1:]))
        if self.kind == "lokr":
            w1 = _shape2(w, "lokr_w1")
            w2 = _lokr_w2_shape(w)
            return (w1[0] * w2[0], w1[1] * w2[1], *w2[2:])
        return tuple(w["diff"].shape)

    def delta(self) -> torch.Tensor:
        """ΔW (without the request's multiplier), float32, in the shape `shape()` gives."""
        w, scale = self.w, self.scale
        if self.kind == "lora":
            up, down = w["lora_up.weight"], w["lora_down.weight"]
            up2 = up.reshape(up.shape[0], -1)
            if "lora_mid.weight" in w:
                down2 = down.reshape(down.shape[0], -1)
                return torch.einsum("mn...,om,ni->oi...", w["lora_mid.weight"], up2, down2) * scale
            return (up2 @ down.reshape(down.shape[0], -1)) * scale
        if self.kind == "loha":
            if "hada_t1" in w:
                first = _tucker(w["hada_t1"], w["hada_w1_a"], w["hada_w1_b"])
                second = _tucker(w["hada_t2"], w["hada_w2_a"], w["hada_w2_b"])
            else:
                first = w["hada_w1_a"] @ w["hada_w1_b"].reshape(w["hada_w1_b"].shape[0], -1)
                second = w["hada_w2_a"] @ w["hada_w2_b"].reshape(w["hada_w2_b"].shape[0], -1)
            return first * second * scale
        if self.kind == "lokr":
            w1 = w["lokr_w1"] if "lokr_w1" in w else w["lokr_w1_a"] @ w["lokr_w1_b"]
            if "lokr_w2" in w:
                w2 = w["lokr_w2"]
            elif "lokr_t2" in w:
                w2 = _tucker(w["lokr_t2"], w["lokr_w2_a"], w["lokr_w2_b"])
            else:
                b = w["lokr_w2_b"]
                w2 = (w["lokr_w2_a"] @ b.reshape(b.shape[0], -1)).reshape(w["lokr_w2_a"].shape[0], *b.shape[1:])
            w1 = w1.reshape(*w1.shape, *([1] * (w2.dim() - w1.dim())))
            return torch.kron(w1, w2.contiguous()) * scale
        return w["diff"]

    def bias_delta(self) -> torch.Tensor | None:
        """Δb of a full layer (`diff_b`), else None."""
        return self.w.get("diff_b")


def _shape2(w: Mapping[str, torch.Tensor], prefix: str) -> tuple[int, int]:
    if prefix in w:
        return tuple(w[prefix].shape[:2])  # type: ignore[return-value]
    return (w[f"{prefix}_a"].shape[0], w[f"{prefix}_b"].shape[1])


def _lokr_w2_shape(w: Mapping[str, torch.Tensor]) -> tuple[int, ...]:
    if "lokr_w2" in w:
        return tuple(w["lokr_w2"].shape)
    if "lokr_t2" in w:  # Tucker: t2 (r, r, k, k), w2_a (r, b), w2_b (r, d)
        return (w["lokr_w2_a"].shape[1], w["lokr_w2_b"].shape[1], *w["lokr_t2"].shape[2:])
    return (w["lokr_w2_a"].shape[0], *w["lokr_w2_b"].shape[1:])


def _tucker(t: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    """A Tucker factor: W[o, c, ...] = Σ_ij t[i, j, ...] wa[i, o] wb[j, c] (wa, wb: rank rows)."""
    return torch.einsum("ij...,io,jc->oc...", t, wa, wb)


def read_layers(state: Mapping[str, torch.Tensor], source: str) -> dict[str, LycorisLayer]:
    """Every layer of a kohya-named LyCORIS state dict; ValueError naming a key no kind has, or a broken layer."""
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        name, _, suffix = key.partition(".")
        if not suffix:
            raise ValueError(f"{source}: key {key!r} is not a layer's (kohya names are layer.suffix)")
        grouped.setdefault(name, {})[suffix] = value
    layers = {}
    for name, w in grouped.items():
        kind = _kind(w)
        if kind is None:
            raise ValueError(f"{source}: layer {name} has keys {sorted(w)}, which no LyCORIS kind sdrt merges has")
        unknown = sorted(set(w) - _KEYS[kind])
        if unknown:
            raise ValueError(f"{source}: layer {name} ({kind}) has keys sdrt does not merge: {', '.join(unknown)}")
        layer = LycorisLayer(name, kind, {k: v.detach().to(torch.float32) for k, v in w.items()})
        _check_layer(layer, source)
        layers[name] = layer
    return layers


def _kind(w: Mapping[str, torch.Tensor]) -> str | None:
    if any(k.startswith("lokr_") for k in w):
        return "lokr"
    for kind, marker in _MARKERS.items():
        if marker is not None and marker in w:
            return kind
    return None


def _check_layer(layer: LycorisLayer, source: str) -> None:
    """The tensors a layer's kind needs are there, and their shapes compose (so delta() cannot fail later)."""
    w, kind = layer.w, layer.kind
    needed = {
        "lora": ("lora_down.weight", "lora_up.weight"),
        "loha": ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"),
        "full": ("diff",),
        "lokr": (),
    }[kind]
    if kind == "lokr":
        if not ("lokr_w1" in w or {"lokr_w1_a", "lokr_w1_b"} <= set(w)):
            needed = ("lokr_w1",)
        elif not ("lokr_w2" in w or {"lokr_w2_a", "lokr_w2_b"} <= set(w)):
            needed = ("lokr_w2",)
    if kind == "loha" and ("hada_t1" in w) != ("hada_t2" in w):
        needed = ("hada_t1", "hada_t2")
    missing = [k for k in needed if k not in w]
    for key in _SCALARS & set(w):
        if w[key].numel() != 1:
            raise ValueError(f"{source}: layer {layer.name}'s {key} is not one number (shape {tuple(w[key].shape)})")
    if missing:
        raise ValueError(f"{source}: layer {layer.name} ({kind}) lacks {', '.join(missing)}")
    try:
        meta = LycorisLayer(layer.name, kind, {k: v if k in _SCALARS else v.to("meta") for k, v in w.items()})
        built = tuple(meta.delta().shape)
    except (RuntimeError, IndexError) as exc:
        raise ValueError(
            f"{source}: layer {layer.name} ({kind}) has tensors whose shapes do not compose: {exc}"
        ) from exc
    if math.prod(built) != math.prod(layer.shape()):
        raise ValueError(f"{source}: layer {layer.name} ({kind}) builds a {built} delta, not {layer.shape()}")


# --- the kohya names of a model's layers ---------------------------------------------------------------------


def kohya_names(part: str, module: nn.Module) -> dict[str, str]:
    """kohya's layer names for a part's Linear and Conv layers -> their module paths (every naming in use)."""
    names: dict[str, str] = {}
    layers_per_block = getattr(getattr(module, "config", None), "layers_per_block", None)
    for path, child in module.named_modules():
        if not isinstance(child, (nn.Linear, nn.Conv2d)):
            continue
        aliases = [path]
        if part == "unet" and isinstance(layers_per_block, int):
            sgm = sgm_path(path, layers_per_block, module)
            if sgm is not None:
                aliases.append(sgm)
        elif part != "unet" and not path.startswith("text_model.") and path != "text_projection":
            aliases = [f"text_model.{path}"]  # transformers 5 flattens CLIPTextModel; kohya names keep text_model
        for prefix in PART_PREFIXES[part]:
            for alias in aliases:
                names[prefix + alias.replace(".", "_")] = path
    return names


_RESNET_INNER = {"conv1": "in_layers.2", "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1",
                 "conv_shortcut": "skip_connection"}  # fmt: skip
_TOP = {"conv_in": "input_blocks.0.0", "conv_out": "out.2", "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
        "add_embedding.linear_2": "label_emb.0.2"}  # fmt: skip


def sgm_path(path: str, layers_per_block: int, unet: nn.Module) -> str | None:
    """A diffusers UNet module's path in the original SGM/LDM UNet's naming (what kohya names SDXL layers by)."""
    if path in _TOP:
        return _TOP[path]
    parts = path.split(".")
    per = layers_per_block + 1  # SGM counts a down block's resnets and downsampler, an up block's resnets
    if parts[0] == "down_blocks" and len(parts) > 3:
        block, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
        if kind == "downsamplers":
            return ".".join([f"input_blocks.{(block + 1) * per}.0", "op", *rest[1:]])
        head = f"input_blocks.{1 + block * per + index}.{0 if kind == 'resnets' else 1}"
    elif parts[0] == "mid_block" and len(parts) > 2:
        kind, index, rest = parts[1], int(parts[2]), parts[3:]
        head = f"middle_block.{1 if kind == 'attentions' else 2 * index}"
    elif parts[0] == "up_blocks" and len(parts) > 3:
        block, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
        if kind == "upsamplers":
            has_attention = hasattr(unet.up_blocks[block], "attentions")
            return ".".join([f"output_blocks.{block * per + layers_per_block}.{2 if has_attention else 1}", *rest])
        head = f"output_blocks.{block * per + index}.{0 if kind == 'resnets' else 1}"
    else:
        return None
    if kind == "resnets" and rest and rest[0] in _RESNET_INNER:
        rest = [_RESNET_INNER[rest[0]], *rest[1:]]
    return ".".join([head, *rest])
