"""The VAE decoder guard: NaN/Inf never becomes a black image; it falls back to float32 once, or says why not."""

from __future__ import annotations

import logging

import pytest
import torch

from sdrt.engines import Engine, call_in_chunks
from sdrt.runtime.vae_guard import NonFiniteOutputError, VaeDecoderGuard
from sdrt.spec import ShapeRanges
from tests.conftest import RANGES


class FakeDecoder:
    """An engine returning `value` everywhere (NaN for an overflowing fp16 decoder), counting its calls."""

    def __init__(self, value: float, spec) -> None:
        self.value = value
        self.spec = spec
        self.ranges = RANGES
        self.device = torch.device("cpu")
        self.calls = 0

    def __call__(self, feeds):
        self.calls += 1
        latent = feeds["latent"]
        return {"images": torch.full((latent.shape[0], 3, 8 * latent.shape[2], 8 * latent.shape[3]), self.value)}


@pytest.fixture()
def spec():
    from sdrt.components import vae_decoder_spec

    return vae_decoder_spec(latent_channels=4, latent_factor=8)


def _feeds(batch=1):
    return {"latent": torch.randn(batch, 4, 8, 8)}


def test_finite_output_passes_and_fallback_is_never_built(spec):
    built = []
    guard = VaeDecoderGuard(FakeDecoder(0.5, spec), fallback=lambda: built.append(1))
    assert isinstance(guard, Engine)
    out = guard(_feeds())["images"]
    assert out.shape == (1, 3, 64, 64) and (out == 0.5).all()
    assert built == [] and not guard.fell_back


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_output_falls_back_once_and_stays(spec, bad, caplog):
    primary, fallback = FakeDecoder(bad, spec), FakeDecoder(0.25, spec)
    made = []

    def make():
        made.append(1)
        return fallback

    guard = VaeDecoderGuard(primary, fallback=make)
    with caplog.at_level(logging.WARNING, logger="sdrt.runtime.vae_guard"):
        first = guard(_feeds())["images"]
        second = guard(_feeds())["images"]
    assert (first == 0.25).all() and (second == 0.25).all()
    assert primary.calls == 1, "after an overflow the fp16 decoder is not tried again"
    assert fallback.calls == 2 and made == [1] and guard.fell_back
    assert [r.levelname for r in caplog.records] == ["WARNING"], "one warning, not one per call"
    assert "decoding in float32" in caplog.text


def test_fallback_may_be_an_engine(spec):
    fallback = FakeDecoder(0.0, spec)
    guard = VaeDecoderGuard(FakeDecoder(float("nan"), spec), fallback=fallback)
    assert (guard(_feeds())["images"] == 0.0).all() and fallback.calls == 1


def test_without_fallback_the_error_says_what_to_do(spec):
    guard = VaeDecoderGuard(FakeDecoder(float("nan"), spec))
    with pytest.raises(NonFiniteOutputError, match="no float32 decoder is available.*--vae-precision fp32"):
        guard(_feeds())
    assert issubclass(NonFiniteOutputError, ValueError)  # the CLI reports ValueErrors as errors, not tracebacks


def test_non_finite_latents_blame_the_denoising_loop(spec):
    primary = FakeDecoder(0.5, spec)
    guard = VaeDecoderGuard(primary, fallback=FakeDecoder(0.5, spec))
    latents = _feeds()
    latents["latent"][0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteOutputError, match="input latent holds NaN or Inf: the denoising loop overflowed"):
        guard(latents)
    assert primary.calls == 0


def test_a_failing_fallback_is_an_error(spec):
    guard = VaeDecoderGuard(FakeDecoder(float("nan"), spec), fallback=FakeDecoder(float("nan"), spec))
    with pytest.raises(NonFiniteOutputError, match="float32 VAE decoder produced NaN or Inf too"):
        guard(_feeds())


def test_guard_chunks_like_the_engine(spec):
    """call_in_chunks reads the guard's ranges and spec, as the pipeline's VAE decode does."""
    primary = FakeDecoder(float("nan"), spec)
    primary.ranges = ShapeRanges(max_batch=1, min_size=64, max_size=256, opt_size=128)
    fallback = FakeDecoder(0.5, spec)
    guard = VaeDecoderGuard(primary, fallback=fallback)
    out = call_in_chunks(guard, _feeds(batch=3))["images"]
    assert out.shape[0] == 3 and (out == 0.5).all() and primary.calls == 1 and fallback.calls == 3


def test_float16_torch_decoder_falls_back_to_its_float32_copy(demo_model):
    """The torch backend's float16 VAE decoder, made to overflow, decodes like its float32 engine instead.

    The copy computes in float32 from the float16 weights (as diffusers' upcast_vae does): measured
    largest difference 3.3e-3 from the float32 engine in [-1, 1] images, under half an 8-bit level.
    """
    from sdrt.engines import load_engines
    from sdrt.manifest import Manifest
    from sdrt.model_dir import ModelDir

    manifest = Manifest.for_model(ModelDir.open(demo_model), RANGES)
    decoder = load_engines(
        demo_model, manifest, "torch", modules=ModelDir.open(demo_model).load_modules, vae_dtype="float16"
    )["vae_decoder"]
    decoder._forward = lambda latent: torch.full((latent.shape[0], 3, 64, 64), float("nan"), dtype=latent.dtype)
    reference = load_engines(demo_model, manifest, "torch", modules=ModelDir.open(demo_model).load_modules)[
        "vae_decoder"
    ]
    guard = VaeDecoderGuard(decoder, fallback=decoder.float32_copy)
    feeds = {"latent": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))}
    torch.testing.assert_close(guard(feeds)["images"], reference(feeds)["images"], atol=1 / 255, rtol=0)
