"""Upscalers on every backend, in tiles: each backend equals the torch module, tiles equal a whole-image run away
from the seams, and the web UI's tile grid and its upscale-to-a-size rules."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from sdrt.engines.tensorrt_build import TensorRTOptions
from sdrt.export.upscalers import cached_export, engine_factory
from sdrt.upscalers import Tiling, Upscaler, UpscalerArtifact, load_upscaler, tiles, to_image, to_tensor
from sdrt.upscalers.library import torch_engines
from tests.upscalers.conftest import FILES, smooth_image

CPU_BACKENDS = ("onnxruntime", "openvino")
NAMES = ("esrgan-original", "realesrgan-x2plus", "compact-x4", "swinir-x4")


def _file(directory, name):
    return directory / f"{name}{FILES[name][3]}"


@pytest.fixture(scope="module")
def exports(upscaler_dir, tmp_path_factory):
    return tmp_path_factory.mktemp("upscaler-exports")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_each_backend_equals_the_torch_module(upscaler_dir, exports, backend, name):
    model = load_upscaler(_file(upscaler_dir, name))
    tiling = Tiling(tile=32, overlap=8)  # a 37x45 image: reflection-padded, then 2x2 tiles in one batch
    reference = Upscaler(name, torch_engines()(model), tiling)
    engine = engine_factory(backend, cache_dir=exports)(model)
    assert engine.spec.inputs == reference.engine.spec.inputs and engine.spec.outputs == reference.engine.spec.outputs
    image = smooth_image(37, 45, seed=4)
    expected, got = reference(image), Upscaler(name, engine, tiling)(image)
    assert got.shape == (1, 3, 37 * model.scale, 45 * model.scale)
    assert expected.std() > 0.02  # an image, not a flat field
    assert (got - expected).abs().max() <= 1 / 255


def test_tensorrt_path_runs_the_artifact_on_the_standin(upscaler_dir, exports, tmp_path):
    """sdrt's TensorRT calls (profiles from the upscaler spec, binding, chunked tile batches) on the CPU stand-in,
    which runs the ONNX graph with ONNX Runtime: this checks sdrt's side, never a GPU result."""
    from sdrt.engines.tensorrt_backend import load_engines
    from tests.engines.tensorrt_standin import SerialPlace, make_tensorrt

    model = load_upscaler(_file(upscaler_dir, "swinir-x4"))
    directory = cached_export(model, exports)
    artifact = UpscalerArtifact.read(directory)
    opts = TensorRTOptions(cache_dir=str(tmp_path / "cache"))
    engine = load_engines(make_tensorrt("10.16.1"), SerialPlace(), directory, artifact, opts)["upscaler"]
    image = smooth_image(40, 56, seed=6)
    tiling = Tiling(tile=32, overlap=8)
    expected = Upscaler("swinir-x4", engine_factory("onnxruntime", cache_dir=exports)(model), tiling)(image)
    assert (Upscaler("swinir-x4", engine, tiling)(image) - expected).abs().max() <= 1e-5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU and TensorRT; this machine has neither")
@pytest.mark.parametrize("name", NAMES)
def test_tensorrt_equals_the_torch_module(upscaler_dir, exports, name):
    pytest.importorskip("tensorrt", reason="needs TensorRT 10.x or 11.x")
    model = load_upscaler(_file(upscaler_dir, name))
    image = smooth_image(37, 45, seed=4).cuda()
    expected = Upscaler(name, torch_engines(device="cuda")(model))(image)
    got = Upscaler(name, engine_factory("tensorrt", device="cuda", cache_dir=exports)(model))(image)
    assert (got - expected).abs().max() <= 1 / 255


def _seam_band(grid: tiles.Grid, radius: int) -> torch.Tensor:
    """(H, W) True within `radius` pixels of a tile's edge inside the image."""
    band = torch.zeros(grid.height, grid.width, dtype=torch.bool)
    for y in grid.rows:
        for edge in (y, y + grid.tile_height):
            if 0 < edge < grid.height:
                band[max(0, edge - radius) : edge + radius] = True
    for x in grid.cols:
        for edge in (x, x + grid.tile_width):
            if 0 < edge < grid.width:
                band[:, max(0, edge - radius) : edge + radius] = True
    return band


# How far a tile's edge reaches into its output, in input pixels: ESRGAN's 17 convolutions at the input's size and
# the compact net's 4 see past it through zero padding, which decays within 8 pixels; SwinIR's shifted windows
# carry it one window further per layer pair. Beyond that, tiles equal the whole-image run.
EDGE_REACH = {"esrgan-original": 8, "compact-x4": 8, "swinir-x4": 12}
# Within it (the seams): a tile sees zero padding or a cut window where the whole image has pixels, and the 8-pixel
# fade averages two such tiles. Measured on these random nets: max 6/255 (ESRGAN), 0.6/255 (compact), 10/255
# (SwinIR); means 0.15/255, 0.02/255, 0.6/255. Trained nets, being smoother, differ less.
# Bounds: max 12/255, mean 1/255.
SEAM_MAX, SEAM_MEAN = 12 / 255, 1 / 255


@pytest.mark.parametrize("name", list(EDGE_REACH))
def test_tiles_equal_the_whole_image_away_from_the_seams(upscaler_dir, name):
    model = load_upscaler(_file(upscaler_dir, name))
    engine = torch_engines()(model)
    image = smooth_image(96, 112, seed=2)
    whole = Upscaler(name, engine, Tiling(tile=0))(image)
    tiled = Upscaler(name, engine, Tiling(tile=64, overlap=8))(image)
    grid = tiles.split(96, 112, 64, 64, 8)
    assert grid.count == 4
    diff = (whole - tiled).abs()[0].amax(0)
    band = _seam_band(grid.scaled(model.scale), EDGE_REACH[name] * model.scale)
    assert diff[~band].max() <= 2 / 255
    assert diff[band].max() <= SEAM_MAX and diff[band].mean() <= SEAM_MEAN


def test_the_web_uis_grid():
    assert tiles.starts(100, 192, 8) == (0,)  # one tile: the image itself
    assert tiles.starts(200, 192, 8) == (0, 8)
    assert tiles.starts(500, 192, 8) == (0, 154, 308)  # evenly spread, the last ending at the edge
    grid = tiles.split(300, 500, 192, 192, 8)
    assert (grid.tile_height, grid.tile_width, grid.rows, grid.cols) == (192, 192, (0, 108), (0, 154, 308))
    image = torch.rand(2, 3, 300, 500)
    joined = tiles.join(tiles.crop(image, grid), grid)
    assert (joined - image).abs().max() < 1e-6  # cut and joined again: the same image (up to rounding)
    with pytest.raises(ValueError, match="overlap 40 must be at least 0 and below the tile size 32x32"):
        tiles.split(100, 100, 32, 32, 40)


def test_joining_fades_each_tile_in_over_the_overlap():
    grid = tiles.split(1, 12, 1, 8, 4)  # two tiles: columns 0..7 and 4..11
    joined = tiles.join(torch.cat([torch.zeros(1, 1, 1, 8), torch.ones(1, 1, 1, 8)]), grid)
    assert joined.flatten().tolist() == [0, 0, 0, 0, 0, 0.25, 0.5, 0.75, 1, 1, 1, 1]


def test_upscale_to_a_size_as_the_web_ui(upscaler_dir):
    x4 = Upscaler("x4", torch_engines()(load_upscaler(_file(upscaler_dir, "compact-x4"))))
    x2 = Upscaler("x2", torch_engines()(load_upscaler(_file(upscaler_dir, "realesrgan-x2plus"))))
    image = to_image(smooth_image(20, 30)[0])
    calls = []
    for upscaler in (x4, x2):
        run = upscaler.run
        upscaler.run = lambda img, run=run: calls.append(img.size) or run(img)  # type: ignore[method-assign]
    assert x4.upscale(image, 2.0).size == (56, 40)  # one x4 pass, then Lanczos down to 2x rounded down to 8
    assert x2.upscale(image, 8.0).size == (240, 160)  # three x2 passes
    assert x2.upscale(image, 20.0).size == (600, 400)  # still three passes (the web UI's limit), then Lanczos
    assert calls == [(30, 20), (30, 20), (60, 40), (120, 80), (30, 20), (60, 40), (120, 80)]
    assert x4.resize(image, 100, 64).size == (100, 64)


def test_any_size_and_8_bit_round_trip(upscaler_dir):
    upscaler = Upscaler("x4", torch_engines()(load_upscaler(_file(upscaler_dir, "swinir-x4"))))
    image = Image.new("RGB", (5, 3), (200, 30, 90))  # smaller than a window and than the engine's 16 pixels
    out = upscaler.run(image)
    assert out.size == (20, 12)
    assert torch.equal(to_tensor(to_image(to_tensor(image)[0])), to_tensor(image))


def test_exports_are_cached_by_the_files_hash(upscaler_dir, tmp_path):
    from sdrt.demo.upscalers import write_upscaler

    path = write_upscaler(tmp_path / "4x-mine.pth", "Compact", seed=1)
    first = cached_export(load_upscaler(path), tmp_path / "cache")
    assert cached_export(load_upscaler(path), tmp_path / "cache") == first
    artifact = UpscalerArtifact.read(first)
    assert (artifact.name, artifact.architecture, artifact.scale) == ("4x-mine", "Compact", 4)
    write_upscaler(path, "Compact", seed=2)  # the file changed: a new export, never the stale one
    assert cached_export(load_upscaler(path), tmp_path / "cache") != first
