"""Bad input gets an error naming the value and what is allowed, before any engine runs."""

from __future__ import annotations

import json
import shutil

import pytest

from sdrt import Pipeline
from sdrt.manifest import FORMAT_VERSION
from sdrt.runtime.model import Model


class _Untouchable:
    """Stands in for every engine: any call means validation came too late."""

    def __init__(self, engine):
        self.spec, self.ranges, self.device = engine.spec, engine.ranges, engine.device

    def __call__(self, feeds):
        raise AssertionError("an engine ran before the request was validated")


@pytest.fixture()
def guarded(pipelines):
    real = pipelines["onnxruntime"]
    model = real.model
    engines = {n: _Untouchable(e) for n, e in model.engines.items()}
    return Pipeline(Model(model.manifest, engines, model.tokenizers, model.scheduler_config, model.token_tables))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"height": 100}, "height 100 is not a multiple of 8"),
        ({"width": 130}, "width 130 is not a multiple of 8"),
        ({"height": 512}, r"height 512 is outside the artifact's range 64\.\.256"),
        ({"width": 32}, r"width 32 is outside the artifact's range 64\.\.256"),
        ({"height": 64.0}, "height 64.0 is not an integer"),
        ({"num_inference_steps": 0}, r"num_inference_steps 0 is outside 1\.\.1000"),
        ({"guidance_scale": float("nan")}, "guidance_scale nan is not a finite number"),
        ({"guidance_scale": float("inf")}, "guidance_scale inf is not a finite number"),
        ({"scheduler": "dpm_fast"}, "unknown scheduler 'dpm_fast'; known: ddim, pndm"),
        ({"num_images_per_prompt": 0}, r"num_images_per_prompt 0 must be at least 1"),
        ({"num_images_per_prompt": 65}, "batch of 65 images .* over the pipeline's maximum of 64"),
        ({"seed": -1}, "seed -1 is outside"),
        ({"eta": 2.0}, r"eta 2.0 is outside 0\.\.1"),
        ({"prompt": []}, "prompt is empty"),
        ({"prompt": None}, "prompt None is not a string or a list of strings"),
        ({"prompt": ["a", "b"], "guidance_scale": [7.0, 5.0, 3.0]}, "guidance_scale has 3 entries for 2 prompts"),
        ({"prompt": ["a", "b"], "guidance_scale": [7.0, float("nan")]}, "guidance_scale nan is not a finite number"),
        ({"prompt": ["a", 3]}, "prompt 3 is not a string"),
        ({"prompt": ["a", "b"], "negative_prompt": ["x", "y", "z"]}, "negative_prompt has 3 entries for 2 prompts"),
    ],
)
def test_bad_request(guarded, kwargs, message):
    args = {"prompt": "a cat", "height": 64, "width": 64, "num_inference_steps": 2, "seed": 1} | kwargs
    with pytest.raises(ValueError, match=message):
        guarded.generate(**args)


def test_missing_path(tmp_path):
    with pytest.raises(ValueError, match="neither an sdrt artifact .* nor a diffusers model directory"):
        Pipeline.load(tmp_path)


# 4: UNets without ControlNet residual inputs; 3: text encoders took token ids (format 4's take the looked-up
# embeddings, for textual inversion)
@pytest.mark.parametrize("version", [99, 4, 3])
def test_artifact_from_another_format_version(artifact, tmp_path, version):
    copy = tmp_path / "art"
    shutil.copytree(artifact, copy, ignore=shutil.ignore_patterns("engines"))
    data = json.loads((copy / "manifest.json").read_text())
    data["format_version"] = version
    (copy / "manifest.json").write_text(json.dumps(data))
    message = f"format version {version} is not supported .* reads version {FORMAT_VERSION}.* re-export"
    with pytest.raises(ValueError, match=message):
        Pipeline.load(copy)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: (d / "manifest.json").write_text("{truncated"), "manifest.json is not valid JSON"),
        (
            lambda d: (d / "manifest.json").write_text(f'{{"format_version": {FORMAT_VERSION}}}'),
            "manifest is malformed",
        ),
        (lambda d: (d / "unet" / "model.onnx").unlink(), "is incomplete: unet file unet/model.onnx is missing"),
        (lambda d: shutil.rmtree(d / "tokenizer"), "is incomplete: tokenizer/ is missing"),
        (lambda d: _point_unet_at(d, "../../etc/passwd"), "points unet at ../../etc/passwd, outside the artifact"),
        (
            lambda d: (d / "scheduler" / "scheduler_config.json").write_text('{"_class_name": "UNet2DConditionModel"}'),
            "'UNet2DConditionModel', which is not a diffusers scheduler class",
        ),
    ],
)
def test_malformed_artifact(artifact, tmp_path, mutate, message):
    copy = tmp_path / "art"
    shutil.copytree(artifact, copy, ignore=shutil.ignore_patterns("engines"))
    mutate(copy)
    with pytest.raises(ValueError, match=message):
        Pipeline.load(copy)


def _point_unet_at(artifact, path):
    data = json.loads((artifact / "manifest.json").read_text())
    data["components"]["unet"]["onnx"]["path"] = path
    (artifact / "manifest.json").write_text(json.dumps(data))
