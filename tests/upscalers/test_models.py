"""Upscaler files as users have them: every layout and format detected from its weights, bad files refused by name.

That these networks compute what spandrel's (the web UI's and ComfyUI's loader) do is checked where spandrel
imports: scripts/spandrel_parity.py (needs torchvision, which sdrt's environment cannot have).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from sdrt.demo.upscalers import write_upscaler
from sdrt.upscalers import load_upscaler, read_weights
from sdrt.upscalers.esrgan import EsrganConfig
from sdrt.upscalers.swinir import SwinIRConfig
from tests.upscalers.conftest import FILES


@pytest.mark.parametrize("name", list(FILES))
def test_every_layout_is_detected_with_its_true_scale(upscaler_dir, name):
    architecture, _, scale, suffix = FILES[name]
    model = load_upscaler(upscaler_dir / f"{name}{suffix}")
    assert (model.name, model.architecture, model.scale) == (name, architecture, scale)
    out = model.module()(torch.rand(1, 3, 8, 12))
    assert out.shape == (1, 3, 8 * scale, 12 * scale)


def test_the_three_esrgan_layouts_are_one_network(tmp_path):
    files = [write_upscaler(tmp_path / f"{layout}.pth", "ESRGAN", layout, seed=3) for layout in
             ("original", "bsrgan", "realesrgan")]  # fmt: skip
    states = [load_upscaler(f).state for f in files]
    assert all(s.keys() == states[0].keys() and all(torch.equal(s[k], states[0][k]) for k in s) for s in states)
    config = load_upscaler(files[0]).config
    assert config == EsrganConfig(blocks=1, features=8, growth=32, doublings=2, unshuffle=1)


def test_hyperparameters_come_from_the_weights(upscaler_dir):
    swinir = load_upscaler(upscaler_dir / "swinir-x4.pth").config
    assert isinstance(swinir, SwinIRConfig)
    assert (swinir.embed_dim, swinir.depths, swinir.heads, swinir.window) == (12, (2, 2), (2, 3), 4)
    assert (swinir.upsampler, swinir.residual_convs, swinir.multiple) == ("nearest+conv", 3, 4)
    x2 = load_upscaler(upscaler_dir / "realesrgan-x2plus.safetensors")
    assert (x2.config.unshuffle, x2.config.doublings, x2.multiple) == (2, 2, 2)


class _WritesMarker:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def test_a_pickle_that_would_run_code_is_refused_without_running(tmp_path):
    marker = tmp_path / "marker"
    evil = tmp_path / "4x-evil.pth"
    evil.write_bytes(pickle.dumps({"params_ema": {"conv_first.weight": _WritesMarker(marker)}}))
    with pytest.raises(ValueError, match=r"4x-evil\.pth needs code to unpickle, which sdrt never runs"):
        load_upscaler(evil)
    assert not marker.exists()


def test_bad_files_are_refused_naming_them(tmp_path):
    from safetensors.torch import save_file

    save_file({"unet.conv_in.weight": torch.zeros(4, 4, 3, 3)}, str(tmp_path / "not-an-upscaler.safetensors"))
    with pytest.raises(ValueError, match=r"not-an-upscaler\.safetensors is no upscaler architecture sdrt knows"):
        load_upscaler(tmp_path / "not-an-upscaler.safetensors")
    (tmp_path / "model.onnx").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"model\.onnx: upscaler files are \.safetensors, \.pth, \.pt"):
        read_weights(tmp_path / "model.onnx")
    torch.save(torch.nn.Conv2d(3, 3, 3), str(tmp_path / "whole-module.pth"))  # a pickled module, not a state dict
    with pytest.raises(ValueError, match=r"whole-module\.pth needs code to unpickle"):
        read_weights(tmp_path / "whole-module.pth")
    (tmp_path / "truncated.safetensors").write_bytes(b"\x10\x00\x00")
    with pytest.raises(ValueError, match=r"truncated\.safetensors is not a readable safetensors file"):
        read_weights(tmp_path / "truncated.safetensors")
    write_upscaler(tmp_path / "plus.pth", "ESRGAN", "original")
    state = torch.load(tmp_path / "plus.pth", weights_only=True)
    state["model.1.sub.0.RDB1.conv1x1.weight"] = torch.zeros(1)  # ESRGAN+, which sdrt does not implement
    torch.save(state, str(tmp_path / "plus.pth"))
    with pytest.raises(ValueError, match=r"plus\.pth: ESRGAN weights sdrt cannot read: ESRGAN\+"):
        load_upscaler(tmp_path / "plus.pth")
