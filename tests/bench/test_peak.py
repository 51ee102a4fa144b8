"""The FLOPs of a UNet call (ONNX graph count against torch's FlopCounterMode and hand formulas) and the FMA peak."""

from __future__ import annotations

import pytest
import torch

from sdrt.bench.peak import FmaPeak, flops_per_cycle, fma_peak, fraction_of_peak, onnx_flops, torch_flops, unet_shapes


def _export(module: torch.nn.Module, example: torch.Tensor, path) -> None:
    torch.onnx.export(module, (example,), str(path), input_names=["x"], output_names=["y"], dynamo=False)


def test_conv_and_linear_match_the_hand_formula(tmp_path):
    conv = torch.nn.Conv2d(3, 8, kernel_size=3, padding=1, groups=1)
    x = torch.randn(2, 3, 16, 12)
    hand = 2 * (2 * 8 * 16 * 12) * (3 * 3 * 3)  # 2 FLOPs x output elements x (Cin x kh x kw) multiply-adds each
    _export(conv, x, tmp_path / "conv.onnx")
    assert onnx_flops(tmp_path / "conv.onnx", {"x": (2, 3, 16, 12)}) == hand
    assert torch_flops(conv, x) == hand

    grouped = torch.nn.Conv2d(8, 8, kernel_size=3, padding=1, groups=4)
    x = torch.randn(1, 8, 10, 10)
    _export(grouped, x, tmp_path / "grouped.onnx")
    assert onnx_flops(tmp_path / "grouped.onnx", {"x": (1, 8, 10, 10)}) == 2 * (8 * 10 * 10) * (2 * 3 * 3)

    linear = torch.nn.Linear(32, 16)
    x = torch.randn(4, 5, 32)
    hand = 2 * 4 * 5 * 32 * 16
    _export(linear, x, tmp_path / "linear.onnx")
    assert onnx_flops(tmp_path / "linear.onnx", {"x": (4, 5, 32)}) == hand
    assert torch_flops(linear, x) == hand


def test_the_count_follows_the_input_shapes(tmp_path):
    """A dynamic batch axis: the count is for the shapes asked, not the exported ones."""
    linear = torch.nn.Linear(32, 16)
    path = tmp_path / "linear.onnx"
    torch.onnx.export(linear, (torch.randn(2, 32),), str(path), input_names=["x"], output_names=["y"], dynamo=False,
                      dynamic_axes={"x": {0: "batch"}})  # fmt: skip
    assert onnx_flops(path, {"x": (7, 32)}) == 2 * 7 * 32 * 16
    assert onnx_flops(path, {"x": (3, 32)}) == 2 * 3 * 32 * 16


def test_demo_unet_graph_count_matches_torch_flop_counter(artifact, demo_model):
    """The artifact's UNet graph (what the engines run) against diffusers' UNet counted by torch, at 2 rows."""
    from diffusers import UNet2DConditionModel

    from sdrt.manifest import read_manifest

    manifest = read_manifest(artifact)
    shapes = unet_shapes(artifact, width=64, height=48, rows=2)
    assert shapes["sample"] == (2, 4, 6, 8) and shapes["encoder_hidden_states"][:2] == (2, 77)
    graph = artifact / manifest.files["unet"].path
    counted = onnx_flops(graph, shapes)
    unet = UNet2DConditionModel.from_pretrained(demo_model / "unet").eval()
    sample = torch.randn(shapes["sample"])
    states = torch.randn(shapes["encoder_hidden_states"])
    reference = torch_flops(unet, sample, torch.tensor([500.0, 500.0]), states)
    assert counted > 0 and counted == reference
    assert onnx_flops(graph, unet_shapes(artifact, 64, 48, rows=4)) == 2 * counted  # FLOPs scale with the rows


@pytest.mark.parametrize(
    ("flags", "vendor", "family", "expected"),
    [
        ({"fma", "avx2", "avx512f"}, "AuthenticAMD", 25, 32),  # Zen 4: AVX-512 on two 256-bit pipes
        ({"fma", "avx2", "avx512f"}, "GenuineIntel", 6, 64),  # two 512-bit FMA units
        ({"fma", "avx2"}, "GenuineIntel", 6, 32),
        ({"avx"}, "GenuineIntel", 6, None),  # no FMA
    ],
)
def test_flops_per_cycle_from_flags(flags, vendor, family, expected):
    assert flops_per_cycle(flags, vendor, family) == expected


def test_fma_peak_is_measured_and_never_below_the_sgemm_ceiling():
    peak = fma_peak()
    assert peak.measured_core > 1e9  # any machine that runs these tests does a GFLOP/s per core
    assert peak.flops_per_second >= peak.measured == peak.cores * peak.measured_core
    if peak.nominal is not None:
        assert peak.flops_per_second >= peak.nominal
    assert f"{peak.flops_per_second / 1e9:.0f} GFLOP/s" in peak.method


def test_fraction_of_peak():
    peak = FmaPeak(200e9, 2, 160e9, 2.5e9, 32, 200e9, 100e9)
    assert fraction_of_peak(400e9, 4.0, peak) == pytest.approx(0.5)
