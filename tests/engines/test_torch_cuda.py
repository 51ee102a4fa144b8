"""The torch backend's speed options: compute dtype, SDPA, channels_last, torch.compile and CUDA graphs.

Engines take and return float32 whatever they compute in. On the CPU this checks the options and the
dtype/layout plumbing (float16 runs on the CPU too, slowly); compile and CUDA graphs need a GPU and
skip without one, saying why.
"""

from __future__ import annotations

import pytest
import torch

from sdrt import Pipeline
from sdrt.engines import load_engines
from sdrt.engines.torch_backend import CudaGraphRunner, TorchOptions, options
from sdrt.manifest import Manifest
from sdrt.model_dir import ModelDir
from tests.conftest import RANGES
from tests.export.test_fp16 import psnr

# fp16 against fp32 on the same inputs, relative RMS error, measured on the CPU: UNet 2.0e-3, text
# encoder 0.8e-3, VAE decoder 2.8e-3. fp16's unit roundoff is 4.9e-4; a cast or layout bug is off by O(1).
FP16_RMS_BOUND = 1e-2
# channels_last only reorders memory: the CPU's convolutions sum in another order, nothing more.
LAYOUT_ATOL = 1e-5
VALUES = {"batch": 1, "cfg_batch": 1, "latent_height": 8, "latent_width": 8, "text_length": 77, "text_sequence": 77}
KWARGS = {"height": 72, "width": 104, "num_inference_steps": 6, "seed": 11, "scheduler": "euler_a"}
# 8-bit PSNR of a float16 GPU image against the float32 CPU image of the same request; on the CPU the
# same comparison gives > 50 dB for fp16 ONNX graphs (tests/export/test_fp16.py). Unmeasured on a GPU.
GPU_FP16_PSNR_DB = 35.0


@pytest.fixture(scope="module")
def manifest(demo_model) -> Manifest:
    return Manifest.for_model(ModelDir.open(demo_model), RANGES)


@pytest.fixture(scope="module")
def fp32(demo_model, manifest):
    """The default CPU engines: float32, no channels_last."""
    return load_engines(demo_model, manifest, "torch", modules=ModelDir.open(demo_model).load_modules)


# a mark, not a skip in the body: the skip comes before the GPU tests' fixtures export anything
needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU and a CUDA build of torch; this machine has neither"
)


def _rms(reference: torch.Tensor, out: torch.Tensor) -> float:
    return float((out.double() - reference.double()).pow(2).mean().sqrt() / reference.double().pow(2).mean().sqrt())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"dtype": "half"}, "dtype 'half' is not one of float32, float16, bfloat16"),
        ({"vae_dtype": "int8"}, "vae_dtype 'int8' is not one of"),
        ({"compile_mode": "fast"}, "compile_mode 'fast' is not one of"),
        ({"cuda_graphs": True}, "cuda_graphs needs a CUDA device, not 'cpu'"),
        (
            {"device": "cuda", "cuda_graphs": True, "compile": True, "compile_mode": "reduce-overhead"},
            "captures CUDA graphs itself",
        ),
    ],
)
def test_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        options(**kwargs)


def test_defaults_per_device():
    cpu, cuda = TorchOptions(), TorchOptions(device="cuda:1")  # properties below need no GPU
    assert (cpu.compute_dtype, cpu.vae_compute_dtype, cpu.use_channels_last) == (torch.float32, torch.float32, False)
    assert (cuda.compute_dtype, cuda.vae_compute_dtype, cuda.use_channels_last) == (torch.float16, torch.float32, True)
    assert TorchOptions(device="cuda", dtype="float32", channels_last=False).compute_dtype == torch.float32
    assert not cpu.compile and not cpu.cuda_graphs


def test_float16_engines_cast_at_the_boundary(demo_model, manifest, fp32):
    """float16 text encoder and UNet, float32 VAE, channels_last: float32 tensors in and out, fp32's values."""
    fp16 = load_engines(
        demo_model,
        manifest,
        "torch",
        modules=ModelDir.open(demo_model).load_modules,
        dtype="float16",
        channels_last=True,
    )
    unet = fp16["unet"]
    assert unet.module.unet.dtype == torch.float16 and fp16["text_encoder"].module.text_encoder.dtype == torch.float16
    assert fp16["vae_decoder"].module.vae.dtype == torch.float32
    conv = unet.module.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    for name in ("unet", "text_encoder"):
        feeds = fp16[name].spec.sample_inputs(VALUES, torch.Generator().manual_seed(3))
        (out,) = fp16[name](feeds).values()
        (reference,) = fp32[name](feeds).values()
        assert out.dtype == torch.float32 and out.is_contiguous() and out.shape == reference.shape
        assert _rms(reference, out) < FP16_RMS_BOUND, name


def test_channels_last_float32_matches(demo_model, manifest, fp32):
    nhwc = load_engines(
        demo_model, manifest, "torch", modules=ModelDir.open(demo_model).load_modules, channels_last=True
    )["unet"]
    feeds = nhwc.spec.sample_inputs(VALUES, torch.Generator().manual_seed(4))
    out = nhwc(feeds)["noise_pred"]
    assert out.is_contiguous()
    torch.testing.assert_close(out, fp32["unet"](feeds)["noise_pred"], atol=LAYOUT_ATOL, rtol=0)


def test_attention_is_sdpa(fp32):
    from diffusers.models.attention_processor import AttnProcessor2_0

    engines = fp32
    for module in (engines["unet"].module.unet, engines["vae_decoder"].module.vae):
        assert {type(p) for p in module.attn_processors.values()} == {AttnProcessor2_0}
    assert engines["text_encoder"].module.text_encoder.config._attn_implementation == "sdpa"


def test_float32_copy(demo_model, manifest):
    engines = load_engines(
        demo_model, manifest, "torch", modules=ModelDir.open(demo_model).load_modules, vae_dtype="float16"
    )
    decoder = engines["vae_decoder"]
    copy = decoder.float32_copy()
    assert copy.dtype == torch.float32 and copy.module.vae.dtype == torch.float32
    assert decoder.module.vae.dtype == torch.float16, "the copy must leave the float16 engine as it was"
    assert copy.float32_copy() is copy


def test_backend_options_through_the_pipeline(demo_model):
    pipe = Pipeline.load(demo_model, backend="torch", ranges=RANGES, dtype="bfloat16")
    assert pipe.engines["unet"].dtype == torch.bfloat16
    with pytest.raises(ValueError, match="backend torch has no option optimization"):
        Pipeline.load(demo_model, backend="torch", ranges=RANGES, optimization="all")


@pytest.mark.gpu
@needs_cuda
def test_cuda_graph_runner_replays_each_shape():
    device = torch.device("cuda", torch.cuda.current_device())
    weight = torch.randn(8, 8, device=device)
    calls = []

    def step(feeds):
        calls.append(1)
        return {"y": feeds["x"] @ weight + 1}

    runner = CudaGraphRunner(step, device, warmup_calls=2)
    for shape in ((2, 8), (3, 8), (2, 8)):
        x = torch.randn(*shape, device=device)
        out = runner({"x": x})
        torch.testing.assert_close(out["y"], x @ weight + 1)
    first = runner({"x": torch.ones(2, 8, device=device)})["y"]
    runner({"x": torch.zeros(2, 8, device=device)})
    torch.testing.assert_close(first, torch.ones(2, 8, device=device) @ weight + 1, msg="outputs must be copies")
    assert len(calls) == 2 * 3, "two shapes, each warmed up twice and captured once; replays run no Python"


@pytest.mark.gpu
@needs_cuda
def test_graphs_are_bounded_share_one_pool_and_a_failed_capture_runs_eagerly(caplog):
    from sdrt.engines.cuda_graphs import graph_pool, shape_key

    device = torch.device("cuda", torch.cuda.current_device())
    runner = CudaGraphRunner(lambda feeds: {"y": feeds["x"] * 2}, device, warmup_calls=1, max_graphs=1)
    for n in (2, 3, 2):
        x = torch.randn(n, device=device)
        torch.testing.assert_close(runner({"x": x})["y"], x * 2)
    assert len(runner.graphs) == 1 and runner.graphs.evictions == 2
    assert graph_pool(device) is graph_pool(device), "one pool per device"

    def sync_while_capturing(feeds):  # not permitted during a capture: CUDA would report its own error at the end
        if torch.cuda.is_current_stream_capturing():
            raise RuntimeError("the engine refused to be captured")
        return {"y": feeds["x"] + 1}

    failing = CudaGraphRunner(sync_while_capturing, device, warmup_calls=1)
    x = torch.randn(4, device=device)
    with caplog.at_level("WARNING", logger="sdrt"):
        torch.testing.assert_close(failing({"x": x})["y"], x + 1)
        torch.testing.assert_close(failing({"x": x})["y"], x + 1)
    assert shape_key({"x": x}) in failing.graphs.failed and len(failing.graphs) == 0
    assert "the engine refused to be captured" in caplog.text, "the error raised inside the capture, not CUDA's"


@pytest.mark.gpu
@pytest.mark.parametrize(
    "settings",
    [{}, {"cuda_graphs": True}, {"compile": True, "cuda_graphs": True}],
    ids=["fp16", "fp16-cuda-graphs", "fp16-compile-cuda-graphs"],
)
@needs_cuda
def test_cuda_fp16_paths_match_the_cpu(demo_model, pipelines, settings):
    gpu = Pipeline.load(demo_model, backend="torch", device="cuda", ranges=RANGES, **settings)
    assert gpu.engines["unet"].dtype == torch.float16
    db = psnr(gpu.generate("a cat", **KWARGS).images[0], pipelines["torch"].generate("a cat", **KWARGS).images[0])
    assert db > GPU_FP16_PSNR_DB, f"PSNR {db:.1f} dB"
