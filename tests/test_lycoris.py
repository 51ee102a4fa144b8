"""LyCORIS networks merged by their definitions: LoHa, LoKr, LoCon's CP form and full weights, against reference
formulas written here from LyCORIS' definitions (and peft's LoHa and LoKr layers where their formats match), the
kohya names of SGM-named SDXL layers against diffusers' own conversion, and refusals that leave the weights alone.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from sdrt.lora import LoraFuser
from sdrt.lycoris import kohya_names
from sdrt.model_dir import ModelDir

RANK = 4
# (kohya name, part, module path) of the demo SD 1.x model's layers the files adapt
LAYERS = {
    "q": ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", "unet",
          "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"),
    "k2": ("lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k", "unet",
           "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"),
    "conv": ("lora_unet_down_blocks_0_resnets_0_conv1", "unet", "down_blocks.0.resnets.0.conv1"),
    "conv64": ("lora_unet_up_blocks_0_resnets_0_conv2", "unet", "up_blocks.0.resnets.0.conv2"),
    "proj": ("lora_unet_down_blocks_1_attentions_0_proj_in", "unet", "down_blocks.1.attentions.0.proj_in"),
    "te_q": ("lora_te_text_model_encoder_layers_0_self_attn_q_proj", "text_encoder",
             "encoder.layers.0.self_attn.q_proj"),
    "te_fc1": ("lora_te_text_model_encoder_layers_1_mlp_fc1", "text_encoder", "encoder.layers.1.mlp.fc1"),
}  # fmt: skip


@pytest.fixture(scope="module")
def modules(demo_model):
    model = ModelDir.open(demo_model)
    return {"text_encoder": model.load_part("text_encoder"), "unet": model.load_part("unet")}


def weight(modules, key: str) -> torch.Tensor:
    _, part, path = LAYERS[key]
    return modules[part].get_submodule(path).weight


# --- files of each kind, shaped for a layer ------------------------------------------------------------------


def _split(n: int) -> tuple[int, int]:
    """n = a * b with a the smaller factor near sqrt(n) (how LyCORIS factorizes a dimension)."""
    a = max(d for d in range(1, int(n**0.5) + 1) if n % d == 0)
    return a, n // a


def loha(shape, g, tucker=False, alpha=2.0, scale=0.3):
    out, inp, *k = shape

    def r(*size, s=1.0):
        return torch.randn(*size, generator=g) * s

    if tucker:  # w_a (rank, out), w_b (rank, in), t (rank, rank, k, k)
        w1 = {"hada_w1_a": r(RANK, out, s=scale), "hada_w1_b": r(RANK, inp), "hada_t1": r(RANK, RANK, *k, s=scale)}
        w2 = {"hada_w2_a": r(RANK, out, s=scale), "hada_w2_b": r(RANK, inp), "hada_t2": r(RANK, RANK, *k, s=scale)}
        return {**w1, **w2, "alpha": torch.tensor(alpha)}
    flat = inp * (k[0] * k[1] if k else 1)
    w1 = {"hada_w1_a": r(out, RANK, s=scale), "hada_w1_b": r(RANK, flat)}
    return {**w1, "hada_w2_a": r(out, RANK, s=scale), "hada_w2_b": r(RANK, flat), "alpha": torch.tensor(alpha)}


def lokr(shape, g, w2="lowrank", alpha=3.0, scale=0.3, rank=RANK):
    out, inp, *k = shape
    (a, b), (c, d) = _split(out), _split(inp)

    def r(*size):
        return torch.randn(*size, generator=g) * scale

    w = {"lokr_w1": r(a, c), "alpha": torch.tensor(alpha)}
    if w2 == "full":
        w["lokr_w2"] = r(b, d, *k)
    elif w2 == "tucker":
        w |= {"lokr_t2": r(rank, rank, *k) / scale, "lokr_w2_a": r(rank, b), "lokr_w2_b": r(rank, d)}
    else:  # low rank; a conv's w2_b holds d * k * k columns, as LyCORIS' module stores it
        w |= {"lokr_w2_a": r(b, rank), "lokr_w2_b": r(rank, d * (k[0] * k[1] if k else 1))}
    return w


def locon_cp(shape, g, alpha=1.0, scale=0.2):
    out, inp, *k = shape

    def r(*size):
        return torch.randn(*size, generator=g) * scale

    return {"lora_down.weight": r(RANK, inp, 1, 1), "lora_mid.weight": r(RANK, RANK, *k),
            "lora_up.weight": r(out, RANK, 1, 1), "alpha": torch.tensor(alpha)}  # fmt: skip


def full(shape, g, scale=0.02):
    return {"diff": torch.randn(*shape, generator=g) * scale, "diff_b": torch.randn(shape[0], generator=g) * scale}


def write(path: Path, layers: dict[str, dict[str, torch.Tensor]]) -> Path:
    save_file({f"{name}.{k}": v for name, w in layers.items() for k, v in w.items()}, str(path))
    return path


# --- the reference: LyCORIS' definitions, written out here ----------------------------------------------------


def _tucker_factor(t, wa, wb):
    """sum_ij t[i, j, y, x] wa[i, o] wb[j, c], one kernel position at a time."""
    k1, k2 = t.shape[2:]
    return torch.stack([torch.stack([wa.T @ t[:, :, y, x] @ wb for x in range(k2)], -1) for y in range(k1)], -2)


def _kron_blocks(w1, w2):
    """The Kronecker product as blocks: block (i, j) of rows b, columns d is w1[i, j] * w2 (w2 may be 4-D)."""
    a, c = w1.shape
    b, d = w2.shape[:2]
    out = torch.zeros(a * b, c * d, *w2.shape[2:])
    for i in range(a):
        for j in range(c):
            out[i * b : (i + 1) * b, j * d : (j + 1) * d] = w1[i, j] * w2
    return out


def reference_delta(w: dict[str, torch.Tensor], shape) -> torch.Tensor:
    """ΔW of one layer by LyCORIS' definitions (alpha / rank scaling; none for full weights or full LoKr halves)."""
    if "hada_w1_a" in w:
        rank = w["hada_w1_b"].shape[0]
        if "hada_t1" in w:
            first = _tucker_factor(w["hada_t1"], w["hada_w1_a"], w["hada_w1_b"])
            second = _tucker_factor(w["hada_t2"], w["hada_w2_a"], w["hada_w2_b"])
        else:
            first, second = w["hada_w1_a"] @ w["hada_w1_b"], w["hada_w2_a"] @ w["hada_w2_b"]
        return (first * second * (float(w["alpha"]) / rank)).reshape(shape)
    if "lokr_w1" in w:
        if "lokr_w2" in w:
            w2, scale = w["lokr_w2"], 1.0  # both halves full: LyCORIS applies no alpha
        elif "lokr_t2" in w:  # the rank is the Tucker core's
            w2, scale = (
                _tucker_factor(w["lokr_t2"], w["lokr_w2_a"], w["lokr_w2_b"]),
                float(w["alpha"]) / w["lokr_t2"].shape[0],
            )
        else:
            w2, rank = w["lokr_w2_a"] @ w["lokr_w2_b"], w["lokr_w2_a"].shape[1]
            w2, scale = w2.reshape(w2.shape[0], shape[1] // w["lokr_w1"].shape[1], *shape[2:]), float(w["alpha"]) / rank
        return (_kron_blocks(w["lokr_w1"], w2) * scale).reshape(shape)
    if "lora_mid.weight" in w:
        up, down, mid = w["lora_up.weight"][:, :, 0, 0], w["lora_down.weight"][:, :, 0, 0], w["lora_mid.weight"]
        k1, k2 = mid.shape[2:]
        delta = torch.stack([torch.stack([up @ mid[:, :, y, x] @ down for x in range(k2)], -1) for y in range(k1)], -2)
        return delta * float(w["alpha"]) / down.shape[0]
    return w["diff"]


def fused_delta(modules, path: Path, key: str, te: float = 1.0, unet: float = 1.0):
    before = weight(modules, key).detach().clone()
    with LoraFuser(modules).fused([(path, te, unet)]):
        return weight(modules, key).detach().clone() - before


KINDS = {
    "loha linear": ("q", lambda s, g: loha(s, g)),
    "loha conv": ("conv", lambda s, g: loha(s, g)),
    "loha conv tucker": ("conv", lambda s, g: loha(s, g, tucker=True)),
    "lokr linear lowrank": ("te_fc1", lambda s, g: lokr(s, g)),
    "lokr linear full": ("k2", lambda s, g: lokr(s, g, w2="full")),
    "lokr conv lowrank": ("conv64", lambda s, g: lokr(s, g)),
    "lokr conv full": ("conv", lambda s, g: lokr(s, g, w2="full")),
    "lokr conv tucker": ("conv", lambda s, g: lokr(s, g, w2="tucker")),
    "locon cp": ("conv", lambda s, g: locon_cp(s, g)),
    "full": ("proj", lambda s, g: full(s, g)),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_merges_as_lycoris_defines_it(modules, tmp_path, kind):
    key, make = KINDS[kind]
    shape = tuple(weight(modules, key).shape)
    w = make(shape, torch.Generator().manual_seed(len(kind)))
    path = write(tmp_path / "net.safetensors", {LAYERS[key][0]: w})
    multiplier = 0.7
    te, unet = (multiplier, 0.0) if LAYERS[key][1] == "text_encoder" else (0.0, multiplier)
    delta = fused_delta(modules, path, key, te, unet)
    torch.testing.assert_close(delta, multiplier * reference_delta(w, shape), rtol=1e-4, atol=1e-5)
    assert delta.abs().max() > 0


def test_full_weights_move_the_bias_too(modules, tmp_path):
    w = full(tuple(weight(modules, "proj").shape), torch.Generator().manual_seed(3))
    path = write(tmp_path / "full.safetensors", {LAYERS["proj"][0]: w})
    layer = modules["unet"].get_submodule(LAYERS["proj"][2])
    before = layer.bias.detach().clone()
    with LoraFuser(modules).fused([(path, 0.0, 0.5)]):
        torch.testing.assert_close(layer.bias - before, 0.5 * w["diff_b"], rtol=1e-5, atol=1e-7)
    assert torch.equal(layer.bias, before)


def _peft_delta(config_cls, layer: nn.Module, tensors: dict[str, torch.Tensor], **config) -> torch.Tensor:
    """peft's own delta for `layer` with the file's tensors in its adapter parameters."""
    from peft import inject_adapter_in_model

    host = nn.Module()
    host.layer = nn.Linear(1, 1) if isinstance(layer, nn.Linear) else nn.Conv2d(1, 1, 1)
    host.layer = type(layer)(*_sizes(layer))
    host.layer.weight.data.copy_(layer.weight)
    inject_adapter_in_model(config_cls(target_modules=["layer"], **config), host)
    adapted = host.layer
    for name, value in tensors.items():
        if name == "alpha":
            continue
        params = getattr(adapted, name)
        assert tuple(params["default"].shape) == tuple(value.shape), (name, params["default"].shape, value.shape)
        params["default"].data.copy_(value)
    return adapted.get_delta_weight("default").detach()


def _sizes(layer: nn.Module) -> tuple:
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    return layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding


@pytest.mark.parametrize("case", ["loha linear", "loha conv", "loha conv tucker"])
def test_loha_equals_peft_loha_layer(modules, tmp_path, case):
    from peft import LoHaConfig

    key, make = KINDS[case]
    layer = modules[LAYERS[key][1]].get_submodule(LAYERS[key][2])
    w = make(tuple(layer.weight.shape), torch.Generator().manual_seed(11))
    theirs = _peft_delta(LoHaConfig, layer, w, r=RANK, alpha=float(w["alpha"]), use_effective_conv2d="tucker" in case)
    path = write(tmp_path / "loha.safetensors", {LAYERS[key][0]: w})
    torch.testing.assert_close(fused_delta(modules, path, key), theirs, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("key, w2", [("te_fc1", "lowrank"), ("conv64", "lowrank"), ("conv64", "tucker")])
def test_lokr_equals_peft_lokr_layer(modules, tmp_path, key, w2):
    """peft's LoKr scales by alpha / r always, and makes w2 low-rank when r < half its larger side: its format
    matches LyCORIS' for a full w1 and a low-rank w2 (a conv's w2_b (r, d * k * k), or the Tucker form)."""
    from peft import LoKrConfig

    layer = modules[LAYERS[key][1]].get_submodule(LAYERS[key][2])
    w = lokr(tuple(layer.weight.shape), torch.Generator().manual_seed(12), w2=w2, rank=2)
    theirs = _peft_delta(LoKrConfig, layer, w, r=2, alpha=float(w["alpha"]), use_effective_conv2d=w2 == "tucker")
    path = write(tmp_path / "lokr.safetensors", {LAYERS[key][0]: w})
    te = 1.0 if LAYERS[key][1] == "text_encoder" else 0.0
    torch.testing.assert_close(fused_delta(modules, path, key, te, 1.0), theirs, rtol=1e-4, atol=1e-6)


def test_sgm_names_of_an_sdxl_unet_are_diffusers_own(sdxl_model):
    """kohya names SDXL layers in the SGM UNet's naming; each must reach the module diffusers' conversion reaches."""
    from diffusers.configuration_utils import FrozenDict
    from diffusers.loaders.lora_conversion_utils import (
        _convert_non_diffusers_lora_to_diffusers,
        _maybe_map_sgm_blocks_to_diffusers,
    )
    from diffusers.utils.state_dict_utils import convert_unet_state_dict_to_peft

    unet = ModelDir.open(sdxl_model).load_part("unet")
    names = {
        n: p
        for n, p in kohya_names("unet", unet).items()
        if any(s in n for s in ("input_blocks", "middle_block", "output_blocks"))
    }
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q" in names
    assert names["lora_unet_input_blocks_3_0_op"] == "down_blocks.0.downsamplers.0.conv"
    assert names["lora_unet_output_blocks_2_2_conv"] == "up_blocks.0.upsamplers.0.conv"
    # diffusers' reading of a kohya LoRA with these names, layer by layer (one tensor object per name)
    tensors = {}
    for name in names:
        tensors[f"{name}.lora_down.weight"] = torch.zeros(1, 1)
        tensors[f"{name}.lora_up.weight"] = torch.zeros(1, 1)
    mapped = _maybe_map_sgm_blocks_to_diffusers(dict(tensors), FrozenDict(unet.config))
    state, _ = _convert_non_diffusers_lora_to_diffusers(mapped)
    peft_state = convert_unet_state_dict_to_peft({k.removeprefix("unet."): v for k, v in state.items()})
    by_tensor = {id(v): k.split(".lora_A.")[0] for k, v in peft_state.items() if ".lora_A." in k}
    for name, path in names.items():
        assert by_tensor[id(tensors[f"{name}.lora_down.weight"])] == path, name


def _hash(modules) -> str:
    digest = hashlib.sha256()
    for _, module in sorted(modules.items()):
        for name, p in module.named_parameters():
            digest.update(name.encode())
            digest.update(p.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


@pytest.mark.parametrize(
    "case, message",
    [
        ("dora", "is a DoRA .* network; sdrt merges LoRA, LoCon, LoHa, LoKr"),
        ("oft", "is a LyCORIS OFT network"),
        ("nan", r"non-finite weights \(NaN or infinity\) in lora_unet_"),
        ("unfit", "fits no part of this model: none of its 1 unet layers is a layer of this model's unet"),
        ("partial", "adapts 2 layers of the unet, but only 1 match a layer of this model"),
        ("broken", "has tensors whose shapes do not compose"),
        ("unknown", "has keys sdrt does not merge: hada_extra"),
    ],
)
def test_bad_files_are_refused_naming_the_file_and_the_weights_stay_exact(modules, tmp_path, case, message):
    g = torch.Generator().manual_seed(5)
    q_name, q_shape = LAYERS["q"][0], tuple(weight(modules, "q").shape)
    good = loha(q_shape, g)
    layers = {
        "dora": {q_name: {**good, "dora_scale": torch.ones(q_shape[0], 1)}},
        "oft": {q_name: {"oft_blocks": torch.zeros(4, 8, 8), "alpha": torch.tensor(1.0)}},
        "nan": {q_name: {**good, "hada_w2_b": torch.full_like(good["hada_w2_b"], float("nan"))}},
        "unfit": {"lora_unet_mid_block_attentions_7_proj_in": loha((16, 16), g)},
        "partial": {q_name: good, "lora_unet_mid_block_attentions_7_proj_in": loha((16, 16), g)},
        "broken": {q_name: {**good, "hada_w1_b": torch.randn(RANK + 1, q_shape[1], generator=g)}},
        "unknown": {q_name: {**good, "hada_extra": torch.zeros(1)}},
    }[case]
    path = write(tmp_path / f"{case}.safetensors", layers)
    fuser = LoraFuser(modules)
    before = _hash(modules)
    good_path = write(tmp_path / "good.safetensors", {q_name: good})
    fuser.set([(good_path, 1.0)])  # a set held before the failed switch
    with pytest.raises(ValueError, match=message) as caught:
        fuser.set([(good_path, 1.0), (path, 1.0)])
    assert str(path) in str(caught.value) or path.name in str(caught.value)
    assert _hash(modules) == before  # the base weights, exactly, after the failed switch
    fuser.set(None)
    assert _hash(modules) == before
