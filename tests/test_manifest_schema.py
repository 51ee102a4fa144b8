"""sdrt/manifest.schema.json describes manifest.json: every family's manifest validates; what the readers refuse, it
refuses too (the C++ reader's agreement with it is in tests/cpp/test_manifest.py)."""

from __future__ import annotations

import copy
import json

import pytest

from tests.manifests import VARIANTS, schema_validator


@pytest.fixture(scope="module")
def validator():
    return schema_validator()


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_family_validates(validator, family_manifests, variant):
    errors = [e.message for e in validator.iter_errors(family_manifests[variant])]
    assert not errors


def test_exported_artifacts_validate(validator, artifact, sdxl_artifact):
    """Real exports (hashes, versions, the token tables beside the graphs), not only manifests built in memory."""
    for directory in (artifact, sdxl_artifact):
        manifest = json.loads((directory / "manifest.json").read_text())
        assert not [e.message for e in validator.iter_errors(manifest)]


@pytest.mark.parametrize(
    ("variant", "path", "value"),
    [
        ("sd1", ("format_version",), 3),
        ("sd1", ("family",), "sd3"),
        ("sd1", ("ranges", "max_batch"), 0),
        ("sd1", ("prediction_type",), "flow"),
        ("sd1", ("components", "unet", "inputs", 0, "dtype"), "bfloat16"),
        ("sd1", ("components", "unet", "role"), "unet"),
        ("sd1", ("components", "unet", "onnx"), None),
        ("sd1", ("components", "unet", "onnx", "path"), "../elsewhere/model.onnx"),
        ("sd1", ("components", "vae_decoder", "inputs", 0, "shape", 2), "8*Latent"),
        ("sdxl", ("extras", "requires_aesthetics_score"), True),
        ("sdxl-refiner", ("extras", "requires_aesthetics_score"), False),
        ("sd2", ("extras",), {"force_zeros_for_empty_prompt": True}),
        ("unclip", ("support",), ["tokenizer", "scheduler"]),
        ("sd1", ("source_sha256",), "not a hash"),
    ],
)
def test_bad_manifests_are_refused(validator, family_manifests, variant, path, value):
    manifest = copy.deepcopy(family_manifests[variant])
    target = manifest
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    assert list(validator.iter_errors(manifest)), f"the schema accepts {path} = {value!r}"


@pytest.mark.parametrize(
    ("variant", "component"),
    [("sd1", "unet"), ("sdxl", "text_encoder_2"), ("unclip", "image_encoder")],
)
def test_a_family_holds_exactly_its_networks(validator, family_manifests, variant, component):
    missing = copy.deepcopy(family_manifests[variant])
    del missing["components"][component]
    assert list(validator.iter_errors(missing))
    extra = copy.deepcopy(family_manifests[variant])
    extra["components"]["controlnet"] = copy.deepcopy(extra["components"][component])
    extra["components"]["controlnet"]["name"] = "controlnet"
    assert list(validator.iter_errors(extra))


def test_text_encoders_carry_their_token_tables(validator, family_manifests):
    manifest = copy.deepcopy(family_manifests["sd1"])
    del manifest["components"]["text_encoder"]["token_embeddings"]
    assert list(validator.iter_errors(manifest))
    manifest = copy.deepcopy(family_manifests["sd1"])
    manifest["components"]["unet"]["token_embeddings"] = manifest["components"]["text_encoder"]["token_embeddings"]
    assert list(validator.iter_errors(manifest))
