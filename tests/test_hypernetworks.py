"""Hypernetworks as the web UI defines and applies them: files read as data, modules numbered as its Sequential,
the chain in every attention layer, against a reference written here from the web UI's definition; bad files
refused naming the file, the UNet left exactly as it was."""

from __future__ import annotations

import hashlib
import pickle
import zipfile

import pytest
import torch
import torch.nn.functional as F

from sdrt.hypernetworks import HypernetworkHooks, attention_layers, context_widths, read_hypernetwork
from sdrt.model_dir import ModelDir
from tests.hypernetwork_files import write_hypernetwork

# the web UI's activation names, as functions (its HypernetworkModule instantiates the torch classes)
_ACTIVATION_FNS = {"relu": F.relu, "leakyrelu": F.leaky_relu, "elu": F.elu, "swish": F.hardswish, "tanh": torch.tanh,
                   "sigmoid": torch.sigmoid, "gelu": F.gelu, "mish": F.mish}  # fmt: skip


def reference_side(data: dict, state: dict, x: torch.Tensor, multiplier: float) -> torch.Tensor:
    """The web UI's HypernetworkModule.forward, from its definition: x + linear(x) * multiplier, where linear is
    Linear layers of the layer_structure widths, the activation after each but the last (unless activate_output),
    a LayerNorm after each with is_layer_norm, and Dropout (identity at inference) where dropout_structure says."""
    if "linear1.weight" in state:  # the first files: two Linear layers, no activation
        h = F.linear(
            F.linear(x, state["linear1.weight"], state["linear1.bias"]), state["linear2.weight"], state["linear2.bias"]
        )
        return x + h * multiplier
    structure = data.get("layer_structure") or [1, 2, 1]
    activation, at, h = data.get("activation_func"), 0, x
    dropout = data.get("dropout_structure") or [0] * len(structure)
    for i in range(len(structure) - 1):
        h = F.linear(h, state[f"linear.{at}.weight"], state[f"linear.{at}.bias"])
        at += 1
        if activation not in (None, "linear") and (i < len(structure) - 2 or data.get("activate_output", True)):
            h = _ACTIVATION_FNS[activation](h)
            at += 1
        if data.get("is_layer_norm"):
            h = F.layer_norm(h, (h.shape[-1],), state[f"linear.{at}.weight"], state[f"linear.{at}.bias"])
            at += 1
        if dropout[i + 1] > 0:
            at += 1
    return x + h * multiplier


def reference_chain(files: list[tuple[dict, float]], context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The web UI's apply_hypernetworks: the key and value contexts through every hypernetwork of the chain that has
    modules for the context's width, in order."""
    context_k = context_v = context
    for data, multiplier in files:
        pair = data.get(context.shape[-1])
        if pair is not None:
            context_k = reference_side(data, pair[0], context_k, multiplier)
            context_v = reference_side(data, pair[1], context_v, multiplier)
    return context_k, context_v


class WebUIHypernetworkAttention:
    """A diffusers attention processor that runs the web UI's CrossAttention.forward with hypernetworks: the
    context (the text states, or the layer's own input for self-attention) rewritten before to_k and to_v apart."""

    def __init__(self, files: list[tuple[dict, float]]) -> None:
        self.files = files

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        batch = hidden_states.shape[0]
        query = attn.to_q(hidden_states)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        context_k, context_v = reference_chain(self.files, context)
        key, value = attn.to_k(context_k), attn.to_v(context_v)
        head = key.shape[-1] // attn.heads
        q, k, v = (t.view(batch, -1, attn.heads, head).transpose(1, 2) for t in (query, key, value))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, -1, attn.heads * head)
        return attn.to_out[1](attn.to_out[0](out)) / attn.rescale_output_factor


def load_data(path) -> dict:
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def unet(demo_model):
    return ModelDir.open(demo_model).load_part("unet")


SETTINGS = {
    "relu 1-2-1": {},
    "swish, layer norm, dropout, activate output": {
        "activation": "swish", "layer_norm": True, "dropout": (0, 0.3, 0), "activate_output": True,
    },
    "deep elu with dropout structure": {"structure": (1, 1.5, 2, 1), "activation": "elu", "dropout": (0, 0.3, 0.3, 0)},
    "linear": {"activation": "linear", "structure": (1, 1, 1)},
    "old linear1/linear2": {"old": True},
}  # fmt: skip


@pytest.mark.parametrize("name", list(SETTINGS))
def test_modules_are_the_web_uis(tmp_path, name):
    path = write_hypernetwork(tmp_path / "h.pt", [32, 64], seed=len(name), **SETTINGS[name])
    hypernetwork, data = read_hypernetwork(path), load_data(path)
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(0))
    for side in (0, 1):
        ours = x + hypernetwork.layers[32][side](x) * 0.6
        torch.testing.assert_close(ours, reference_side(data, data[32][side], x, 0.6), rtol=1e-5, atol=1e-6)
    assert hypernetwork.widths == (32, 64)


def _hash(module) -> str:
    digest = hashlib.sha256()
    for name, p in module.state_dict().items():
        digest.update(name.encode())
        digest.update(p.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _hooks(unet) -> int:
    return sum(len(a.to_k._forward_pre_hooks) + len(a.to_v._forward_pre_hooks) for a in attention_layers(unet))


def test_hooks_rewrite_keys_and_values_and_leave_the_unet_as_it_was(unet, tmp_path):
    a = write_hypernetwork(tmp_path / "a.pt", [32], seed=1, layer_norm=True)
    b = write_hypernetwork(tmp_path / "b.pt", [32, 64], seed=2, old=True)
    assert context_widths(unet) == {32, 64}  # the demo UNet's self-attention widths; its text states are 32 wide
    before, g = _hash(unet), torch.Generator().manual_seed(3)
    sample, states = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 77, 32, generator=g)
    t = torch.tensor([500])
    with torch.no_grad():
        plain = unet(sample, t, encoder_hidden_states=states).sample
        hooks = HypernetworkHooks(unet, [(read_hypernetwork(a), 0.8), (read_hypernetwork(b), 1.0)])
        ours = unet(sample, t, encoder_hidden_states=states).sample
        hooks.remove()
        again = unet(sample, t, encoder_hidden_states=states).sample
        unet.set_attn_processor(WebUIHypernetworkAttention([(load_data(a), 0.8), (load_data(b), 1.0)]))
        reference = unet(sample, t, encoder_hidden_states=states).sample
        from diffusers.models.attention_processor import AttnProcessor2_0

        unet.set_attn_processor(AttnProcessor2_0())
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(ours, plain, atol=1e-3)
    assert torch.equal(again, plain) and _hooks(unet) == 0 and _hash(unet) == before


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def _write_bomb(tmp_path):
    good = write_hypernetwork(tmp_path / "good.pt", [32], seed=1)
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(good) as z, zipfile.ZipFile(bomb, "w") as out:
        for member in z.infolist():
            data = bytes(200_000_000) if member.filename.endswith("data/0") else z.read(member)
            out.writestr(member, data, compress_type=zipfile.ZIP_DEFLATED)
    return bomb


@pytest.mark.parametrize(
    "case, message",
    [
        ("garbage", "is not a readable torch file"),
        ("truncated", "is not a readable torch file"),
        ("bomb", "is a decompression bomb"),
        ("code", "needs code to unpickle, which sdrt never runs"),
        ("nan", r"non-finite weights \(NaN or infinity\)"),
        ("activation", "activation_func 'frobnicate' is not one the web UI knows"),
        ("structure", "does not start and end with 1"),
        ("shapes", "does not fit the architecture its settings describe"),
        ("empty", "holds no modules"),
    ],
)
def test_bad_files_are_refused_naming_the_file(tmp_path, case, message):
    path = tmp_path / f"{case}.pt"
    if case == "garbage":
        path.write_bytes(b"\x00not a torch file" * 10)
    elif case == "truncated":
        good = write_hypernetwork(tmp_path / "good.pt", [32], seed=1)
        path.write_bytes(good.read_bytes()[:-400])
    elif case == "bomb":
        path = _write_bomb(tmp_path)
    elif case == "code":
        path.write_bytes(pickle.dumps({32: _Payload()}))
    else:
        data = load_data(write_hypernetwork(tmp_path / "good.pt", [32], seed=1))
        if case == "nan":
            data[32][0]["linear.0.weight"][0, 0] = float("nan")
        elif case == "activation":
            data["activation_func"] = "frobnicate"
        elif case == "structure":
            data["layer_structure"] = [2, 1]
        elif case == "shapes":
            data[32][1]["linear.0.weight"] = torch.zeros(3, 3)
        elif case == "empty":
            del data[32]
        torch.save(data, path)
    with pytest.raises(ValueError, match=message) as caught:
        read_hypernetwork(path)
    assert path.name in str(caught.value)
