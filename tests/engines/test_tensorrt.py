"""The TensorRT backend: profiles, cache keys and plan checks on the CPU; builds and runs where TensorRT and a GPU are.

The tests marked gpu skip, saying why, on a machine without TensorRT 10.x/11.x and a CUDA GPU. On the CPU, stand-ins
of TensorRT 10 and 11 that hold only the real API's names (test_tensorrt_names.py) check the builder's choices
(test_tensorrt_build.py) and sdrt's load, IO checks, runs with and without CUDA graphs and refit
(test_tensorrt_engine.py); no stand-in result stands for a GPU one.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from sdrt import Pipeline
from sdrt.components import unet_spec, vae_decoder_spec, vae_encoder_spec
from sdrt.engines import build_engines
from sdrt.engines.tensorrt_backend import TensorRTOptions
from sdrt.engines.tensorrt_cache import PLAN_FILE, GpuInfo, cache_key
from sdrt.engines.tensorrt_profiles import build_profiles, select_profile
from sdrt.manifest import read_manifest
from tests.conftest import RANGES

H100 = GpuInfo("NVIDIA H100 80GB HBM3", "9.0")
UNET = unet_spec(in_channels=4, out_channels=4, text_hidden_size=32, num_train_timesteps=1000)


# --- profiles from the manifest's ranges ---------------------------------------------------------------


def test_unet_profiles_double_the_batch_and_span_the_long_prompt_axis():
    """RANGES: 1..2 images (opt 1), 64..256 px (opt 128), 4 text chunks: cfg_batch 1..4, latents 8..32, text 77..308."""
    static, dynamic = build_profiles(UNET, RANGES, "both")
    assert (static.kind, dynamic.kind) == ("static", "dynamic")
    shapes = dynamic.shapes(UNET)
    assert shapes["sample"] == ((1, 4, 8, 8), (2, 4, 16, 16), (4, 4, 32, 32))
    assert shapes["timestep"] == ((1,), (2,), (4,))
    assert shapes["encoder_hidden_states"] == ((1, 77, 32), (2, 77, 32), (4, 308, 32))
    for low, opt, high in static.shapes(UNET).values():
        assert low == opt == high
    assert static.shapes(UNET)["sample"][1] == (2, 4, 16, 16)


def test_vae_and_text_encoder_profiles(artifact):
    decoder, encoder = vae_decoder_spec(4, 8), vae_encoder_spec(4, 8)
    assert build_profiles(decoder, RANGES, "dynamic")[0].shapes(decoder)["latent"] == (
        (1, 4, 8, 8),
        (1, 4, 16, 16),
        (2, 4, 32, 32),
    )
    assert build_profiles(encoder, RANGES, "dynamic")[0].shapes(encoder)["images"] == (
        (1, 3, 64, 64),
        (1, 3, 128, 128),
        (2, 3, 256, 256),
    )
    manifest = read_manifest(artifact)  # the real text encoder spec: cfg_batch rows of 77 tokens
    text = manifest.components["text_encoder"]
    shapes = build_profiles(text, manifest.ranges, "dynamic")[0].shapes(text)
    assert shapes == {"inputs_embeds": ((1, 77, 32), (2, 77, 32), (4, 77, 32)), "clip_skip": ((1,), (2,), (4,))}


def test_profile_modes():
    assert [p.kind for p in build_profiles(UNET, RANGES, "static")] == ["static"]
    assert [p.kind for p in build_profiles(UNET, RANGES, "dynamic")] == ["dynamic"]
    fixed = dataclasses.replace(RANGES, min_size=128, max_size=128, max_batch=1, max_text_chunks=1)
    decoder = vae_decoder_spec(4, 8)
    assert [p.kind for p in build_profiles(decoder, fixed, "both")] == ["static"]  # nothing varies
    assert [p.kind for p in build_profiles(UNET, fixed, "both")] == ["static", "dynamic"]  # cfg_batch is 1 or 2
    with pytest.raises(ValueError, match="profile 'fast' is not one of static, dynamic, both"):
        build_profiles(UNET, RANGES, "fast")


def test_static_profile_at_opt_else_dynamic():
    profiles = build_profiles(UNET, RANGES, "both")
    at_opt = {"cfg_batch": 2, "latent_height": 16, "latent_width": 16, "text_sequence": 77}
    assert select_profile(profiles, at_opt) == 0
    for symbol, value in (("cfg_batch", 4), ("latent_width", 13), ("text_sequence", 154)):
        assert select_profile(profiles, {**at_opt, symbol: value}) == 1
    assert select_profile(build_profiles(UNET, RANGES, "dynamic"), at_opt) == 0
    with pytest.raises(ValueError, match=r"unet: shapes cfg_batch=4.* fit none .*rebuild with --profile both"):
        select_profile(build_profiles(UNET, RANGES, "static"), {**at_opt, "cfg_batch": 4}, "unet")


# --- cache keys -------------------------------------------------------------------------------------------


def _key(**change):
    inputs = {
        "onnx_sha256": "a" * 64,
        "external_data_sha256": None,
        "settings": TensorRTOptions().settings(),
        "profiles": build_profiles(UNET, RANGES, "both"),
        "tensorrt_version": "10.13.0",
        "gpu": H100,
    }
    return cache_key(**{**inputs, **change})


def test_cache_key_changes_with_every_input_and_only_with_them():
    base = _key()
    assert _key() == base
    settings = TensorRTOptions().settings()
    changed = {
        "onnx": _key(onnx_sha256="b" * 64),
        "external data": _key(external_data_sha256="c" * 64),
        "tensorrt": _key(tensorrt_version="10.13.1"),
        "gpu model": _key(gpu=GpuInfo("NVIDIA H200", "9.0")),
        "compute capability": _key(gpu=GpuInfo(H100.name, "8.9")),
        "profiles": _key(profiles=build_profiles(UNET, dataclasses.replace(RANGES, max_batch=3), "both")),
        "text chunks": _key(profiles=build_profiles(UNET, dataclasses.replace(RANGES, max_text_chunks=2), "both")),
    }
    for field, value in (
        ("tf32", True),
        ("strongly_typed", False),
        ("profile", "dynamic"),
        ("refit", True),
        ("workspace_gb", 8.0),
        ("optimization_level", 5),
    ):
        assert field in settings
        changed[field] = _key(settings={**settings, field: value})
    assert base not in changed.values() and len(set(changed.values())) == len(changed), changed
    # run-time options are not build settings: the same plan serves them
    for runtime in (
        {"cuda_graphs": False},
        {"timing_cache": "/tmp/t.cache"},
        {"max_cuda_graphs": 2},
        {"cache_dir": "/c"},
    ):
        assert TensorRTOptions(**runtime).settings() == settings


def test_options_are_checked():
    with pytest.raises(ValueError, match=r"device 'cpu': the tensorrt backend needs TensorRT 10\.x or 11\.x .* GPU"):
        TensorRTOptions(device="cpu")
    with pytest.raises(ValueError, match="max_cuda_graphs 0 must be at least 1"):
        TensorRTOptions(max_cuda_graphs=0)
    with pytest.raises(ValueError, match="profile 'all' is not one of"):
        TensorRTOptions(profile="all")
    with pytest.raises(ValueError, match="workspace_gb -1"):
        TensorRTOptions(workspace_gb=-1)
    with pytest.raises(ValueError, match="optimization_level 6 is outside 0..5"):
        TensorRTOptions(optimization_level=6)


def test_without_tensorrt_the_errors_say_what_is_missing(artifact):
    if _tensorrt_reason() is None:
        pytest.skip("this machine has TensorRT and a GPU; the error path is for machines without them")
    manifest = read_manifest(artifact)
    with pytest.raises(ValueError, match=r"needs TensorRT 10\.x or 11\.x .* and an NVIDIA GPU"):
        build_engines(artifact, manifest, "tensorrt")
    if torch.cuda.is_available():  # a GPU but no TensorRT
        with pytest.raises(ValueError, match=r"needs TensorRT 10\.x or 11\.x .* and an NVIDIA GPU"):
            build_engines(artifact, manifest, "tensorrt", device="cuda")


# --- on a GPU with TensorRT ---------------------------------------------------------------------------------

KWARGS = {"height": 72, "width": 104, "num_inference_steps": 6, "seed": 11, "scheduler": "euler_a"}


def _tensorrt_reason() -> str | None:
    if not torch.cuda.is_available():
        return "needs a CUDA GPU and a CUDA build of torch; this machine has neither"
    try:
        import tensorrt
    except (ImportError, OSError) as exc:
        return f"needs TensorRT 10.x or 11.x (import tensorrt failed: {exc})"
    if int(tensorrt.__version__.split(".")[0]) not in (10, 11):
        return f"needs TensorRT 10.x or 11.x; this is {tensorrt.__version__}"
    return None


@pytest.fixture()
def gpu_artifact(request):
    reason = _tensorrt_reason()
    if reason:
        pytest.skip(reason)
    return request.getfixturevalue("fresh_artifact")  # only where TensorRT runs: copying costs time


def _max_diff(a, b) -> int:
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


@pytest.mark.gpu
def test_fp32_engines_match_onnxruntime_and_fp16_stay_close(gpu_artifact, demo_model, pipelines, tmp_path):
    """Strongly typed builds: an fp32 artifact gives fp32 engines (TF32 off), an fp16 artifact fp16 ones."""
    from tests.engines.test_cuda import FP16_PSNR_DB
    from tests.export.test_fp16 import export_fp16, psnr

    reference = pipelines["onnxruntime"].generate("a cat", **KWARGS).images[0]
    fp32 = Pipeline.load(gpu_artifact, backend="tensorrt", device="cuda")
    assert _max_diff(fp32.generate("a cat", **KWARGS).images[0], reference) <= 2
    fp16_artifact = export_fp16(demo_model, gpu_artifact, tmp_path / "fp16")
    fp16 = Pipeline.load(fp16_artifact, backend="tensorrt", device="cuda")
    assert psnr(fp16.generate("a cat", **KWARGS).images[0], reference) > FP16_PSNR_DB


@pytest.mark.gpu
def test_graphs_static_and_dynamic_shapes_agree_with_eager(gpu_artifact):
    graphs = Pipeline.load(gpu_artifact, backend="tensorrt", device="cuda")
    eager = Pipeline.load(gpu_artifact, backend="tensorrt", device="cuda", cuda_graphs=False)
    for size in ({"height": 128, "width": 128}, {"height": 72, "width": 104}, {"height": 128, "width": 128}):
        args = {**KWARGS, **size}
        assert _max_diff(graphs.generate("a cat", **args).images[0], eager.generate("a cat", **args).images[0]) == 0
    unet = graphs.engines["unet"]
    assert {key[0] for key in unet.graphs.keys()} == {0, 1}  # the static profile at opt, the dynamic one elsewhere
    assert not unet.graphs.failed


@pytest.mark.gpu
def test_graph_cache_is_bounded(gpu_artifact):
    pipe = Pipeline.load(gpu_artifact, backend="tensorrt", device="cuda", max_cuda_graphs=1)
    for size in (64, 72, 64):
        pipe.generate("a cat", **{**KWARGS, "height": size, "width": size})
    unet = pipe.engines["unet"]
    assert len(unet.graphs) == 1 and unet.graphs.evictions == 2


@pytest.mark.gpu
def test_plans_are_reused_and_a_damaged_plan_is_rebuilt(gpu_artifact, caplog):
    manifest = read_manifest(gpu_artifact)
    first = {r.component: r for r in build_engines(gpu_artifact, manifest, "tensorrt", device="cuda")}
    again = {r.component: r for r in build_engines(gpu_artifact, manifest, "tensorrt", device="cuda")}
    assert all(r.reused for r in again.values()) and all(not r.reused for r in first.values())
    plan = __import__("pathlib").Path(first["vae_decoder"].path) / PLAN_FILE
    plan.write_bytes(plan.read_bytes()[: plan.stat().st_size // 2])
    with caplog.at_level("WARNING"):
        rebuilt = {r.component: r for r in build_engines(gpu_artifact, manifest, "tensorrt", device="cuda")}
    assert not rebuilt["vae_decoder"].reused and "truncated" in caplog.text
    assert Pipeline.load(gpu_artifact, backend="tensorrt", device="cuda").generate("a cat", **KWARGS).images


@pytest.mark.gpu
def test_lora_switching_by_refit_is_exact(gpu_artifact, demo_model, tmp_path):
    from sdrt.model_dir import ModelDir
    from tests.test_lora import lora_factors, write_kohya_lora

    pipe = Pipeline.load(gpu_artifact, backend="tensorrt", device="cuda", refit=True, model_dir=demo_model)
    modules = ModelDir.open(demo_model).load_modules()
    raw = {"unet": modules["unet"].unet, "text_encoder": modules["text_encoder"].text_encoder}
    a = write_kohya_lora(tmp_path / "a.safetensors", lora_factors(raw, 1))
    b = write_kohya_lora(tmp_path / "b.safetensors", lora_factors(raw, 2))
    base = pipe.generate("a cat", **KWARGS).images[0]
    images = []
    for lora in (a, b, a, None):
        pipe.set_lora(lora)
        images.append(pipe.generate("a cat", **KWARGS).images[0])
    assert _max_diff(images[0], images[1]) > 0
    assert _max_diff(images[0], images[2]) == 0 and _max_diff(images[3], base) == 0


@pytest.fixture()
def deep_cache_gpu_artifact(request):
    reason = _tensorrt_reason()
    if reason:
        pytest.skip(reason)
    return request.getfixturevalue("deep_cache_artifacts")["sd1"]  # exported only where TensorRT runs


@pytest.mark.gpu
def test_deep_cache_engines_read_the_shared_weights_and_match_onnxruntime(deep_cache_gpu_artifact):
    """TensorRT's parser reads the DeepCache graphs' weights from their shared file (external data by offset), and
    the engines give ONNX Runtime's images (TF32 off: fp32 both)."""
    from sdrt.runtime.deep_cache import DeepCache

    kwargs = {**KWARGS, "deep_cache": DeepCache(2, 1)}
    reference = Pipeline.load(deep_cache_gpu_artifact, backend="onnxruntime").generate("a cat", **kwargs).images[0]
    ours = Pipeline.load(deep_cache_gpu_artifact, backend="tensorrt", device="cuda").generate("a cat", **kwargs)
    assert _max_diff(ours.images[0], reference) <= 2
