"""The TensorRT builder's choices, recorded by stand-ins of TensorRT 10.x and 11.x (tensorrt_standin.py).

What is checked: one code path per major version, strongly typed networks on both, no weak-typing API touched,
TF32 off unless asked, the profiles from the manifest, the timing cache's rejection handled, and TensorRT's
RuntimeError / False results turned into ValueErrors naming the component and shape. None of this builds or
runs an engine: that needs TensorRT and a GPU (test_tensorrt.py's gpu tests).
"""

from __future__ import annotations

import json
import logging
import sys
from types import SimpleNamespace

import pytest
import torch

from sdrt.engines import tensorrt_build
from sdrt.engines.tensorrt_api import TENSORRT_10, TENSORRT_11, api_path
from sdrt.engines.tensorrt_backend import bind_tensors, select_profile_on
from sdrt.engines.tensorrt_build import TensorRTOptions, build_plan, optimization_profile
from sdrt.engines.tensorrt_profiles import build_profiles
from sdrt.manifest import read_manifest
from tests.engines.tensorrt_standin import calls, make_tensorrt

VERSIONS = ("10.0.1", "10.1.0", "10.16.1", "11.0.0", "11.4.0")  # every tabulated version
WEAK = {"FP16", "BF16", "INT8", "FP8", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS"}


@pytest.fixture()
def unet(artifact):
    manifest = read_manifest(artifact)
    return artifact / manifest.files["unet"].path, manifest.components["unet"], manifest.ranges


def _build(version, unet, tmp_path, **options):
    trt = make_tensorrt(version)
    onnx_path, spec, ranges = unet
    profiles = build_profiles(spec, ranges, options.get("profile", "both"))
    plan = build_plan(
        trt, api_path(version), onnx_path, spec, profiles, TensorRTOptions(**options), tmp_path / "timing.cache"
    )
    return trt, json.loads(plan), profiles


@pytest.mark.parametrize("version", VERSIONS)
def test_every_build_is_strongly_typed_without_weak_typing_or_tf32(version, unet, tmp_path):
    trt, plan, profiles = _build(version, unet, tmp_path)
    (created,) = [c for c in calls(trt) if c[0] == "create_network"]
    # 10.x: strong typing by creation flag (STRONGLY_TYPED = 1); 11.x: always, the flag deprecated (and 0), none passed
    assert created == ("create_network", 1 << 1 if version.startswith("10.") else 0)
    assert plan["strongly_typed"] and not WEAK & set(plan["flags"])
    assert "TF32" not in plan["flags"], "TF32 is TensorRT's default and must be cleared for fp32 to be fp32"
    assert ("clear_flag", "TF32") in calls(trt)
    assert not [c for c in calls(trt) if c[0] == "set_flag"]
    spec = unet[1]
    assert plan["profiles"] == [{k: [list(s) for s in v] for k, v in p.shapes(spec).items()} for p in profiles]
    assert plan["optimization_level"] == 3


@pytest.mark.parametrize("version", VERSIONS)
def test_tf32_and_refit_only_when_asked(version, unet, tmp_path):
    trt, plan, _ = _build(version, unet, tmp_path, tf32=True, refit=True, workspace_gb=2.0, optimization_level=5)
    assert "TF32" in plan["flags"] and "REFIT" in plan["flags"] and plan["optimization_level"] == 5
    assert ("set_memory_pool_limit", trt.MemoryPoolType.WORKSPACE, 2 << 30) in calls(trt)


def test_weak_typing_is_gone_in_11_and_would_fail_a_strongly_typed_build_in_10():
    """Why sdrt never sets FP16: 11.x has no such flag, and 10.x refuses it on a strongly typed network."""
    assert not hasattr(make_tensorrt("11.4.0").BuilderFlag, "FP16")
    trt = make_tensorrt("10.16.1")
    builder = trt.Builder(tensorrt_build.trt_logger(trt))
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    assert builder.build_serialized_network(builder.create_network(TENSORRT_10.network_flags(trt)), config) is None


def test_a_rejected_timing_cache_is_replaced_not_written_back(unet, tmp_path, caplog):
    cache = tmp_path / "timing.cache"
    cache.write_bytes(json.dumps({"origin": "NVIDIA A100-SXM4-80GB", "entries": 40}).encode())
    with caplog.at_level(logging.WARNING, logger="sdrt"):
        trt, _, _ = _build("11.4.0", unet, tmp_path)
    attached = [c for c in calls(trt) if c[0] == "set_timing_cache"]
    assert attached == [
        ("set_timing_cache", "NVIDIA A100-SXM4-80GB", 40, False),  # refused: made on another GPU
        ("set_timing_cache", "NVIDIA H100 80GB HBM3", 0, False),  # a fresh one instead
    ]
    assert "refused the timing cache" in caplog.text
    assert json.loads(cache.read_bytes()) == {"origin": "NVIDIA H100 80GB HBM3", "entries": 1}

    cache.write_bytes(b"\x00 not a timing cache")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sdrt"):
        _build("10.16.1", unet, tmp_path)
    assert "unreadable timing cache" in caplog.text and json.loads(cache.read_bytes())["entries"] == 1
    _build("10.16.1", unet, tmp_path)  # an accepted cache is kept and grows
    assert json.loads(cache.read_bytes())["entries"] == 2


def test_refused_profile_shapes_name_the_component_and_input(unet, monkeypatch):
    trt = make_tensorrt("11.4.0")
    builder = trt.Builder(None)
    profile_type = type(builder.create_optimization_profile())
    _, spec, ranges = unet

    def refuse(self, input, min, opt, max):  # noqa: A002 (TensorRT's names)
        raise RuntimeError("Shape provided for min is inconsistent with other shapes.")

    monkeypatch.setattr(profile_type, "set_shape", refuse)
    dynamic = build_profiles(spec, ranges, "dynamic")[0]
    with pytest.raises(ValueError, match=r"unet: TensorRT refused the dynamic profile of input sample \(min \[1, 4"):
        optimization_profile(builder, spec, dynamic)


def test_run_time_refusals_are_value_errors_naming_the_component(unet, tmp_path):
    trt, plan, profiles = _build("10.16.1", unet, tmp_path, profile="static")
    context = trt.Runtime(None).deserialize_cuda_engine(trt.IHostMemory(json.dumps(plan).encode()))
    context = context.create_execution_context()
    select_profile_on(context, 0, 0, "unet", profiles)
    both = build_profiles(unet[1], unet[2], "both")
    with pytest.raises(ValueError, match=r"refused to switch unet to its dynamic profile \(index 1\)") as err:
        select_profile_on(context, 1, 0, "unet", both)
    assert isinstance(err.value.__cause__, RuntimeError)
    with pytest.raises(ValueError, match=r"refused input sample of unet at shape \[4, 4, 8, 8\]"):
        bind_tensors(context, {"sample": torch.zeros(4, 4, 8, 8)}, {}, "unet")


@pytest.mark.parametrize(
    ("version", "memory_call"),
    [
        ("10.0.1", "device_memory"),
        ("10.1.0", "set_device_memory"),
        ("10.16.1", "set_device_memory"),
        ("11.0.0", "set_device_memory"),
        ("11.4.0", "set_device_memory"),
    ],
)
def test_activation_memory_by_version(version, memory_call, unet, tmp_path):
    """10.0 has only device_memory_size and the device_memory property; later versions the _v2 / set_ forms."""
    trt, plan, _ = _build(version, unet, tmp_path)
    engine = trt.Runtime(None).deserialize_cuda_engine(trt.IHostMemory(json.dumps(plan).encode()))
    path = api_path(version)
    assert path is (TENSORRT_11 if version.startswith("11.") else TENSORRT_10)
    assert path.device_memory_size(engine) == 1 << 20
    context = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
    path.attach_memory(context, 0xABC000, 4096)
    assert [c for c in calls(trt) if "device_memory" in c[0]][0][0] == memory_call
    if version.startswith("11."):
        with pytest.raises(AttributeError):
            engine.device_memory_size  # noqa: B018 (removed in 11: the eager getattr default of old)


def test_versions_outside_10_and_11_are_refused_before_any_work(monkeypatch):
    assert api_path("10.0.1.6") is TENSORRT_10 and api_path("11.1.0") is TENSORRT_11
    with pytest.raises(ValueError, match="TensorRT 9.3.0 is too old"):
        api_path("9.3.0")
    with pytest.raises(ValueError, match=r"TensorRT 12\.0\.0 is newer than the 10\.x and 11\.x"):
        api_path("12.0.0")
    monkeypatch.setitem(sys.modules, "tensorrt", SimpleNamespace(__version__="12.0.0"))
    with pytest.raises(ValueError, match=r"needs TensorRT 10\.x or 11\.x .*: TensorRT 12\.0\.0 is newer"):
        tensorrt_build.tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", make_tensorrt("11.4.0"))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="torch sees no CUDA GPU"):
            tensorrt_build.tensorrt()


@pytest.mark.parametrize("version", ["10.16.1", "11.4.0"])
def test_deep_cache_networks_build_with_profiles_like_the_unets(version, deep_cache_artifacts, tmp_path):
    """`sdrt export --deep-cache`'s full and shallow networks: a static and a dynamic profile each, over every input
    the graph takes (the cached feature's at the latents' range over its divisor). The stand-in reads the graph's
    inputs, not its weights: whether TensorRT's own parser reads the shared weights file is untested without a GPU."""
    manifest = read_manifest(deep_cache_artifacts["sdxl"])
    networks = manifest.deep_cache_networks(0)
    unet_profiles = build_profiles(manifest.components["unet"], manifest.ranges)
    for name, spec in networks.components.items():
        (tmp_path / name).mkdir()
        onnx_path = deep_cache_artifacts["sdxl"] / networks.files[name].path
        _, plan, profiles = _build(version, (onnx_path, spec, networks.ranges), tmp_path / name)
        assert [p.kind for p in profiles] == [p.kind for p in unet_profiles] == ["static", "dynamic"]
        assert plan["profiles"] == [{k: [list(s) for s in v] for k, v in p.shapes(spec).items()} for p in profiles]
        assert set(plan["profiles"][1]) == set(spec.input_names)
        unet_shapes = unet_profiles[1].shapes(manifest.components["unet"])
        shared = {k: v for k, v in plan["profiles"][1].items() if k in unet_shapes}
        assert shared and shared == {k: [list(s) for s in unet_shapes[k]] for k in shared}  # the UNet's ranges
