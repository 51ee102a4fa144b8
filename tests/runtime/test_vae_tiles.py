"""The VAE in tiles equals diffusers' `vae.enable_tiling()`: decoder and encoder on every CPU backend, and a whole
x4 upscale whose output is larger than one tile."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from sdrt import Pipeline
from sdrt.runtime.vae_tiles import TiledVae
from tests.conftest import RANGES
from tests.runtime.compare import assert_images_close
from tests.runtime.test_upscaler_x4 import low_res

# latents of 112x120: tiles of 64 at 0, 48, 96 down and across, the last ones 16 and 24 wide (the x4 artifact's
# smallest latent size is 16, so none needs padding)
LATENT = (112, 120)


def _diffusers_vae(model_dir):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(model_dir / "vae", local_files_only=True).eval()
    vae.enable_tiling()
    return vae


@pytest.mark.parametrize("backend", ["torch", "onnxruntime", "openvino"])
def test_tiled_decoder_equals_diffusers(x4_pipelines, x4_model, backend):
    decoder = x4_pipelines[backend].engines["vae_decoder"]
    tiled = TiledVae(decoder.inner, "on")
    assert tiled.tile_latent == 64  # the x4 VAE's sample_size 256, over its factor 4
    latents = torch.randn(2, 4, *LATENT, generator=torch.Generator().manual_seed(0))
    ours = tiled({"latent": latents})["images"]
    with torch.no_grad():
        theirs = _diffusers_vae(x4_model).decode(latents).sample
    assert tiled.tiled_calls == 1 and ours.shape == theirs.shape == (2, 3, 448, 480)
    assert (ours - theirs).abs().max() < 2e-4
    whole = decoder.inner({"latent": latents[:, :, :64, :64]})["images"]  # one tile: no tiling, the engine itself
    assert torch.equal(tiled({"latent": latents[:, :, :64, :64]})["images"], whole) and tiled.tiled_calls == 1


def test_tiled_encoder_equals_diffusers(demo_model):
    """The SD VAE's encoder (tiles of 512 pixels, a quarter overlapping) on an image over two tiles wide (its last
    tiles 136 and 72 pixels: none under the engine's 64)."""
    pipe = Pipeline.load(demo_model, backend="torch", ranges=replace(RANGES, max_size=1024), vae_tiling="on")
    encoder = pipe.engines["vae_encoder"]
    images = torch.rand(1, 3, 520, 840, generator=torch.Generator().manual_seed(1)) * 2 - 1
    ours = encoder({"images": images})["latent_parameters"]
    with torch.no_grad():
        theirs = _diffusers_vae(demo_model).encode(images).latent_dist.parameters
    assert encoder.tiled_calls == 1 and ours.shape == theirs.shape == (1, 8, 65, 105)
    assert (ours - theirs).abs().max() < 2e-4


def test_auto_tiles_only_what_is_large(x4_pipelines):
    decoder = TiledVae(x4_pipelines["onnxruntime"].engines["vae_decoder"].inner, "auto", max_pixels=256 * 256)
    assert not decoder.tiles(torch.zeros(1, 4, 64, 64)) and decoder.tiles(torch.zeros(1, 4, 64, 65))
    off = TiledVae(decoder.inner, "off")
    assert not off.tiles(torch.zeros(1, 4, 999, 999))
    with pytest.raises(ValueError, match="vae_tiling 'sometimes' is not one of auto, on, off"):
        TiledVae(decoder.inner, "sometimes")


def test_an_upscale_larger_than_a_tile_equals_diffusers_with_tiling(x4_model):
    """512x480 out of 128x120: the x4 VAE decodes 128x120 latents in 3x3 tiles."""
    from diffusers import StableDiffusionUpscalePipeline

    ours = Pipeline.load(x4_model, backend="torch", ranges=replace(RANGES, max_size=512, latent_factor=4),
                         vae_tiling="on")  # fmt: skip
    image = low_res(seed=6).resize((120, 128))
    result = ours.generate("a tree", image=image, num_inference_steps=2, seed=4, noise_level=30)
    theirs = StableDiffusionUpscalePipeline.from_pretrained(x4_model, local_files_only=True)
    theirs.set_progress_bar_config(disable=True)
    theirs.vae.enable_tiling()
    expected = theirs("a tree", image=image, num_inference_steps=2, noise_level=30,
                      generator=[torch.Generator().manual_seed(4)]).images  # fmt: skip
    assert ours.engines["vae_decoder"].tiled_calls == 1
    assert_images_close(result.images, expected, size=(512, 480))
    assert np.asarray(result.images[0]).std() > 10
