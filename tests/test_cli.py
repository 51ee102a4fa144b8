"""The `sdrt` command end to end: demo-model -> export -> build -> generate, and its errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sdrt.cli import main
from sdrt.manifest import FORMAT_VERSION
from sdrt.schedulers import sampler_choices


def test_export_build_generate(demo_model, tmp_path, capsys):
    art = tmp_path / "art"
    assert (
        main(["export", str(demo_model), "-o", str(art), "--max-batch", "1", "--min-size", "64", "--max-size", "128"])
        == 0
    )
    assert main(["build", str(art), "--backend", "onnxruntime"]) == 0
    assert "built in" in capsys.readouterr().out
    assert main(["build", str(art)]) == 0
    assert capsys.readouterr().out.count("reused") == 4

    out = tmp_path / "img.png"
    args = [
        "generate",
        str(art),
        "a red (castle): at dusk",
        "--negative-prompt",
        "blurry",
        "--seed",
        "42",
        "--steps",
        "3",
        "--height",
        "64",
        "--width",
        "96",
        "--scheduler",
        "euler_a",
        "--guidance-scale",
        "6.5",
    ]
    assert main([*args, "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    for stage in ("text encoder", "unet total", "unet per call", "scheduler + overhead", "vae decode", "total"):
        assert stage in printed
    image = Image.open(out)
    assert image.size == (96, 64)
    params = image.text["parameters"].splitlines()
    assert params[0] == "a red (castle): at dusk"
    assert params[1] == "Negative prompt: blurry"
    assert "Steps: 3, Sampler: Euler a, CFG scale: 6.5, Seed: 42, Size: 96x64, Model hash: " in params[2]

    # the same command gives the same image; --batch 2 writes -0 and -1 with consecutive seeds
    assert main([*args, "-o", str(tmp_path / "again.png")]) == 0
    assert np.array_equal(np.asarray(image), np.asarray(Image.open(tmp_path / "again.png")))
    assert main([*args, "--batch", "2", "-o", str(tmp_path / "b.png")]) == 0
    assert "Seed: 43," in Image.open(tmp_path / "b-1.png").text["parameters"]
    assert np.array_equal(np.asarray(image), np.asarray(Image.open(tmp_path / "b-0.png")))


def test_errors_exit_nonzero_with_the_reason(artifact, tmp_path, capsys):
    assert main(["generate", str(artifact), "a cat", "--height", "100", "-o", str(tmp_path / "x.png")]) == 2
    assert "height 100 is not a multiple of 8" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
    assert main(["build", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["generate", str(artifact), "a cat", "--scheduler", "nope"])
    assert exc.value.code == 2
    capsys.readouterr()
    assert main(["generate", str(artifact), "-o", str(tmp_path / "x.png")]) == 2  # an SD model needs a prompt
    assert 'needs a PROMPT; give "" to generate from the empty prompt' in capsys.readouterr().err


def test_generate_says_where_its_wall_time_went_and_q_silences_it(artifact, tmp_path, capsys):
    args = [
        "generate",
        str(artifact),
        "",
        "--steps",
        "2",
        "--height",
        "64",
        "--width",
        "64",
        "-o",
        str(tmp_path / "e.png"),
    ]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "wall time: start (imports) " in out and ", load " in out and ", generate " in out and ", save " in out
    assert "denoise" in err  # the progress bar
    assert main([*args, "-q"]) == 0  # -q after the command: results only, no bar, no tables
    out, err = capsys.readouterr()
    assert out.startswith("wrote ") and "wall time" not in out and "denoise" not in err


def test_generate_help_lists_schedulers(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines anywhere
    for name, label in sampler_choices():
        assert f"{name} ({label})" in text


def test_demo_model_command(tmp_path, capsys):
    assert main(["demo-model", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "model_index.json").is_file()
    assert main(["demo-model", str(tmp_path / "m")]) == 2  # refuses to overwrite
    assert "not empty" in capsys.readouterr().err


def test_info_prints_the_manifest(artifact, capsys):
    import json

    assert main(["info", str(artifact)]) == 0
    summary = capsys.readouterr().out
    assert "family    sd1" in summary and "unet" in summary and "on disk" in summary
    assert main(["info", str(artifact), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["format_version"] == FORMAT_VERSION and set(printed["components"]) == {
        "text_encoder",
        "unet",
        "vae_decoder",
        "vae_encoder",
    }


def test_generate_image_to_image_and_inpainting_from_files(artifact, tmp_path, capsys):
    from tests.runtime.test_img2img import input_image

    source, mask = tmp_path / "in.png", tmp_path / "mask.png"
    input_image(width=96, height=64).save(source)
    mask_array = np.zeros((64, 96), dtype=np.uint8)
    mask_array[16:48, 24:72] = 255
    Image.fromarray(mask_array).save(mask)
    common = ["--steps", "5", "--seed", "3", "--scheduler", "DPM++ 2M Karras", "--clip-skip", "1"]
    assert main(["generate", str(artifact), "a (cat:1.2)", "--image", str(source), "--strength", "0.6",
                 *common, "-o", str(tmp_path / "i2i.png")]) == 0  # fmt: skip
    params = Image.open(tmp_path / "i2i.png").text["parameters"]
    assert "Sampler: DPM++ 2M Karras" in params and "Denoising strength: 0.6" in params and "Clip skip: 2" in params
    assert Image.open(tmp_path / "i2i.png").size == (96, 64)  # the size of the input image
    assert "vae encode" in capsys.readouterr().out
    assert main(["generate", str(artifact), "a cat", "--image", str(source), "--mask", str(mask), *common,
                 "-o", str(tmp_path / "inpaint.png")]) == 0  # fmt: skip
    painted = np.asarray(Image.open(tmp_path / "inpaint.png"), dtype=np.int16)
    assert painted.shape == (64, 96, 3)


def test_generate_refuses_bad_image_inputs_with_the_reason(artifact, tmp_path, capsys):
    bad = tmp_path / "not-an-image.png"
    bad.write_text("hello")
    assert main(["generate", str(artifact), "a cat", "--image", str(bad), "-o", str(tmp_path / "x.png")]) == 2
    assert "cannot be read as an image" in capsys.readouterr().err
    assert main(["generate", str(artifact), "a cat", "--strength", "0.5", "-o", str(tmp_path / "x.png")]) == 2
    assert "strength 0.5 needs an input image" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_generate_with_a_refiner(sdxl_artifact, sdxl_refiner_artifact, sdxl_pipelines, tmp_path, capsys):
    out = tmp_path / "refined.png"
    args = ["generate", str(sdxl_artifact), "a lighthouse", "--seed", "5", "--steps", "6", "--height", "64"]
    args += ["--width", "72", "--refiner", str(sdxl_refiner_artifact), "--refiner-switch-at", "0.7", "-o", str(out)]
    assert main(args) == 0
    image = Image.open(out)
    assert "Refiner switch at: 0.7" in image.text["parameters"] and "CFG scale: 5," in image.text["parameters"]
    same = sdxl_pipelines["onnxruntime"].generate(
        "a lighthouse", seed=5, num_inference_steps=6, height=64, width=72, refiner_switch_at=0.7
    )
    assert np.array_equal(np.asarray(image), np.asarray(same.images[0]))
    capsys.readouterr()
    assert main(["generate", str(sdxl_artifact), "x", "--refiner-switch-at", "0.7"]) == 2
    assert "--refiner-switch-at needs --refiner REFINER_ARTIFACT" in capsys.readouterr().err


def test_generate_variations_of_an_image(unclip_artifact, unclip_pipelines, tmp_path, capsys):
    from tests.runtime.test_img2img import input_image

    photo = tmp_path / "photo.png"
    input_image(seed=2).save(photo)
    out = tmp_path / "variation.png"
    args = ["generate", str(unclip_artifact), "--image", str(photo), "--noise-level", "50", "--seed", "3"]
    assert main([*args, "--steps", "4", "--height", "64", "--width", "72", "-o", str(out)]) == 0
    same = unclip_pipelines["onnxruntime"].generate(
        image=photo, noise_level=50, seed=3, num_inference_steps=4, height=64, width=72
    )
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(same.images[0]))
    capsys.readouterr()
    assert main(["generate", str(unclip_artifact), "--image", str(photo), "--noise-level", "1000"]) == 2
    assert "noise_level 1000 is outside 0..999" in capsys.readouterr().err


def test_upscale_a_file_on_a_backend(upscaler_dir, tmp_path, capsys, monkeypatch):
    from sdrt.upscalers import Tiling, Upscaler, load_upscaler, to_image, to_tensor
    from sdrt.upscalers.library import torch_engines

    monkeypatch.setenv("SDRT_CACHE_DIR", str(tmp_path / "cache"))  # the ONNX export goes here, not to ~/.cache
    source = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 41, 3), dtype=np.uint8)).save(source)
    model = upscaler_dir / "realesrgan-x2plus.safetensors"
    out = tmp_path / "out.png"
    assert main(["upscale", str(model), str(source), "-o", str(out), "--tile", "16", "--tile-overlap", "4"]) == 0
    assert "wrote" in capsys.readouterr().out
    written = Image.open(out)
    assert written.size == (82, 60) and written.text["postprocessing"].endswith("upscaler: realesrgan-x2plus")
    reference = Upscaler("x2", torch_engines()(load_upscaler(model)), Tiling(16, 4))  # the module, same tiles
    expected = to_image(reference(to_tensor(Image.open(source)))[0])
    assert np.abs(np.asarray(written.convert("RGB"), np.int16) - np.asarray(expected, np.int16)).max() <= 1
    assert main(["upscale", str(model), str(source), "-o", str(out), "--width", "100", "--height", "50"]) == 0
    assert Image.open(out).size == (100, 50)
    assert main(["upscale", str(tmp_path / "missing.pth"), str(source), "-o", str(out)]) == 2
    assert "missing.pth is not a .safetensors, .pth, .pt file" in capsys.readouterr().err


def test_generate_with_the_x4_upscaler(x4_artifact, x4_pipelines, tmp_path):
    from tests.runtime.test_upscaler_x4 import low_res

    small = tmp_path / "small.png"
    low_res(seed=3).save(small)
    out = tmp_path / "big.png"
    args = ["generate", str(x4_artifact), "a castle", "--image", str(small), "--noise-level", "30", "--seed", "2"]
    assert main([*args, "--steps", "3", "-o", str(out)]) == 0
    same = x4_pipelines["onnxruntime"].generate("a castle", image=small, noise_level=30, seed=2, num_inference_steps=3)
    assert Image.open(out).size == (96, 64)
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(same.images[0]))


def test_export_a_controlnet_generate_with_it_and_detect(
    artifact, controlnet_models, controlnet_pipelines, tmp_path, capsys
):
    """sdrt export CONTROLNET_DIR, then sdrt generate --control NAME=MAP:SCALE:START:END with --controlnet-dir:
    the Python API's image; sdrt detect writes a module's map."""
    from sdrt import Control
    from tests.runtime.test_controlnet import hint

    cn_dir = tmp_path / "controlnets"
    assert main(["export", str(controlnet_models["tiny_canny"]), "-o", str(cn_dir / "canny"), "--max-batch", "2",
                 "--min-size", "64", "--max-size", "256", "--opt-size", "128"]) == 0  # fmt: skip
    assert "(controlnet)" in capsys.readouterr().out
    hint(0).save(tmp_path / "map.png")
    out = tmp_path / "out.png"
    code = main([
        "generate", str(artifact), "a castle", "--steps", "3", "--height", "64", "--width", "72", "--seed", "5",
        "--scheduler", "euler", "--controlnet-dir", str(cn_dir), "--control", f"canny={tmp_path / 'map.png'}:0.7:0:0.8",
        "-o", str(out),
    ])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    expected = controlnet_pipelines["onnxruntime"].generate(
        "a castle", num_inference_steps=3, height=64, width=72, seed=5, scheduler="euler",
        control=[Control("tiny_canny", image=hint(0), scale=0.7, end=0.8)],
    )  # fmt: skip
    ours = Image.open(out)
    assert np.abs(np.asarray(ours, np.int16) - np.asarray(expected.images[0], np.int16)).max() <= 1
    assert 'ControlNet 0: "Module: none, Model: canny [' in ours.info["parameters"]
    with pytest.raises(SystemExit) as exited:  # argparse's own error: usage and the reason
        main(["generate", str(artifact), "x", "--control", "canny=map.png:lots", "-o", str(out)])
    assert exited.value.code == 2 and "scale, start and end are numbers" in capsys.readouterr().err
    edges = tmp_path / "edges.png"
    assert main(["detect", "canny", str(tmp_path / "map.png"), "-o", str(edges), "--threshold-a", "50"]) == 0
    assert Image.open(edges).size == (614, 512)  # at the processor resolution (short side 512), as the extension
    assert main(["detect", "depth", str(tmp_path / "map.png")]) == 2
    assert "never downloads" in capsys.readouterr().err


def test_serve_flags_reach_the_server_config(artifact, controlnet_artifacts, monkeypatch):
    import sdrt.serve.server

    seen = {}

    def serve(path, backend, device, host, port, config, **options):
        seen.update(path=path, config=config, options=options)
        return 0

    monkeypatch.setattr(sdrt.serve.server, "serve", serve)
    argv = ["serve", str(artifact), "--controlnet-dir", str(controlnet_artifacts), "--max-control-units", "5"]
    assert main(argv) == 0
    assert seen["config"].max_control_units == 5 and seen["options"]["controlnet_dir"] == controlnet_artifacts
    assert main(["serve", str(artifact), "--max-control-units", "-1"]) == 2  # checked by ServeConfig


def test_export_tiling_flag_reaches_the_export(demo_model, artifact, tmp_path, monkeypatch, capsys):
    """--tiling asks for the circular-padding twins (the session artifact is exported so: see its manifest)."""
    import sdrt.export
    from sdrt.manifest import read_manifest

    seen = {}

    def export_model(model_dir, output, config, **kwargs):
        seen["config"] = config
        return read_manifest(artifact)

    monkeypatch.setattr(sdrt.export, "export_model", export_model)
    assert main(["export", str(demo_model), "-o", str(tmp_path / "out"), "--tiling"]) == 0
    assert seen["config"].tiling is True
    assert main(["export", str(demo_model), "-o", str(tmp_path / "out")]) == 0
    assert seen["config"].tiling is False
