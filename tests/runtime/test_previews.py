"""Cheap latent previews: the web UI's linear latent -> RGB map, upscaling, and atomic preview files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sdrt.families.sd import SD_LATENT_RGB
from sdrt.runtime.previews import PreviewWriter, latents_to_rgb, preview_images

LATENT_RGB = torch.tensor(SD_LATENT_RGB)


def _one_channel(channel: int, value: float, shape: tuple[int, int, int] = (1, 3, 5)) -> torch.Tensor:
    """(N, 4, h, w) latents that are `value` in `channel` and zero elsewhere."""
    n, h, w = shape
    latents = torch.zeros(n, 4, h, w)
    latents[:, channel] = value
    return latents


def test_published_coefficients():
    # the SD 1.x rows of the AUTOMATIC1111 web UI's cheap_approximation, as published
    published = [[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]]
    assert torch.equal(LATENT_RGB, torch.tensor(published))


def test_zero_latents_are_mid_grey():
    rgb = latents_to_rgb(torch.zeros(1, 4, 2, 2))
    assert (rgb == 128).all()  # 127.5 rounds half to even


@pytest.mark.parametrize("channel", range(4))
def test_one_channel_gives_its_row(channel):
    rgb = latents_to_rgb(_one_channel(channel, 1.0))
    expected = np.clip(np.round(LATENT_RGB[channel].numpy() * 127.5 + 127.5), 0, 255)
    assert (rgb.numpy() == expected.astype(np.uint8)).all()


def test_known_colours():
    # channel 0 at 1: (0.298, 0.207, 0.208) * 127.5 + 127.5 = (165.5, 153.9, 154.0)
    assert latents_to_rgb(_one_channel(0, 1.0))[0, 0, 0].tolist() == [165, 154, 154]
    # channel 3 at 1: (-0.184, -0.271, -0.473) -> (104.0, 92.9, 67.2)
    assert latents_to_rgb(_one_channel(3, 1.0))[0, 0, 0].tolist() == [104, 93, 67]
    # channel 3 at -3: (0.552, 0.813, 1.419) -> (197.9, 231.2, 308.4 clamped to 255)
    assert latents_to_rgb(_one_channel(3, -3.0))[0, 0, 0].tolist() == [198, 231, 255]
    # channel 3 at 3 clamps at the other end: (-0.552, -0.813, -1.419) -> (57.1, 23.8, -53.4 clamped to 0)
    assert latents_to_rgb(_one_channel(3, 3.0))[0, 0, 0].tolist() == [57, 24, 0]


def test_linear_per_pixel():
    latents = torch.randn(2, 4, 3, 5, generator=torch.Generator().manual_seed(0)) * 0.5
    rgb = latents_to_rgb(latents).numpy().astype(np.float64)
    expected = np.einsum("nchw,cr->nhwr", latents.numpy(), LATENT_RGB.numpy()) * 127.5 + 127.5
    assert np.abs(rgb - np.clip(expected, 0, 255)).max() <= 0.5 + 1e-4


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_shape_dtype_device(dtype):
    latents = torch.randn(3, 4, 5, 7).to(dtype).requires_grad_()
    rgb = latents_to_rgb(latents)
    assert rgb.shape == (3, 5, 7, 3) and rgb.dtype == torch.uint8 and rgb.device.type == "cpu"


def test_nan_is_grey():
    latents = torch.zeros(1, 4, 1, 2)
    latents[0, 0, 0, 0] = float("nan")
    assert latents_to_rgb(latents)[0, 0, 0].tolist() == [128, 128, 128]


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (4, 5, 7), (1, 16, 8, 8)])
def test_rejects_other_shapes(shape):
    with pytest.raises(ValueError, match=rf"latents of shape \({', '.join(map(str, shape))}\) are not \(N, 4, h, w\)"):
        latents_to_rgb(torch.zeros(shape))


def test_rejects_integer_latents():
    with pytest.raises(ValueError, match="dtype torch.int64 are not floating point"):
        latents_to_rgb(torch.zeros(1, 4, 2, 2, dtype=torch.int64))


def test_preview_images_are_nearest_upscaled():
    latents = torch.randn(2, 4, 3, 5, generator=torch.Generator().manual_seed(1))
    rgb = latents_to_rgb(latents).numpy()
    images = preview_images(latents)
    assert len(images) == 2
    for image, small in zip(images, rgb, strict=True):
        assert image.mode == "RGB" and image.size == (5 * 8, 3 * 8)  # PIL size is (width, height)
        pixels = np.asarray(image)
        assert (pixels == small.repeat(8, axis=0).repeat(8, axis=1)).all()
    one = preview_images(latents, upscale=1)[0]
    assert one.size == (5, 3) and (np.asarray(one) == rgb[0]).all()


@pytest.mark.parametrize("upscale", [0, -2, 1.5, True])
def test_rejects_bad_upscale(upscale, tmp_path):
    with pytest.raises(ValueError, match=f"upscale {upscale!r} is not a positive integer"):
        preview_images(torch.zeros(1, 4, 2, 2), upscale=upscale)
    with pytest.raises(ValueError, match="is not a positive integer"):
        PreviewWriter(tmp_path, upscale=upscale)


def test_writer_writes_every_image_and_step(tmp_path):
    directory = tmp_path / "previews"  # created by the writer
    writer = PreviewWriter(directory, prefix="job7")
    steps = {}
    for step in range(3):
        latents = torch.randn(2, 4, 4, 6, generator=torch.Generator().manual_seed(step))
        writer(step, torch.tensor(999 - step * 333), latents)
        steps[step] = preview_images(latents)
    names = sorted(p.name for p in directory.iterdir())
    assert names == sorted(f"job7-img{i}-step{k}.png" for i in range(2) for k in range(3))  # and no temporary files
    for k, images in steps.items():
        for i, expected in enumerate(images):
            with Image.open(directory / f"job7-img{i}-step{k}.png") as saved:
                assert saved.size == (48, 32) and (np.asarray(saved.convert("RGB")) == np.asarray(expected)).all()


def test_writer_replaces_a_step_and_takes_a_float_timestep(tmp_path):
    writer = PreviewWriter(tmp_path)
    writer(0, 999.0, torch.zeros(1, 4, 2, 2))
    writer(0, 999.0, _one_channel(0, 1.0, (1, 2, 2)))
    assert [p.name for p in tmp_path.iterdir()] == ["preview-img0-step0.png"]
    with Image.open(writer.path(0, 0)) as saved:
        assert saved.getpixel((0, 0)) == (165, 154, 154)


def test_writer_leaves_no_temporary_file_on_failure(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError("disk full")

    writer = PreviewWriter(tmp_path)
    monkeypatch.setattr(Image.Image, "save", fail)
    with pytest.raises(OSError, match="disk full"):
        writer(0, 1.0, torch.zeros(1, 4, 2, 2))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("prefix", ["", "a/b"])
def test_writer_rejects_bad_prefix(prefix, tmp_path):
    with pytest.raises(ValueError, match=f"prefix {prefix!r} must be a non-empty file name part"):
        PreviewWriter(tmp_path, prefix=prefix)


def test_writer_as_a_diffusers_step_callback(diffusers_pipe, tmp_path):
    writer = PreviewWriter(tmp_path)
    steps = []

    def callback(step: int, timestep: torch.Tensor, latents: torch.Tensor) -> None:
        steps.append(step)  # diffusers numbers the steps its own way (PNDM's first call is step 1)
        writer(step, timestep, latents)

    diffusers_pipe.scheduler = diffusers_pipe.original_scheduler
    diffusers_pipe(
        ["a cat", "a dog"],
        height=64,
        width=96,
        num_inference_steps=3,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
        callback=callback,
        callback_steps=1,
    )
    assert len(steps) == 3
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(f"preview-img{i}-step{k}.png" for i in range(2) for k in steps)
    with Image.open(writer.path(1, steps[-1])) as saved:
        assert saved.size == (96, 64)
