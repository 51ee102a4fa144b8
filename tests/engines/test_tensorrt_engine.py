"""sdrt's TensorRT load, IO checks, runs (CUDA graphs off and on) and refit, on stand-ins of each major version.

The stand-ins (tensorrt_standin.py) hold only the real names of their version (test_tensorrt_names.py) and run
the ONNX graph with ONNX Runtime on the CPU, reading and writing the memory bound to the context; `SerialPlace`
orders work on the CPU and "captures" a CUDA graph as the enqueue it replays. What this checks is sdrt's side:
which calls it makes in which order, which buffers it binds, what it does with TensorRT's refusals. Whether
TensorRT computes the same on a GPU is for the gpu tests of test_tensorrt.py, which skip here.
"""

from __future__ import annotations

import functools
import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from sdrt.engines import call_in_chunks
from sdrt.engines.cuda_graphs import GraphCaptureError
from sdrt.engines.tensorrt_api import api_path
from sdrt.engines.tensorrt_backend import load_engines
from sdrt.engines.tensorrt_build import TensorRTOptions, build_plan, trt_logger
from sdrt.engines.tensorrt_profiles import build_profiles
from sdrt.manifest import read_manifest
from tests.engines.tensorrt_standin import SerialPlace, calls, make_tensorrt, printed

VERSIONS = ("10.0.1", "10.16.1", "11.4.0")  # 10.0's own memory API, the latest 10.x, the latest 11.x
OPT = {"cfg_batch": 2, "latent_height": 16, "latent_width": 16, "text_sequence": 77}  # the UNet's static profile


def _load(version, artifact, tmp_path, **options):
    trt = make_tensorrt(version)
    opts = TensorRTOptions(cache_dir=str(tmp_path / "cache"), **options)
    return trt, load_engines(trt, SerialPlace(), artifact, read_manifest(artifact), opts)


@functools.cache
def _session(path: str) -> ort.InferenceSession:
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def _reference(artifact, component, feeds):
    """The component's ONNX run by ONNX Runtime on the same feeds."""
    session = _session(str(artifact / read_manifest(artifact).files[component].path))
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {k: v.numpy() for k, v in feeds.items()}), strict=True))


def _feeds(engine, seed, **dims):
    generator = torch.Generator().manual_seed(seed)
    return engine.spec.sample_inputs({**OPT, **dims}, generator)


def _assert_matches(outputs, expected):
    assert set(outputs) == set(expected)
    for name, value in expected.items():
        assert np.abs(value).max() > 0, name  # not vacuous
        np.testing.assert_allclose(outputs[name].numpy(), value, rtol=0, atol=1e-5, err_msg=name)


# --- load and IO checks ------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_load_builds_deserializes_and_checks_every_engine(version, artifact, tmp_path):
    trt, engines = _load(version, artifact, tmp_path)
    assert set(engines) == set(read_manifest(artifact).components)
    assert len({id(e.memory) for e in engines.values()}) == 1, "one activation buffer for every engine"
    assert all(e.cuda_engine.num_optimization_profiles == len(e.profiles) for e in engines.values())
    assert sum(c[0] == "build_serialized_network" for c in calls(trt)) == len(engines)
    _, again = _load(version, artifact, tmp_path)  # the plans are reused from the engine cache
    assert set(again) == set(engines)


def test_a_plan_tensorrt_refuses_is_rebuilt_once(artifact, tmp_path, caplog, monkeypatch):
    _load("11.4.0", artifact, tmp_path)
    trt = make_tensorrt("11.4.0")
    real = trt.Runtime.deserialize_cuda_engine
    refused = []

    def refuse_the_first(self, serialized_engine):
        if not refused:
            refused.append(True)
            return None
        return real(self, serialized_engine)

    monkeypatch.setattr(trt.Runtime, "deserialize_cuda_engine", refuse_the_first)
    opts = TensorRTOptions(cache_dir=str(tmp_path / "cache"))
    with caplog.at_level(logging.WARNING, logger="sdrt"):
        engines = load_engines(trt, SerialPlace(), artifact, read_manifest(artifact), opts)
    assert "could not load the" in caplog.text and "rebuilding it" in caplog.text
    assert sum(c[0] == "build_serialized_network" for c in calls(trt)) == 1 and engines


def test_an_engine_whose_tensors_differ_from_the_manifest_is_refused(artifact, tmp_path, monkeypatch):
    trt = make_tensorrt("10.16.1")
    opts = TensorRTOptions(cache_dir=str(tmp_path / "cache"))
    manifest = read_manifest(artifact)
    half = trt.DataType.HALF
    real = trt.ICudaEngine.get_tensor_dtype
    monkeypatch.setattr(
        trt.ICudaEngine, "get_tensor_dtype", lambda self, name: half if name == "sample" else real(self, name)
    )
    with pytest.raises(ValueError, match="the unet engine's sample is an input of HALF; the manifest says an input of"):
        load_engines(trt, SerialPlace(), artifact, manifest, opts)
    monkeypatch.setattr(trt.ICudaEngine, "get_tensor_name", lambda self, index: f"t{index}")
    with pytest.raises(ValueError, match=r"engine has tensors \['t0', .*; the manifest says"):
        load_engines(trt, SerialPlace(), artifact, manifest, opts)


# --- runs ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_runs_match_the_graph_without_cuda_graphs(version, artifact, tmp_path):
    trt, engines = _load(version, artifact, tmp_path, cuda_graphs=False)
    unet = engines["unet"]
    for seed, dims in ((1, {}), (2, {"cfg_batch": 3, "latent_width": 9})):  # static, then dynamic profile
        feeds = _feeds(unet, seed, **dims)
        _assert_matches(unet(feeds), _reference(artifact, "unet", feeds))
    memory = [c[0] for c in calls(trt) if "device_memory" in c[0]]
    assert memory == ["device_memory" if version == "10.0.1" else "set_device_memory"]  # one eager context


def test_cuda_graphs_replay_new_feeds_through_their_static_buffers(artifact, tmp_path):
    _, engines = _load("11.4.0", artifact, tmp_path, max_cuda_graphs=2)
    unet = engines["unet"]
    for seed, dims in ((1, {}), (2, {}), (3, {"latent_height": 9}), (4, {"cfg_batch": 1}), (5, {})):
        feeds = _feeds(unet, seed, **dims)
        outputs = unet(feeds)
        _assert_matches(outputs, _reference(artifact, "unet", feeds))
        outputs["noise_pred"].zero_()  # a clone: the graph's own buffer is untouched
    # opt, opt (replayed), latent height 9, cfg batch 1 (drops opt), opt again (drops height 9): at most 2 kept
    assert len(unet.graphs) == 2 and unet.graphs.evictions == 2 and not unet.graphs.failed
    assert [key[0] for key in unet.graphs.keys()] == [1, 0]  # the dynamic profile's shape, then the static one


def test_a_failed_capture_runs_that_shape_eagerly(artifact, tmp_path, monkeypatch, caplog):
    _, engines = _load("11.4.0", artifact, tmp_path)
    unet = engines["unet"]

    def fail(self, enqueue):
        raise GraphCaptureError("CUDA graph capture failed: operation not permitted when stream is capturing")

    monkeypatch.setattr(SerialPlace, "capture", fail)
    feeds = _feeds(unet, 1)
    with caplog.at_level(logging.WARNING, logger="sdrt"):
        _assert_matches(unet(feeds), _reference(artifact, "unet", feeds))
    assert len(unet.graphs.failed) == 1 and "running that shape without one" in caplog.text
    _assert_matches(unet(feeds), _reference(artifact, "unet", feeds))  # eager from then on, no second try


# --- first-run doubts ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_chunks_at_unaligned_offsets_are_copied_before_binding(cuda_graphs, artifact, tmp_path):
    """TensorRT needs 256-byte aligned addresses; call_in_chunks' second chunk of 9x9 latents starts 2592 bytes in."""
    _, engines = _load("10.16.1", artifact, tmp_path, cuda_graphs=cuda_graphs)
    decoder = engines["vae_decoder"]
    latent = torch.randn(3, 4, 9, 9, generator=torch.Generator().manual_seed(3))
    assert latent[2:].data_ptr() % 256  # what the engine gets: a misaligned view
    images = call_in_chunks(decoder, {"latent": latent})["images"]
    expected = _reference(artifact, "vae_decoder", {"latent": latent[:2]})["images"]
    expected = np.concatenate([expected, _reference(artifact, "vae_decoder", {"latent": latent[2:]})["images"]])
    np.testing.assert_allclose(images.numpy(), expected, rtol=0, atol=1e-5)


def test_an_output_shape_tensorrt_disagrees_with_is_refused_before_running(artifact, tmp_path, monkeypatch):
    """An engine that would write a 4x upscale into the 8x image buffer the spec sized: refused, nothing written."""
    trt, engines = _load("11.4.0", artifact, tmp_path, cuda_graphs=False)
    real = trt.ICudaEngine._run
    monkeypatch.setattr(
        trt.ICudaEngine, "_run", lambda self, feeds: {k: v[..., ::2, ::2] for k, v in real(self, feeds).items()}
    )
    with pytest.raises(ValueError, match=r"vae_decoder engine would write images at shape \[1, 3, 64, 64\], but"):
        engines["vae_decoder"]({"latent": torch.randn(1, 4, 16, 16)})


def test_an_invalid_optimization_profile_is_refused_naming_it(artifact, tmp_path, monkeypatch):
    """add_optimization_profile returns -1 (it does not raise) for a profile TensorRT cannot use."""
    trt = make_tensorrt("11.4.0")
    monkeypatch.setattr(trt.IBuilderConfig, "add_optimization_profile", lambda self, profile: -1)
    manifest = read_manifest(artifact)
    spec = manifest.components["unet"]
    profiles = build_profiles(spec, manifest.ranges, "both")
    with pytest.raises(ValueError, match=r"unet: TensorRT found its static optimization profile invalid \(sample min"):
        build_plan(
            trt, api_path("11.4.0"),
            artifact / manifest.files["unet"].path, spec, profiles, TensorRTOptions(), tmp_path / "timing.cache",
        )  # fmt: skip


def test_verbose_messages_never_reach_python_unless_sdrt_logs_debug(caplog):
    """By default TensorRT gets its built-in Logger (severity filtered in C++); --verbose forwards everything."""
    trt = make_tensorrt("10.16.1")
    severity = trt.ILogger.Severity
    with caplog.at_level(logging.INFO, logger="sdrt"):
        logger = trt_logger(trt)
        assert isinstance(logger, trt.Logger) and logger.min_severity == severity.WARNING
        for level in (severity.VERBOSE, severity.INFO, severity.WARNING, severity.ERROR):
            logger.log(level, f"a {level.name} message")
    assert [p[0] for p in printed(trt)] == ["WARNING", "ERROR"]
    with caplog.at_level(logging.DEBUG, logger="sdrt"):
        verbose = trt_logger(trt)
        assert not isinstance(verbose, trt.Logger) and isinstance(verbose, trt.ILogger)
        verbose.log(severity.VERBOSE, "tactic timing")
        verbose.log(severity.ERROR, "a real error")
    assert [(r.levelname, r.getMessage()) for r in caplog.records if r.name.startswith("sdrt")] == [
        ("DEBUG", "TensorRT: tactic timing"),
        ("ERROR", "TensorRT: a real error"),
    ]


# --- refit ---------------------------------------------------------------------------------------------------


def _conv_weight(artifact):
    model = onnx.load(str(artifact / read_manifest(artifact).files["unet"].path))
    return {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}["unet.conv_in.weight"]


def test_refit_sets_the_weights_runs_use_and_drops_the_graphs(artifact, tmp_path):
    trt, engines = _load("10.0.1", artifact, tmp_path, refit=True)
    unet = engines["unet"]
    feeds = _feeds(unet, 1)
    before = unet(feeds)["noise_pred"]
    assert len(unet.graphs) == 1
    original = _conv_weight(artifact)
    unet.refit({"unet.conv_in.weight": original * 2})
    assert len(unet.graphs) == 0  # recaptured with the new weights
    changed = unet(feeds)["noise_pred"]
    assert not torch.equal(changed, before)
    unet.refit({"unet.conv_in.weight": original})
    assert torch.equal(unet(feeds)["noise_pred"], before)
    refits = [c for c in calls(trt) if c[0] == "refit_cuda_engine"]
    assert refits == [("refit_cuda_engine", ["unet.conv_in.weight"])] * 2


def test_refit_needs_a_refittable_engine(artifact, tmp_path):
    _, engines = _load("11.4.0", artifact, tmp_path)
    with pytest.raises(ValueError, match="the unet engine was built without refit; rebuild it with --refit"):
        engines["unet"].refit({"unet.conv_in.weight": _conv_weight(artifact)})


def test_refit_of_a_weight_tensorrt_keeps_in_bf16_names_the_weight(artifact, tmp_path, monkeypatch):
    """numpy has no bfloat16 (TensorRT's own nptype raises TypeError): a ValueError naming the weight instead."""
    trt, engines = _load("11.4.0", artifact, tmp_path, refit=True)
    real = trt.Refitter.get_weights_prototype

    def bf16(self, weights_name):
        prototype = real(self, weights_name)
        prototype._dtype = trt.DataType.BF16
        return prototype

    monkeypatch.setattr(trt.Refitter, "get_weights_prototype", bf16)
    with pytest.raises(ValueError, match=r"unet refit: TensorRT keeps weight unet\.conv_in\.weight as BF16, which has"):
        engines["unet"].refit({"unet.conv_in.weight": _conv_weight(artifact)})


def test_lora_switching_through_the_engines_refit(demo_model, artifact, tmp_path):
    """The runtime's LoRA switch refits the engines from the source model's weights (Refittable.refit_from, through
    the weight map, by initializer name): A, then none, is the base again."""
    from types import SimpleNamespace

    from sdrt.model_dir import ModelDir
    from sdrt.runtime.weights import NetworkWeights
    from tests.test_lora import lora_factors, write_kohya_lora

    _, engines = _load("10.16.1", artifact, tmp_path, refit=True, cuda_graphs=False)
    manifest = read_manifest(artifact)
    model = SimpleNamespace(
        family=manifest.model_family, engines=engines, manifest=manifest, backend="tensorrt", path=artifact
    )
    weights = NetworkWeights(model, model_dir=demo_model)
    modules = ModelDir.open(demo_model).load_modules()
    raw = {"unet": modules["unet"].unet, "text_encoder": modules["text_encoder"].text_encoder}
    lora = write_kohya_lora(tmp_path / "a.safetensors", lora_factors(raw, 1))
    unet = engines["unet"]
    feeds = _feeds(unet, 1)
    base = unet(feeds)["noise_pred"]
    weights.switch([(lora, 1.0)])
    with_lora = unet(feeds)["noise_pred"]
    weights.switch([])
    assert not torch.equal(with_lora, base) and torch.equal(unet(feeds)["noise_pred"], base)
