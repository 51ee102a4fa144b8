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


def test_residual_inputs_use_divided_dims(family_manifests):
    """Format 5: the base UNets list their ControlNet residual inputs, at the latents' size over 2 per downsampling,
    and a ControlNet's outputs are the same specs (the manifests the schema accepts above hold them)."""
    from sdrt.spec import TensorSpec

    unet = family_manifests["sd1"]["components"]["unet"]
    residuals = unet["attributes"]["residuals"]
    inputs = {t["name"]: t for t in unet["inputs"]}
    assert residuals[-1] == "mid_block_residual" and set(residuals) <= set(inputs)
    assert {d for name in residuals for d in inputs[name]["shape"][2:]} >= {"latent_height/2", "latent_width/8"}
    controlnet = family_manifests["controlnet"]["components"]["controlnet"]
    assert [t for t in controlnet["outputs"]] == [inputs[name] for name in residuals]
    # ceil, as a stride-2 convolution with padding 1 rounds: 9 -> 5 -> 3 -> 2
    spec = TensorSpec.from_json(inputs["mid_block_residual"])
    assert spec.concrete({"cfg_batch": 2, "latent_height": 9, "latent_width": 13}) == (2, 64, 2, 2)


def test_exported_artifacts_validate(validator, artifact, sdxl_artifact):
    """Real exports (hashes, versions, the token tables beside the graphs), not only manifests built in memory."""
    for directory in (artifact, sdxl_artifact):
        manifest = json.loads((directory / "manifest.json").read_text())
        assert not [e.message for e in validator.iter_errors(manifest)]


def test_deep_cache_networks_validate_and_bad_ones_are_refused(validator, deep_cache_artifacts):
    """`sdrt export --deep-cache`: the deep_cache member validates; a part or name the readers refuse, it refuses."""
    from sdrt.manifest import Manifest

    for directory in deep_cache_artifacts.values():
        manifest = json.loads((directory / "manifest.json").read_text())
        assert not [e.message for e in validator.iter_errors(manifest)]
    for edit in (
        lambda d: d["unet_deep_cache_full_0"]["attributes"].update(deep_cache_part="middle"),
        lambda d: d["unet_deep_cache_full_0"]["attributes"].update(deep_cache_branch=-1),
        lambda d: d.update(unet_deep_cache_full_x=d.pop("unet_deep_cache_full_0")),
    ):
        bad = copy.deepcopy(manifest)
        edit(bad["deep_cache"])
        assert list(validator.iter_errors(bad))
        with pytest.raises(ValueError):
            Manifest.from_json(bad)


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
        # format 5: residual inputs at "symbol/N" (N >= 1), the controlnet family
        ("sd1", ("components", "unet", "inputs", 3, "shape", 2), "latent_height/0"),
        ("sd1", ("components", "unet", "inputs", 3, "shape", 2), "latent_height/-2"),
        ("sd1", ("components", "unet", "inputs", 3, "shape", 2), "latent_height/"),
        ("sd1", ("components", "unet", "inputs", 3, "shape", 2), "latent_height//2"),
        ("sd1", ("vae_scaling_factor",), None),
        ("sd1", ("text_encoders",), []),
        ("controlnet", ("vae_scaling_factor",), 0.18215),
        ("controlnet", ("extras", "fits"), ["sd3"]),
        ("controlnet", ("extras", "fits"), []),
        ("controlnet", ("extras", "cross_attention_dim"), 0),
        ("controlnet", ("extras",), {"fits": ["sd1"], "cross_attention_dim": 32}),
        ("controlnet", ("support",), ["tokenizer", "scheduler"]),
        ("controlnet", ("components", "controlnet", "role"), "denoiser"),
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


def test_the_x4_upscaler_and_the_optional_members_validate(validator, family_manifests, x4_model):
    """The SD x4 upscaler's manifest (a family the C++ runtime does not read), and the members an export writes
    when asked: graphs of a variant (--tiling), hypernetworks traced in, a LoRA with its own UNet weight."""
    from tests.manifests import FAKE_SHA, family_manifest

    x4 = family_manifest(x4_model, latent_factor=4)
    assert x4["family"] == "upscaler_x4" and not list(validator.iter_errors(x4))
    manifest = copy.deepcopy(family_manifests["sd1"])
    graph = {"path": "tiling/unet/model.onnx", "sha256": FAKE_SHA, "external_data": None, "external_data_sha256": None}
    manifest["variants"] = {"tiling": {"unet": graph}}
    manifest["hypernetworks"] = [{"name": "anime.pt", "sha256": FAKE_SHA, "multiplier": 0.7}]
    manifest["loras"] = [{"name": "style.safetensors", "sha256": FAKE_SHA, "weight": 0.8, "unet_weight": 0.5}]
    assert not [e.message for e in validator.iter_errors(manifest)]
    manifest["variants"]["tiling"]["unet"] = {"path": "tiling/unet/model.onnx"}
    assert any("sha256" in e.message for e in validator.iter_errors(manifest))
