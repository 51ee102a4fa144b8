"""ControlNet per request matches diffusers' ControlNet pipelines on the same weights, seeds and settings.

Tiny random ControlNets (their zero convolutions re-drawn, so their residuals change the image) steer the demo
SD 1.x model on torch, onnxruntime and openvino; every 8-bit pixel within 2 of diffusers'
StableDiffusionControlNetPipeline (one net, two nets with different scales, a start/end window, guess mode),
...Img2ImgPipeline and ...InpaintPipeline (4- and 9-channel UNets), and StableDiffusionXLControlNetPipeline.
The web UI extension's control modes are checked against diffusers with the ControlNet wrapped to apply the
modes' definitions.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from sdrt import Control
from sdrt.runtime.control_residuals import residual_weights
from sdrt.schedulers import make_scheduler
from tests.conftest import RANGES, export, write_model
from tests.runtime.compare import HEIGHT, STEPS, WIDTH, assert_images_close
from tests.runtime.test_img2img import input_image
from tests.runtime.test_inpaint import mask_image

BACKENDS = ("torch", "onnxruntime", "openvino")
SCHEDULER = "euler_a"  # draws noise each step: a wrong generator order would show


def hint(seed: int = 0) -> Image.Image:
    """A conditioning map: bright strokes on black, as an edge map looks (not at the output size: it is resized)."""
    rng = np.random.default_rng(seed)
    pixels = np.zeros((80, 96, 3), dtype=np.uint8)
    for _ in range(12):
        y, x = rng.integers(0, 80), rng.integers(0, 96)
        pixels[max(0, y - 1) : y + 2, max(0, x - 20) : x + 20] = 255
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def cn_modules(controlnet_models):
    from diffusers import ControlNetModel

    return {name: ControlNetModel.from_pretrained(path) for name, path in controlnet_models.items()}


def _pipe(cls, components, controlnet):
    pipe = cls(**components, controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run(pipe, config, seed=9, n=1, **kwargs):
    pipe.scheduler = make_scheduler(SCHEDULER, config)
    return pipe(
        num_inference_steps=STEPS,
        height=HEIGHT,
        width=WIDTH,
        num_images_per_prompt=n,
        generator=[torch.Generator("cpu").manual_seed(seed + i) for i in range(n)],
        **kwargs,
    ).images


def _ours(pipe, **kwargs):
    return pipe.generate(num_inference_steps=STEPS, height=HEIGHT, width=WIDTH, scheduler=SCHEDULER, **kwargs)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "case",
    [
        dict(),  # one net, scale 1
        dict(scale=0.6, start=0.2, end=0.7),  # diffusers' controlnet_keep window
        dict(guess_mode=True),  # conditional rows only, logspace(-1, 0) scales
    ],
    ids=["one", "window", "guess"],
)
def test_one_controlnet_matches_diffusers(controlnet_pipelines, diffusers_pipe, cn_modules, backend, case):
    from diffusers import StableDiffusionControlNetPipeline

    case = dict(case)
    guess = case.pop("guess_mode", False)
    ours = _ours(
        controlnet_pipelines[backend], prompt="a house by a lake", negative_prompt="blurry", seed=9,
        num_images_per_prompt=2, control=[Control("tiny_canny", image=hint(), **case)], guess_mode=guess,
    )  # fmt: skip
    reference = _pipe(StableDiffusionControlNetPipeline, diffusers_pipe.components, cn_modules["tiny_canny"])
    theirs = _run(
        reference, diffusers_pipe.original_scheduler.config, n=2, prompt="a house by a lake", negative_prompt="blurry",
        image=hint(), controlnet_conditioning_scale=case.get("scale", 1.0),
        control_guidance_start=case.get("start", 0.0), control_guidance_end=case.get("end", 1.0), guess_mode=guess,
    )  # fmt: skip
    assert_images_close(ours.images, theirs)
    plain = _ours(controlnet_pipelines[backend], prompt="a house by a lake", negative_prompt="blurry", seed=9)
    effect = np.abs(np.asarray(ours.images[0], np.int16) - np.asarray(plain.images[0], np.int16)).max()
    assert effect > 5, "the ControlNet's residuals should change the image"
    assert "ControlNet 0: " in ours.parameters[0] and ours.timings.controlnet > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_controlnets_sum_as_diffusers_multicontrolnet(controlnet_pipelines, diffusers_pipe, cn_modules, backend):
    from diffusers import StableDiffusionControlNetPipeline

    units = [
        Control("tiny_canny", image=hint(0), scale=0.8, end=0.8),
        Control("tiny_depth", image=hint(1), scale=0.4, start=0.3),
    ]
    ours = _ours(controlnet_pipelines[backend], prompt="a red car", seed=4, control=units)
    reference = _pipe(
        StableDiffusionControlNetPipeline,
        diffusers_pipe.components,
        [cn_modules["tiny_canny"], cn_modules["tiny_depth"]],
    )
    theirs = _run(
        reference, diffusers_pipe.original_scheduler.config, seed=4, prompt="a red car", image=[hint(0), hint(1)],
        controlnet_conditioning_scale=[0.8, 0.4], control_guidance_start=[0.0, 0.3], control_guidance_end=[0.8, 1.0],
    )  # fmt: skip
    assert_images_close(ours.images, theirs)


@pytest.mark.parametrize("backend", ("torch", "onnxruntime"))
def test_img2img_with_a_controlnet_matches_diffusers(controlnet_pipelines, diffusers_pipe, cn_modules, backend):
    from diffusers import StableDiffusionControlNetImg2ImgPipeline

    ours = _ours(
        controlnet_pipelines[backend], prompt="a painting of a city", image=input_image(), strength=0.7, seed=12,
        control=[Control("tiny_canny", image=hint(2))],
    )  # fmt: skip
    reference = _pipe(StableDiffusionControlNetImg2ImgPipeline, diffusers_pipe.components, cn_modules["tiny_canny"])
    theirs = _run(
        reference, diffusers_pipe.original_scheduler.config, seed=12, prompt="a painting of a city",
        image=input_image(), control_image=hint(2), strength=0.7, controlnet_conditioning_scale=1.0,
    )  # fmt: skip
    assert_images_close(ours.images, theirs)


@pytest.mark.parametrize("backend", ("torch", "onnxruntime"))
def test_inpainting_with_a_controlnet_matches_diffusers(controlnet_pipelines, diffusers_pipe, cn_modules, backend):
    """A 4-channel UNet (the known region blended back each step) with the inpaint module's map: masked pixels -1."""
    from diffusers import StableDiffusionControlNetInpaintPipeline

    unit = Control("tiny_canny", image=input_image(), mask=mask_image(), module="inpaint")
    ours = _ours(
        controlnet_pipelines[backend], prompt="a window", image=input_image(), mask_image=mask_image(), seed=2,
        control=[unit],
    )  # fmt: skip
    control_image = np.asarray(input_image(), np.float32) / 255.0
    control_image[np.asarray(mask_image()) > 127] = -1.0  # diffusers' ControlNet inpaint example's condition
    control = torch.from_numpy(control_image.transpose(2, 0, 1))[None]
    reference = _pipe(StableDiffusionControlNetInpaintPipeline, diffusers_pipe.components, cn_modules["tiny_canny"])
    theirs = _run(
        reference, diffusers_pipe.original_scheduler.config, seed=2, prompt="a window", image=input_image(),
        mask_image=mask_image(), control_image=control, strength=1.0, controlnet_conditioning_scale=1.0,
    )  # fmt: skip
    assert_images_close(ours.images, theirs)


def test_inpainting_unet_with_a_controlnet_matches_diffusers(
    inpaint_model, cn_modules, controlnet_models, tmp_path_factory
):
    """A 9-channel inpainting UNet: mask and masked image are concatenated, the ControlNet reads the latents alone."""
    from diffusers import StableDiffusionControlNetInpaintPipeline

    from sdrt import Pipeline

    pipe = Pipeline.load(inpaint_model, backend="torch", ranges=RANGES)
    ours = _ours(
        pipe, prompt="a door", image=input_image(), mask_image=mask_image(), strength=0.9, seed=6,
        control=[Control(str(controlnet_models["tiny_canny"]), image=hint(3))],
    )  # fmt: skip
    reference = StableDiffusionControlNetInpaintPipeline.from_pretrained(
        inpaint_model, controlnet=cn_modules["tiny_canny"], safety_checker=None, local_files_only=True
    )
    reference.set_progress_bar_config(disable=True)
    theirs = _run(
        reference, reference.scheduler.config, seed=6, prompt="a door", image=input_image(), mask_image=mask_image(),
        control_image=hint(3), strength=0.9, controlnet_conditioning_scale=1.0,
    )  # fmt: skip
    assert_images_close(ours.images, theirs)


def _moded(controlnet):
    """A copy of a diffusers ControlNet whose residual i is scaled by scale * 0.825 ** (12 - i): the web UI
    extension's soft weights, applied by their definition (guess mode's own scales switched off)."""
    moded = copy.deepcopy(controlnet)
    forward = moded.forward

    def soft(*args, conditioning_scale=1.0, guess_mode=False, **kwargs):
        down, mid = forward(*args, conditioning_scale=1.0, guess_mode=False, **kwargs)
        scaled = [r * (conditioning_scale * 0.825 ** float(12 - i)) for i, r in enumerate([*down, mid])]
        return scaled[:-1], scaled[-1]

    moded.forward = soft
    return moded


@pytest.mark.parametrize("backend", ("torch", "onnxruntime"))
@pytest.mark.parametrize("mode", ["prompt", "control"])
def test_control_modes_are_the_extensions_definitions(controlnet_pipelines, diffusers_pipe, cn_modules, backend, mode):
    """ "My prompt is more important": soft weights; "ControlNet is more important": those on the conditional rows
    only (diffusers' guess mode runs the ControlNet on those rows alone and gives the others zeros)."""
    from diffusers import StableDiffusionControlNetPipeline

    ours = _ours(
        controlnet_pipelines[backend], prompt="a tree", seed=5, control=[Control("tiny_canny", image=hint(), mode=mode)]
    )
    reference = _pipe(StableDiffusionControlNetPipeline, diffusers_pipe.components, _moded(cn_modules["tiny_canny"]))
    theirs = _run(
        reference, diffusers_pipe.original_scheduler.config, seed=5, prompt="a tree", image=hint(),
        guess_mode=mode == "control",
    )  # fmt: skip
    assert_images_close(ours.images, theirs)


def test_residual_weights_follow_the_definitions():
    torch.testing.assert_close(residual_weights(13, 0.5, "balanced", False, False), torch.full((13,), 0.5))
    soft = torch.tensor([0.825 ** (12 - i) for i in range(10)], dtype=torch.float32)  # SDXL: the first 10 of 13
    torch.testing.assert_close(residual_weights(10, 1.0, "prompt", False, False), soft)
    torch.testing.assert_close(residual_weights(13, 2.0, "balanced", True, False), torch.logspace(-1, 0, 13) * 2.0)
    assert torch.equal(residual_weights(13, 1.0, "balanced", True, True), torch.ones(13))  # pooled: no logspace


@pytest.mark.parametrize("backend", ("torch", "onnxruntime"))
def test_requests_with_different_controlnets_share_the_unet_calls(controlnet_pipelines, backend):
    """Different ControlNets, images, scales and windows, and none, in one batch: each request gets its image alone."""
    pipe = controlnet_pipelines[backend]
    base = dict(height=HEIGHT, width=WIDTH, num_inference_steps=STEPS, scheduler=SCHEDULER)
    requests = [
        pipe.request("a cat", seed=1, control=[Control("tiny_canny", image=hint(0))], **base),
        pipe.request("a dog", seed=2, control=[Control("tiny_depth", image=hint(1), scale=0.5, end=0.5)], **base),
        pipe.request("a bird", seed=3, **base),
        pipe.request(
            "a fox",
            seed=4,
            guess_mode=True,
            num_images_per_prompt=2,
            control=[Control("tiny_canny", image=hint(2), mode="control")],
            **base,
        ),  # fmt: skip
    ]
    assert len({pipe.batch_key(r) for r in requests}) == 1
    loaded = pipe.controlnets.get("tiny_canny")
    calls = []

    def counted(feeds):  # the canny ControlNet serves two requests' rows: one call per step for all of them
        calls.append(feeds["sample"].shape[0])
        return engine(feeds)

    engine = loaded.run.engine
    counted.spec, counted.ranges, counted.device = engine.spec, engine.ranges, engine.device
    pipe.controlnets._loaded[loaded.path] = replace(loaded, run=replace(loaded.run, engine=counted))
    try:
        together = pipe.run_batch(requests)
    finally:
        pipe.controlnets._loaded[loaded.path] = loaded
    # rows: the cat's 2 (guided), the fox's 2 images' conditional rows ("control" mode and guess mode)
    assert calls == [4] * STEPS
    for request, result in zip(requests, together, strict=True):
        alone = pipe.run(request)
        for a, b in zip(result.images, alone.images, strict=True):
            assert np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max() <= 1


def test_sdxl_controlnet_matches_diffusers(sdxl_model, sdxl_pipelines, sdxl_diffusers, tmp_path_factory):
    from diffusers import ControlNetModel, StableDiffusionXLControlNetPipeline

    from sdrt.export import ExportConfig, export_model

    cn_dir = write_model(tmp_path_factory, "controlnet-sdxl", variant="controlnet-sdxl")
    cn_art = tmp_path_factory.mktemp("artifacts") / "cn-sdxl"
    export_model(cn_dir, cn_art, ExportConfig(max_batch=2, min_size=64, max_size=256, opt_size=128))
    base = sdxl_diffusers["txt2img"]
    reference = StableDiffusionXLControlNetPipeline(
        **base.components, controlnet=ControlNetModel.from_pretrained(cn_dir)
    )
    reference.set_progress_bar_config(disable=True)
    theirs = _run(
        reference, base.original_scheduler.config, seed=7, n=2, prompt="a mountain", negative_prompt="fog",
        image=hint(4), controlnet_conditioning_scale=0.7,
    )  # fmt: skip
    for backend, unit in (("torch", str(cn_dir)), ("onnxruntime", str(cn_art))):
        ours = _ours(
            sdxl_pipelines[backend], prompt="a mountain", negative_prompt="fog", seed=7, num_images_per_prompt=2,
            control=[Control(unit, image=hint(4), scale=0.7)],
        )  # fmt: skip
        assert_images_close(ours.images, theirs)


def test_bad_units_are_refused_before_any_engine_runs(controlnet_pipelines, sdxl_pipelines, controlnet_artifacts):
    pipe = controlnet_pipelines["onnxruntime"]
    base = dict(height=HEIGHT, width=WIDTH)
    with pytest.raises(ValueError, match=r"control\[0\]: ControlNet 'nope' is neither a directory nor a ControlNet in"):
        pipe.request("x", control=[Control("nope", image=hint())], **base)
    with pytest.raises(ValueError, match="control start 0.8 is after end 0.2"):
        Control("tiny_canny", image=hint(), start=0.8, end=0.2)
    with pytest.raises(ValueError, match=r"control\[0\]: control image .* cannot be read"):
        pipe.request("x", control=[Control("tiny_canny", image=b"not an image")], **base)
    with pytest.raises(ValueError, match=r"unknown ControlNet module 'sharpen'"):
        pipe.request("x", control=[Control("tiny_canny", image=hint(), module="sharpen")], **base)
    with pytest.raises(ValueError, match=r"control scale 3.0 is outside 0..2"):
        Control("tiny_canny", image=hint(), scale=3.0)
    with pytest.raises(ValueError, match=r"does not fit this Stable Diffusion XL model"):
        sdxl_pipelines["onnxruntime"].request(
            "x", control=[Control(str(controlnet_artifacts / "tiny_canny"), image=hint())], **base
        )
    with pytest.raises(ValueError, match="is a ControlNet, which steers a base model"):
        from sdrt import Pipeline

        Pipeline.load(controlnet_artifacts / "tiny_canny", backend="onnxruntime")


def test_sd2_controlnet_matches_diffusers(sd2_model, tmp_path_factory):
    """SD 2.x (v-prediction, linear projections, upcast attention) with a ControlNet of its architecture."""
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    from sdrt import Pipeline
    from sdrt.demo import sd
    from sdrt.demo.controlnet import make_controlnet
    from sdrt.export import ExportConfig, export_model

    cn_dir = tmp_path_factory.mktemp("controlnets") / "sd2"
    make_controlnet(sd._unet_config(sd.SIZES["tiny"], sd._FAMILIES["sd2"]), "tiny", 3).save_pretrained(cn_dir)
    cn_art = tmp_path_factory.mktemp("artifacts") / "cn-sd2"
    config = ExportConfig(max_batch=2, min_size=64, max_size=256, opt_size=128)
    export_model(cn_dir, cn_art, config)
    reference = StableDiffusionControlNetPipeline.from_pretrained(
        sd2_model, controlnet=ControlNetModel.from_pretrained(cn_dir), safety_checker=None, local_files_only=True
    )
    reference.set_progress_bar_config(disable=True)
    theirs = _run(reference, reference.scheduler.config, seed=8, prompt="a bridge", image=hint(5))
    pipes = {"torch": (Pipeline.load(sd2_model, backend="torch", ranges=RANGES), cn_dir)}
    pipes["onnxruntime"] = (Pipeline.load(export(sd2_model, tmp_path_factory, "sd2-cn"), backend="onnxruntime"), cn_art)
    for pipe, unit in pipes.values():
        ours = _ours(pipe, prompt="a bridge", seed=8, control=[Control(str(unit), image=hint(5))])
        assert_images_close(ours.images, theirs)


def test_hires_second_pass_keeps_the_units(controlnet_pipelines):
    """The hires fix's second pass is steered by the same units, their maps resized to its size."""
    from sdrt import Hires

    pipe = controlnet_pipelines["onnxruntime"]
    unit = Control("tiny_canny", image=hint(6))
    request = pipe.request(
        "a tower", height=64, width=72, num_inference_steps=3, seed=3, scheduler="euler", control=[unit],
        hires=Hires(scale=1.5, strength=0.5),
    )  # fmt: skip
    assert request.next_pass.control == request.control and request.next_pass.height == 96
    with_units = pipe.run(request)
    without = pipe.generate("a tower", height=64, width=72, num_inference_steps=3, seed=3, scheduler="euler",
                            hires=Hires(scale=1.5, strength=0.5))  # fmt: skip
    assert with_units.images[0].size == without.images[0].size == (104, 96)
    assert np.abs(np.asarray(with_units.images[0], np.int16) - np.asarray(without.images[0], np.int16)).max() > 5
    assert with_units.timings.controlnet > 0 and "ControlNet 0: " in with_units.parameters[0]


def test_the_cli_unit_syntax_takes_every_field():
    from pathlib import Path

    from sdrt.runtime.control import parse_cli

    unit = parse_cli("canny=photo.png:0.8:0.1:0.9,module=canny,mode=prompt,threshold_a=50,pixel_perfect=true")
    assert (unit.model, unit.image, unit.scale, unit.start, unit.end) == ("canny", Path("photo.png"), 0.8, 0.1, 0.9)
    assert (unit.module, unit.mode, unit.threshold_a, unit.pixel_perfect) == ("canny", "prompt", 50.0, True)
    assert parse_cli("depth=map.png").scale == 1.0
    unit = parse_cli("depth=map.png,weights=1/0.5/0,passes=first")
    assert unit.weights == (1.0, 0.5, 0.0) and unit.passes == "first"
    for bad, reason in [
        ("canny", "is not CONTROLNET=IMAGE"),
        ("canny=a.png:1:2", "is not CONTROLNET=IMAGE"),
        ("canny=a.png,weight=2", "'weight=2' is not FIELD=VALUE with FIELD one of mode, module"),
        ("canny=a.png,processor_res=big", "processor_res 'big' is not a number"),
        ("canny=a.png,mode=loud", "mode 'loud' is not one of balanced, prompt, control"),
        ("canny=a.png:3", "scale 3.0 is outside 0..2"),
        ("canny=a.png,weights=1/x", "weights '1/x' is not numbers separated by /"),
        ("canny=a.png,passes=last", "passes 'last' is not one of both, first, hires"),
    ]:
        with pytest.raises(ValueError, match=reason):
            parse_cli(bad)


def test_per_residual_weights_replace_scale_and_mode(controlnet_pipelines):
    """`weights` (the extension's advanced_weighting) are the residuals' factors: all 0.6 is scale 0.6, the soft
    weights are the "prompt" mode; a list of the wrong length is refused naming both counts."""
    pipe = controlnet_pipelines["onnxruntime"]
    count = len(pipe.controlnets.get("tiny_canny").run.residuals)
    soft = tuple(0.825 ** float(12 - i) for i in range(count))
    cases = [({"scale": 0.6}, {"weights": (0.6,) * count}), ({"mode": "prompt"}, {"weights": soft})]
    for plain, weighted in cases:
        a, b = (_ours(pipe, prompt="a gate", seed=2, control=[Control("tiny_canny", image=hint(3), **f)]) for f in
                (plain, weighted))  # fmt: skip
        assert np.array_equal(np.asarray(a.images[0]), np.asarray(b.images[0]))
    uneven = _ours(pipe, prompt="a gate", seed=2, control=[Control("tiny_canny", image=hint(3),
                   weights=(1.0,) * (count - 1) + (0.0,))])  # fmt: skip
    assert not np.array_equal(np.asarray(uneven.images[0]), np.asarray(a.images[0]))
    with pytest.raises(ValueError, match=rf"control\[0\]: control weights has 3 numbers; ControlNet tiny_canny has "
                       rf"{count} residuals"):  # fmt: skip
        pipe.request("x", height=HEIGHT, width=WIDTH, control=[Control("tiny_canny", image=hint(), weights=(1, 1, 1))])
    with pytest.raises(ValueError, match=r"control weights \[1, -1\] is not a list of numbers >= 0"):
        Control("tiny_canny", image=hint(), weights=[1, -1])


def test_units_can_steer_one_pass_of_the_hires_fix(controlnet_pipelines):
    """`passes` (the extension's hr_option): "hires" leaves the first pass alone, "first" the second; a canny map
    steers the second pass with soft weights, as the extension forces there."""
    from sdrt import Hires

    pipe = controlnet_pipelines["onnxruntime"]
    base = dict(height=64, width=72, num_inference_steps=3, seed=3, scheduler="euler")
    upscale_only = Hires(scale=1.5, strength=0.0)  # the second pass is the first pass's image upscaled
    plain = pipe.generate("a tower", hires=upscale_only, **base)
    later = pipe.generate("a tower", hires=upscale_only, control=[Control("tiny_canny", image=hint(6), passes="hires")],
                          **base)  # fmt: skip
    both = pipe.generate("a tower", hires=upscale_only, control=[Control("tiny_canny", image=hint(6))], **base)
    assert np.array_equal(np.asarray(plain.images[0]), np.asarray(later.images[0]))
    assert not np.array_equal(np.asarray(plain.images[0]), np.asarray(both.images[0]))
    hires = Hires(scale=1.5, strength=0.5)
    first = pipe.request("a tower", hires=hires, control=[Control("tiny_canny", image=hint(6), passes="first")], **base)
    assert first.control and first.next_pass.control == ()
    canny = pipe.request("a tower", hires=hires, control=[Control("tiny_canny", image=hint(6), module="canny")], **base)
    assert canny.control[0].mode == "balanced" and canny.next_pass.control[0].mode == "prompt"
