"""DeepCache from exported graphs (`sdrt export --deep-cache`) on ONNX Runtime and OpenVINO matches the authors' own
code: their `DeepCacheSDHelper` (PyPI DeepCache 0.1.1) on diffusers' pipelines, same weights and settings, within
2/255; an artifact without a branch's graphs is refused naming the export that adds them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sdrt.runtime.deep_cache import DeepCache
from tests.runtime.compare import STEPS, assert_images_close
from tests.runtime.deep_cache_reference import NEGATIVE, PROMPT, SIZE, with_helper

# per model: the sampler, seed and what else the reference pipeline needs to match sdrt's defaults
SETTINGS = {
    "sd1": ("dpmpp_2m", 4, {"negative_prompt": NEGATIVE}, {"negative_prompt": NEGATIVE}),
    "sdxl": ("euler_a", 5, {}, {"guidance_scale": 5.0}),
}


@pytest.fixture(scope="module")
def references(diffusers_pipe, sdxl_model):
    """The helper's images per (model, interval, branch), made once for both backends."""
    from diffusers import StableDiffusionXLPipeline

    sdxl = StableDiffusionXLPipeline.from_pretrained(sdxl_model, local_files_only=True)
    sdxl.set_progress_bar_config(disable=True)
    sdxl.original_scheduler = sdxl.scheduler
    pipes, made = {"sd1": diffusers_pipe, "sdxl": sdxl}, {}

    def reference(variant: str, interval: int, branch: int):
        if (variant, interval, branch) not in made:
            scheduler, seed, _, theirs = SETTINGS[variant]
            made[variant, interval, branch] = with_helper(
                pipes[variant], interval, branch, scheduler, seed, prompt=PROMPT, **SIZE, num_inference_steps=STEPS,
                **theirs,
            )  # fmt: skip
        return made[variant, interval, branch]

    return reference


@pytest.fixture(scope="module")
def exported_pipes(deep_cache_artifacts):
    """Pipelines over the DeepCache artifacts, by (backend, model), opened on first use."""
    from sdrt import Pipeline

    opened = {}

    def pipe(backend: str, variant: str):
        if (backend, variant) not in opened:
            opened[backend, variant] = Pipeline.load(deep_cache_artifacts[variant], backend=backend)
        return opened[backend, variant]

    return pipe


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("variant", ["sd1", "sdxl"])
@pytest.mark.parametrize("interval", [2, 3])
@pytest.mark.parametrize("branch", [0, 1])
def test_exported_graphs_match_the_helper(exported_pipes, references, backend, variant, interval, branch):
    if backend == "openvino":
        pytest.importorskip("openvino", reason="the openvino backend needs OpenVINO")
    scheduler, seed, ours_extra, _ = SETTINGS[variant]
    ours = exported_pipes(backend, variant).generate(
        PROMPT, **SIZE, num_inference_steps=STEPS, seed=seed, scheduler=scheduler, **ours_extra,
        deep_cache=DeepCache(interval, branch),
    )  # fmt: skip
    assert_images_close(ours.images, references(variant, interval, branch))


def test_the_engines_are_the_exported_graphs_and_differ_from_exact(exported_pipes):
    """The full and shallow engines run the artifact's graphs (ONNX Runtime sessions over them), and DeepCache
    changes the image (a cached step that equalled the full UNet would make the parity above prove nothing)."""
    from sdrt.engines.onnxruntime_backend import OnnxRuntimeEngine

    pipe = exported_pipes("onnxruntime", "sd1")
    model = pipe.model
    full, shallow = model.deep_cache_engines(1)
    assert isinstance(full, OnnxRuntimeEngine) and isinstance(shallow, OnnxRuntimeEngine)
    assert (full.spec.name, shallow.spec.name) == ("unet_deep_cache_full_1", "unet_deep_cache_shallow_1")
    assert model.deep_cache_engines(1)[0] is full  # opened once
    kwargs = {"num_inference_steps": STEPS, "seed": 3, **SIZE}
    exact = pipe.generate(PROMPT, **kwargs).images[0]
    cached = pipe.generate(PROMPT, deep_cache=DeepCache(3, 1), **kwargs).images[0]
    import numpy as np

    assert np.abs(np.asarray(exact, dtype=int) - np.asarray(cached, dtype=int)).max() > 2


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_an_artifact_without_the_branch_is_refused_naming_the_export(exported_pipes, pipelines, backend):
    if backend == "openvino":
        pytest.importorskip("openvino", reason="the openvino backend needs OpenVINO")
    pipe = exported_pipes(backend, "sd1")
    with pytest.raises(ValueError, match=r"deep_cache: this artifact has no DeepCache graphs for branch 2 \(it has: "
                       r"0, 1\); export it again with sdrt export --deep-cache 2"):  # fmt: skip
        pipe.request(PROMPT, **SIZE, deep_cache=DeepCache(2, 2))
    plain = pipelines["onnxruntime"]  # the session artifact, exported without --deep-cache
    with pytest.raises(ValueError, match=r"\(it has: none\); export it again with sdrt export --deep-cache 0"):
        plain.request(PROMPT, **SIZE, deep_cache=DeepCache(2, 0))


def test_inpainting_matches_the_helper_on_torch(inpaint_model):
    """An inpainting UNet (latents, mask and masked-image latents in): the shallow step reads the same 9 channels."""
    from diffusers import StableDiffusionInpaintPipeline

    from sdrt import Pipeline
    from tests.conftest import RANGES
    from tests.runtime.test_img2img import input_image
    from tests.runtime.test_inpaint import mask_image

    inputs = {"image": input_image(), "mask_image": mask_image(), "negative_prompt": NEGATIVE, **SIZE}
    ours = Pipeline.load(inpaint_model, backend="torch", ranges=RANGES).generate(
        PROMPT, **inputs, num_inference_steps=STEPS, seed=12, scheduler="euler", deep_cache=DeepCache(2, 1)
    )
    reference = StableDiffusionInpaintPipeline.from_pretrained(
        inpaint_model, safety_checker=None, local_files_only=True
    )
    reference.set_progress_bar_config(disable=True)
    reference.original_scheduler = reference.scheduler
    theirs = with_helper(
        reference, 2, 1, "euler", 12, prompt=PROMPT, **inputs, num_inference_steps=STEPS, strength=1.0,
        guidance_scale=7.5,
    )  # fmt: skip
    assert_images_close(ours.images, theirs)


def test_request_loras_are_refused_with_exported_deep_cache_engines(demo_model, deep_cache_artifacts, tmp_path):
    """A refit (TensorRT) reaches the UNet engine alone, so DeepCache's engines would run without the LoRA: refused
    on every exported backend, naming what to do."""
    from sdrt import Pipeline
    from sdrt.model_dir import ModelDir
    from tests.test_lora import lora_factors, write_kohya_lora

    model = ModelDir.open(demo_model)
    modules = {"text_encoder": model.load_part("text_encoder"), "unet": model.load_part("unet")}
    write_kohya_lora(tmp_path / "style.safetensors", lora_factors(modules, seed=1))
    pipe = Pipeline.load(deep_cache_artifacts["sd1"], backend="onnxruntime", lora_dir=tmp_path)
    with pytest.raises(ValueError, match=r"deep_cache with LoRAs named in the request runs on the torch backend only"):
        pipe.request("a cat <lora:style:0.7>", **SIZE, deep_cache=DeepCache(2, 0))


def test_sdrt_build_builds_the_deep_cache_engines_too(deep_cache_artifacts, tmp_path, capsys):
    from sdrt.cli import main

    cache = tmp_path / "cache"  # built here, or reused from the artifact where earlier tests built them
    assert main(["build", str(deep_cache_artifacts["sd1"]), "--backend", "onnxruntime", "--cache-dir", str(cache)]) == 0
    built = {line.split()[0]: Path(line.split()[-1]) for line in capsys.readouterr().out.splitlines()}
    names = {f"unet_deep_cache_{part}_{b}" for part in ("full", "shallow") for b in (0, 1)}
    assert {"unet", *names} <= set(built)
    assert all((built[n] / "build.json").is_file() and built[n].parent.name == n for n in names)
