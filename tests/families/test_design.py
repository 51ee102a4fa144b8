"""The family design: a family is found from its description alone, and a new family is one module.

A throwaway family defined here (an SD 1.x variant whose UNet takes one more named conditioning input,
`class_labels`) exports and runs end to end on both CPU backends without any change outside this file.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch

from sdrt import Pipeline
from sdrt.components import TensorSpec, unet_spec
from sdrt.conditioning.guidance import VECTOR, Conditioning
from sdrt.families import families, family_for, family_named, register, unregister
from sdrt.families.sd import PARTS, SD1, SDFamily
from sdrt.manifest import Manifest, read_manifest
from sdrt.model_dir import ModelDir
from tests.conftest import RANGES, export

CLASS_WIDTH = 6  # the throwaway UNet's class-embedding input


def test_every_family_is_found_from_its_model_index_and_configs(
    demo_model, sd2_model, inpaint_model, sdxl_model, sdxl_refiner_model
):
    found = ((demo_model, "sd1"), (sd2_model, "sd2"), (inpaint_model, "sd1"), (sdxl_model, "sdxl"))
    for path, name in (*found, (sdxl_refiner_model, "sdxl_refiner")):
        model = ModelDir.open(path)
        assert model.family is family_named(name)
        assert family_for(model.index, model.configs) is model.family
    with pytest.raises(ValueError, match="unknown model family 'sd9'; sdrt knows sd1, sd2, sdxl, sdxl_refiner"):
        family_named("sd9")


@pytest.mark.parametrize("fixture", ["demo_model", "sdxl_model", "sdxl_refiner_model"])
def test_networks_are_exactly_the_ones_a_family_names(request, fixture):
    model = ModelDir.open(request.getfixturevalue(fixture))
    specs = model.family.networks(model.configs)
    assert tuple(specs) == model.family.network_names
    assert all(spec.name == name for name, spec in specs.items())
    assert [name for name, _ in model.iter_modules()] == list(specs)
    texts = [p.network for p in model.family.text_encoders]
    assert [n for n, s in specs.items() if s.role == "text_encoder"] == texts


def test_sdxl_manifests_round_trip_with_their_extras(sdxl_artifact, sdxl_refiner_artifact):
    base, refiner = read_manifest(sdxl_artifact), read_manifest(sdxl_refiner_artifact)
    for manifest in (base, refiner):
        assert Manifest.from_json(json.loads(json.dumps(manifest.to_json()))) == manifest
    assert base.extras == {"force_zeros_for_empty_prompt": True, "requires_aesthetics_score": False}
    assert refiner.extras == {"force_zeros_for_empty_prompt": False, "requires_aesthetics_score": True}
    assert base.support == ("tokenizer", "tokenizer_2", "scheduler") and refiner.support == ("tokenizer_2", "scheduler")
    unet, ref_unet = base.components["unet"], refiner.components["unet"]
    conditioning = ["sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids"]
    # The base UNet takes ControlNet residuals after its conditioning (a tiny SDXL has 6 down block
    # outputs and a mid block at half resolution); the refiner has no ControlNet and no residual inputs.
    residuals = [f"down_block_residual_{i}" for i in range(6)] + ["mid_block_residual"]
    assert unet.input_names == conditioning + residuals and ref_unet.input_names == conditioning
    assert unet.inputs[-1].shape == ("cfg_batch", 64, "latent_height/2", "latent_width/2")
    assert unet.inputs[4].shape == ("cfg_batch", 6) and ref_unet.inputs[4].shape == ("cfg_batch", 5)
    assert unet.fp32_inputs == {"timestep", "time_ids"}
    assert base.components["text_encoder_2"].output_names == ["text_embeddings", "pooled_embeddings"]
    data = refiner.to_json()
    with pytest.raises(ValueError, match="requires_aesthetics_score False does not fit a Stable Diffusion XL refiner"):
        Manifest.from_json({**data, "extras": {**data["extras"], "requires_aesthetics_score": False}})
    with pytest.raises(ValueError, match="manifest extra force_zeros_for_empty_prompt of family sdxl_refiner is 1"):
        Manifest.from_json({**data, "extras": {**data["extras"], "force_zeros_for_empty_prompt": 1}})


def test_manifest_round_trips_and_its_family_validates_it(artifact, sd2_model):
    manifest = read_manifest(artifact)
    assert Manifest.from_json(json.loads(json.dumps(manifest.to_json()))) == manifest
    sd2 = Manifest.for_model(ModelDir.open(sd2_model), RANGES)
    assert Manifest.from_json(sd2.to_json()) == sd2 and sd2.family == "sd2"
    data = manifest.to_json()
    with pytest.raises(ValueError, match="a sd1 artifact holds networks .* this one names"):
        Manifest.from_json({**data, "components": {k: v for k, v in data["components"].items() if k != "unet"}})
    with pytest.raises(ValueError, match="manifest extras of family sd1: unknown \\['color'\\]"):
        Manifest.from_json({**data, "extras": {"color": 1}})
    with pytest.raises(ValueError, match="support directories"):
        Manifest.from_json({**data, "support": ["tokenizer"]})


class ClassLabels:
    """A new conditioning part: `class_labels`, 50 x the image's guidance scale, zeros for the uncond rows."""

    def check(self, request) -> None:
        pass

    def batch_key(self, request) -> tuple:
        return ()

    def embed(self, batch) -> Conditioning:
        scales = [g for r in batch.requests for g in r.per_image(r.guidance_scales)]
        labels = (50.0 * torch.tensor(scales, dtype=torch.float32)).view(-1, 1).expand(-1, CLASS_WIDTH).contiguous()
        zeros = torch.zeros(batch.cfg.num_uncond, CLASS_WIDTH)
        return Conditioning({"class_labels": labels}, {"class_labels": zeros}, kinds={"class_labels": VECTOR})


@dataclass(frozen=True)
class ClassFamily(SDFamily):
    """SD 1.x with a projection class embedding on the UNet."""

    def claims(self, index: Mapping, configs: Mapping) -> bool:
        return index.get("_class_name") == "SdrtClassPipeline"

    def networks(self, configs):
        specs = super().networks(configs)
        unet = configs["unet"]
        labels = TensorSpec("class_labels", "float32", ("cfg_batch", CLASS_WIDTH))
        specs["unet"] = unet_spec(
            unet["in_channels"], unet["out_channels"], unet["cross_attention_dim"], 1000, class_labels=labels
        )
        return specs

    def embedders(self, context) -> list:
        return [*super().embedders(context), ClassLabels()]  # SD's text states, then the new part


CLASS_FAMILY = ClassFamily(
    name="test_class",
    parts=PARTS,
    network_names=SD1.network_names,
    text_encoders=SD1.text_encoders,
    description="test model with class labels",
    latent_rgb=SD1.latent_rgb,
)


@pytest.fixture(scope="module")
def class_family():
    register(CLASS_FAMILY)
    yield CLASS_FAMILY
    unregister(CLASS_FAMILY.name)


@pytest.fixture(scope="module")
def class_model(class_family, demo_model, tmp_path_factory):
    from diffusers import UNet2DConditionModel

    root = tmp_path_factory.mktemp("models") / "class"
    shutil.copytree(demo_model, root)
    config = {k: v for k, v in UNet2DConditionModel.load_config(demo_model / "unet").items() if not k.startswith("_")}
    torch.manual_seed(5)
    unet = UNet2DConditionModel(
        **{**config, "class_embed_type": "projection", "projection_class_embeddings_input_dim": CLASS_WIDTH}
    )
    shutil.rmtree(root / "unet")
    unet.save_pretrained(root / "unet", safe_serialization=True)
    index = json.loads((root / "model_index.json").read_text())
    (root / "model_index.json").write_text(json.dumps({**index, "_class_name": "SdrtClassPipeline"}))
    return root


def test_a_new_family_exports_and_runs_end_to_end(class_model, tmp_path_factory):
    artifact = export(class_model, tmp_path_factory, "class")
    manifest = read_manifest(artifact)
    assert manifest.family == "test_class"
    assert manifest.components["unet"].input_names[-1] == "class_labels"
    kwargs = dict(height=64, width=72, num_inference_steps=3, seed=3, scheduler="euler")
    onnx = Pipeline.load(artifact, backend="onnxruntime")
    torch_pipe = Pipeline.load(class_model, backend="torch", ranges=RANGES)
    a = np.asarray(onnx.generate("a cat", guidance_scale=3.0, **kwargs).images[0], dtype=np.int16)
    b = np.asarray(torch_pipe.generate("a cat", guidance_scale=3.0, **kwargs).images[0], dtype=np.int16)
    assert np.abs(a - b).max() <= 1
    # the new input reaches the UNet: scales 1.0 and 0.5 both skip guidance, so only the class labels differ
    # (the run is deterministic: were the labels ignored, the images would be identical)
    unguided = [
        np.asarray(onnx.generate("a cat", guidance_scale=g, **kwargs).images[0], dtype=np.int16) for g in (1, 0.5)
    ]
    assert np.abs(unguided[0] - unguided[1]).max() > 0


def test_registered_families_are_listed_and_names_are_unique(class_family):
    assert "test_class" in families()
    with pytest.raises(ValueError, match="registered already"):
        register(replace(CLASS_FAMILY))
