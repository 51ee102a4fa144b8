"""sdrt-cpp gives the Python runtime's images: the same artifact, seed and sampler, every 8-bit pixel within 2 of 255,
the same infotext. Both sides run the artifact's ONNX graphs on OpenVINO (sdrt's `--backend openvino`), so what is
compared is everything around the engines: tokenization, emphasis, conditioning, seeds, samplers, CFG, VAE scaling.

Measured on the tiny models: 0 or 1 of 255 apart (OpenVINO's kernels differ slightly between the two processes'
compiled models and the float32 sums of emphasis and sampler arithmetic round differently in the last bit).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

BOUND = 2  # of 255, per pixel and channel: the project's parity target
SIZE = {"height": 72, "width": 104}  # non-square, latents not a multiple of the UNet's downsampling
SAMPLERS = ["euler", "euler_a", "ddim", "dpmpp_2m", "dpmpp_2m_karras", "pndm"]


@pytest.fixture(scope="module")
def engine_cache(tmp_path_factory) -> Path:
    """One OpenVINO model cache for the module's sdrt-cpp runs (a later run imports what an earlier one compiled)."""
    return tmp_path_factory.mktemp("openvino-cpp-cache")


@pytest.fixture(scope="module")
def python_pipe(tmp_path_factory):
    """The Python runtime on the OpenVINO backend, one pipeline per artifact, its engine cache kept out of it."""
    from sdrt import Pipeline

    cache = tmp_path_factory.mktemp("openvino-python-cache")
    pipes: dict[Path, Pipeline] = {}

    def get(artifact: Path) -> Pipeline:
        if artifact not in pipes:
            pipes[artifact] = Pipeline.load(artifact, backend="openvino", cache_dir=str(cache))
        return pipes[artifact]

    get.cache = cache
    return get


def sdrt_cpp(
    cpp_tools, artifact: Path, out: Path, *args: str, cache: Path | None = None
) -> subprocess.CompletedProcess:
    command = [str(cpp_tools.sdrt_cpp), str(artifact), *args, "-o", str(out)]
    if cache is not None:
        command += ["--cache-dir", str(cache)]
    return subprocess.run(command, capture_output=True, text=True)


def generated(cpp_tools, artifact: Path, out: Path, *args: str, cache: Path | None = None) -> list[Image.Image]:
    """sdrt-cpp's images (OUT, or OUT-i for a batch), failing the test on a non-zero exit."""
    result = sdrt_cpp(cpp_tools, artifact, out, *args, cache=cache)
    assert result.returncode == 0, result.stderr
    paths = [Path(line.split()[1]) for line in result.stdout.splitlines() if line.startswith("wrote ")]
    return [Image.open(p) for p in paths]


def max_diff(a: Image.Image, b: Image.Image) -> int:
    return int(np.abs(np.asarray(a.convert("RGB"), np.int16) - np.asarray(b.convert("RGB"), np.int16)).max())


def assert_same_images(ours: list[Image.Image], result) -> None:
    assert len(ours) == len(result.images)
    for image, reference, parameters in zip(ours, result.images, result.parameters, strict=True):
        assert image.size == reference.size
        assert max_diff(image, reference) <= BOUND
        assert image.info["parameters"] == parameters


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_sd1_every_sampler(cpp_tools, artifact, python_pipe, engine_cache, tmp_path, sampler):
    reference = python_pipe(artifact).generate(
        "a photo of an astronaut riding a horse", negative_prompt="blurry", num_inference_steps=6, seed=11,
        scheduler=sampler, **SIZE,
    )  # fmt: skip
    ours = generated(
        cpp_tools, artifact, tmp_path / "out.png", "--prompt", "a photo of an astronaut riding a horse",
        "--negative-prompt", "blurry", "--steps", "6", "--seed", "11", "--sampler", sampler,
        "--height", "72", "--width", "104", cache=engine_cache,
    )  # fmt: skip
    assert_same_images(ours, reference)


def test_same_image_as_sdrt_generate(cpp_tools, artifact, python_pipe, tmp_path):
    """The two commands side by side, with the CLI's defaults: the model's own scheduler (the demo's PLMS), 7.5."""
    import sys

    python_pipe(artifact)  # its engine cache holds this size's compiled models: the command imports them
    sdrt = Path(sys.executable).parent / "sdrt"
    python_out, cpp_out = tmp_path / "python.png", tmp_path / "cpp.png"
    common = ["--seed", "42", "--steps", "5", "--height", "72", "--width", "104"]
    subprocess.run(
        [str(sdrt), "generate", str(artifact), "a castle on a hill", *common, "--backend", "openvino",
         "--cache-dir", str(python_pipe.cache), "-o", str(python_out)],
        check=True, capture_output=True,
    )  # fmt: skip
    (ours,) = generated(cpp_tools, artifact, cpp_out, "--prompt", "a castle on a hill", *common)
    theirs = Image.open(python_out)
    assert max_diff(ours, theirs) <= BOUND
    assert ours.info["parameters"] == theirs.info["parameters"]
    assert "Sampler: PLMS, CFG scale: 7.5" in ours.info["parameters"]


def test_emphasis_long_prompt_clip_skip_and_seeds(cpp_tools, artifact, python_pipe, engine_cache, tmp_path):
    """Weighted tokens, a 2-chunk prompt, BREAK, CLIP skip, per-image seeds and a guidance scale other than 7.5."""
    prompt = "a (castle:1.3) on a [hill], ((sunset)) BREAK " + "detailed " * 80
    reference = python_pipe(artifact).generate(
        prompt, negative_prompt="(blurry:1.4)", num_inference_steps=5, seed=3, clip_skip=1, guidance_scale=5.0,
        num_images_per_prompt=2, scheduler="euler_a", **SIZE,
    )  # fmt: skip
    ours = generated(
        cpp_tools, artifact, tmp_path / "out.png", "--prompt", prompt, "--negative-prompt", "(blurry:1.4)",
        "--steps", "5", "--seed", "3", "--clip-skip", "1", "--guidance", "5", "--batch", "2", "--sampler", "euler_a",
        "--height", "72", "--width", "104", cache=engine_cache,
    )  # fmt: skip
    assert_same_images(ours, reference)
    assert ["Seed: 3," in ours[0].info["parameters"], "Seed: 4," in ours[1].info["parameters"]] == [True, True]
    assert max_diff(ours[0], ours[1]) > 10  # two seeds, two images


def test_without_guidance(cpp_tools, artifact, python_pipe, engine_cache, tmp_path):
    """Guidance 1: no unconditional rows, the UNet sees the conditional ones alone."""
    reference = python_pipe(artifact).generate(
        "a dog", num_inference_steps=4, seed=5, guidance_scale=1.0, num_images_per_prompt=2, **SIZE
    )
    ours = generated(
        cpp_tools, artifact, tmp_path / "out.png", "--prompt", "a dog", "--steps", "4", "--seed", "5",
        "--guidance", "1", "--batch", "2", "--height", "72", "--width", "104", cache=engine_cache,
    )  # fmt: skip
    assert_same_images(ours, reference)


@pytest.mark.parametrize("sampler", [None, "euler_a"])
def test_sd2_v_prediction(cpp_tools, sd2_artifact, python_pipe, engine_cache, tmp_path, sampler):
    """SD 2.x: the OpenCLIP text encoder padding with "!", v-prediction, DDIM as the model's own scheduler."""
    reference = python_pipe(sd2_artifact).generate(
        "a lighthouse", negative_prompt="fog", num_inference_steps=6, seed=9, scheduler=sampler, **SIZE
    )
    args = ["--prompt", "a lighthouse", "--negative-prompt", "fog", "--steps", "6", "--seed", "9"]
    args += ["--height", "72", "--width", "104"] + (["--sampler", sampler] if sampler else [])
    ours = generated(cpp_tools, sd2_artifact, tmp_path / "out.png", *args, cache=engine_cache)
    assert_same_images(ours, reference)
    assert "Sampler: DDIM" in ours[0].info["parameters"] or sampler


@pytest.mark.parametrize(
    ("negative", "sampler", "batch"),
    [("", None, 1), ("fog, (rain:1.2)", "euler_a", 2)],
)
def test_sdxl_base(cpp_tools, sdxl_artifact, python_pipe, engine_cache, tmp_path, negative, sampler, batch):
    """SDXL: both encoders' penultimate states, the pooled embedding at the end token, time ids, and an empty negative
    prompt as zero embeddings (force_zeros_for_empty_prompt)."""
    reference = python_pipe(sdxl_artifact).generate(
        "a lighthouse at dusk", negative_prompt=negative, num_inference_steps=5, seed=21, scheduler=sampler,
        num_images_per_prompt=batch, **SIZE,
    )  # fmt: skip
    args = ["--prompt", "a lighthouse at dusk", "--negative-prompt", negative, "--steps", "5", "--seed", "21"]
    args += ["--batch", str(batch), "--height", "72", "--width", "104"] + (["--sampler", sampler] if sampler else [])
    ours = generated(cpp_tools, sdxl_artifact, tmp_path / "out.png", *args, cache=engine_cache)
    assert_same_images(ours, reference)


@pytest.fixture(scope="module")
def input_image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("input") / "photo.png"
    Image.fromarray((np.random.default_rng(3).random((72, 104, 3)) * 255).astype(np.uint8)).save(path)
    return path


@pytest.mark.parametrize(
    ("sampler", "strength", "batch"), [("euler", 0.6, 2), ("dpmpp_2m_karras", 0.5, 1), ("ddim", 0.8, 1)]
)
def test_sd1_img2img(cpp_tools, artifact, python_pipe, engine_cache, input_image, tmp_path, sampler, strength, batch):
    """Image-to-image: the VAE encoder's sample and the start noise drawn from each image's generator, in diffusers'
    order, noise added at the first timestep strength keeps."""
    reference = python_pipe(artifact).generate(
        "an oil painting", image=str(input_image), strength=strength, num_inference_steps=7, seed=4, scheduler=sampler,
        num_images_per_prompt=batch,
    )  # fmt: skip
    ours = generated(
        cpp_tools, artifact, tmp_path / "out.png", "--prompt", "an oil painting", "--image", str(input_image),
        "--strength", str(strength), "--steps", "7", "--seed", "4", "--sampler", sampler, "--batch", str(batch),
        cache=engine_cache,
    )  # fmt: skip
    assert_same_images(ours, reference)
    assert f"Denoising strength: {strength:g}" in ours[0].info["parameters"]


def test_sdxl_img2img(cpp_tools, sdxl_artifact, python_pipe, engine_cache, input_image, tmp_path):
    """SDXL's image-to-image with its default strength (0.3)."""
    reference = python_pipe(sdxl_artifact).generate("a castle", image=str(input_image), num_inference_steps=7, seed=4)
    ours = generated(
        cpp_tools, sdxl_artifact, tmp_path / "out.png", "--prompt", "a castle", "--image", str(input_image),
        "--steps", "7", "--seed", "4", cache=engine_cache,
    )  # fmt: skip
    assert_same_images(ours, reference)


def test_latents_file_is_the_start_noise(cpp_tools, artifact, engine_cache, tmp_path):
    """--latents FILE.npy replaces the seeds' draws: torch's noise for seed 42, given as a file, is seed 42's image."""
    import torch

    noise = torch.cat([torch.randn((1, 4, 9, 13), generator=torch.Generator("cpu").manual_seed(s)) for s in (42, 43)])
    np.save(tmp_path / "noise.npy", noise.numpy())
    common = ["--prompt", "a cat", "--steps", "4", "--sampler", "euler", "--height", "72", "--width", "104"]
    seeded = generated(
        cpp_tools, artifact, tmp_path / "a.png", *common, "--seed", "42", "--batch", "2", cache=engine_cache
    )
    from_file = generated(
        cpp_tools, artifact, tmp_path / "b.png", *common, "--seed", "7", "--batch", "2", "--latents",
        str(tmp_path / "noise.npy"), cache=engine_cache,
    )  # fmt: skip
    for a, b in zip(seeded, from_file, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    result = sdrt_cpp(cpp_tools, artifact, tmp_path / "c.png", *common, "--latents", str(tmp_path / "noise.npy"))
    assert result.returncode == 2 and "latents have shape [2, 4, 9, 13], not [1, 4, 9, 13]" in result.stderr


def _damaged_artifact(artifact: Path, tmp_path: Path, damage) -> Path:
    import shutil

    copy = tmp_path / "artifact"
    shutil.copytree(artifact, copy, ignore=shutil.ignore_patterns("engines"))
    damage(copy)
    return copy


def _set_format_version(root: Path) -> None:
    path = root / "manifest.json"
    text = path.read_text()
    assert '"format_version": 5' in text
    path.write_text(text.replace('"format_version": 5', '"format_version": 4'))  # before ControlNet residual inputs


def _truncate_unet(root: Path) -> None:
    path = root / "unet" / "model.onnx"
    path.write_bytes(path.read_bytes()[:5000])


@pytest.mark.parametrize(
    ("damage", "args", "message"),
    [
        (_set_format_version, [], "artifact format version 4 is not supported by sdrt-cpp"),
        (
            lambda root: (root / "unet" / "model.onnx").unlink(),
            [],
            "is incomplete: unet file unet/model.onnx is missing",
        ),
        (_truncate_unet, [], "cannot read unet's ONNX graph"),
        (None, ["--prompt", "caf\udcc3 au lait"], "prompt is not valid UTF-8"),
        (None, ["--negative-prompt", "\udcff"], "negative_prompt is not valid UTF-8"),
        (None, ["--height", "512"], "height 512 is outside the artifact's range 64..256"),
        (None, ["--width", "100"], "width 100 is not a multiple of 8"),
        (None, ["--sampler", "lms"], "unknown sampler 'lms'; known: ddim, pndm, euler, euler_a, dpmpp_2m"),
        (None, ["--steps", "0"], "num_inference_steps 0 is outside 1..1000"),
        (None, ["--prompt", "a [cat:dog:0.5]"], "prompt uses prompt editing or alternation"),
        (None, ["--clip-skip", "7"], "clip_skip 7 is outside 0..2"),
        (None, ["--strength", "0.5"], "strength 0.5 needs an input image"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_png(cpp_tools, artifact, tmp_path, damage, args, message):
    target = artifact if damage is None else _damaged_artifact(artifact, tmp_path, damage)
    if "--prompt" not in args:
        args = ["--prompt", "a cat", *args]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    command = [str(cpp_tools.sdrt_cpp), str(target), *args, "--steps", "2", "-o", str(out_dir / "image.png")]
    if "--steps" in args:
        command = [str(cpp_tools.sdrt_cpp), str(target), *args, "-o", str(out_dir / "image.png")]
    # arguments carry raw bytes (invalid UTF-8) through surrogate escapes, as a shell would pass them
    result = subprocess.run([a.encode("utf-8", "surrogateescape") for a in command], capture_output=True, text=True)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert list(out_dir.iterdir()) == []  # no PNG, and no partial one


def test_what_it_does_not_run_is_refused(cpp_tools, artifact, sdxl_refiner_artifact, tmp_path):
    """Families and UNets outside its scope are refused by name, before any engine is built."""
    result = sdrt_cpp(cpp_tools, sdxl_refiner_artifact, tmp_path / "a.png", "--prompt", "a cat")
    assert result.returncode == 2
    assert "family 'sdxl_refiner' is not supported by sdrt-cpp; it runs sd1, sd2 and sdxl" in result.stderr

    def inpainting(root: Path) -> None:
        path = root / "manifest.json"
        path.write_text(path.read_text().replace('"inpainting": false', '"inpainting": true'))

    result = sdrt_cpp(cpp_tools, _damaged_artifact(artifact, tmp_path, inpainting), tmp_path / "b.png", "--prompt", "x")
    assert result.returncode == 2 and "an inpainting UNet, which sdrt-cpp does not run" in result.stderr

    def unlisted_residual(root: Path) -> None:  # a UNet input neither fed by the loop nor listed as a residual
        path = root / "manifest.json"
        manifest = json.loads(path.read_text())
        manifest["components"]["unet"]["attributes"]["residuals"].remove("down_block_residual_0")
        path.write_text(json.dumps(manifest))

    result = sdrt_cpp(cpp_tools, _damaged_artifact(artifact, tmp_path / "c", unlisted_residual), tmp_path / "c.png",
                      "--prompt", "x")  # fmt: skip
    assert result.returncode == 2
    assert "the unet takes input down_block_residual_0, which sdrt-cpp does not feed" in result.stderr
    assert not list(tmp_path.glob("*.png"))
