"""The C++ manifest reader and the JSON Schema agree: every family's manifest is read, and each damaged one that the
schema refuses, the reader refuses too, with a message naming the field. What the schema cannot state (a shape
symbol that dims does not define; a path leaving the artifact, with the files) the reader checks."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess

import pytest

from tests.manifests import VARIANTS, schema_validator

FAMILIES = {"sd1": "sd1", "sd2": "sd2", "inpaint": "sd1", "sdxl": "sdxl", "sdxl-refiner": "sdxl_refiner",
            "sdxl-inpaint": "sdxl", "unclip": "unclip", "controlnet": "controlnet",
            "controlnet-sdxl": "controlnet"}  # fmt: skip
RESIDUAL = ("components", "unet", "inputs", 5, "shape", 2)  # the sd1 UNet's down_block_residual_2: "latent_height/2"

# (variant, path, value, what the reader's message says)
DAMAGED = [
    ("sd1", ("format_version",), 3, "artifact format version 3 is not supported by sdrt-cpp"),
    ("sd1", ("family",), "sd3", "family 'sd3' is not one of sd1, sd2, sdxl, sdxl_refiner, unclip, controlnet"),
    ("sd1", ("ranges", "max_batch"), 0, "ranges.max_batch must be at least 1"),
    ("sd1", ("ranges", "tile_size"), 64, "ranges.tile_size is not a known field"),
    ("sd1", ("dims", "batch", "min"), 0, "dims.batch needs 1 <= min <= opt <= max"),
    ("sd1", ("prediction_type",), "flow", "prediction_type 'flow' is not one of epsilon, v_prediction, sample"),
    ("sd1", ("vae_scaling_factor",), -1, "vae_scaling_factor must be a positive number"),
    ("sd1", ("components", "unet", "inputs", 0, "dtype"), "bfloat16", "unet.inputs[0].dtype 'bfloat16' is not one of"),
    ("sd1", ("components", "unet", "role"), "unet", "components.unet.role 'unet' is not one of"),
    ("sd1", ("components", "unet", "onnx"), None, "components.unet.onnx is null"),
    ("sd1", ("components", "unet", "inputs"), [], "components.unet.inputs is empty"),
    ("sd1", ("components", "vae_decoder", "inputs", 0, "shape", 2), "8*Latent", "'8*Latent' is not an integer"),
    (
        "sdxl",
        ("extras", "requires_aesthetics_score"),
        True,
        "extras.requires_aesthetics_score does not fit family sdxl",
    ),
    ("sd2", ("extras",), {"force_zeros_for_empty_prompt": True}, "extras names [force_zeros_for_empty_prompt]"),
    ("unclip", ("support",), ["tokenizer", "scheduler"], "is not a unclip artifact's"),
    # format 5: "symbol/N" dims (N >= 1) and the controlnet family
    ("sd1", RESIDUAL, "latent_height/0", "unet.inputs[5].shape[2] dimension 'latent_height/0' has divisor 0"),
    ("sd1", RESIDUAL, "latent_height/-2", "unet.inputs[5].shape[2] dimension 'latent_height/-2' is not an integer"),
    ("sd1", RESIDUAL, "latent_height//2", "unet.inputs[5].shape[2] dimension 'latent_height//2' is not an integer"),
    ("sd1", RESIDUAL, "0*latent_height/2", "unet.inputs[5].shape[2] dimension '0*latent_height/2' has factor 0"),
    ("sd1", ("vae_scaling_factor",), None, "vae_scaling_factor must be a positive number"),
    ("sd1", ("text_encoders",), [], "text_encoders pair tokenizers with []; the text-encoder components are"),
    ("controlnet", ("vae_scaling_factor",), 0.18215, "vae_scaling_factor must be null: a controlnet artifact has no"),
    ("controlnet", ("extras", "fits"), ["sd3"], "extras.fits[0] 'sd3' is not one of sd1, sd2, sdxl"),
    ("controlnet", ("extras", "fits"), [], "extras.fits is empty"),
    ("controlnet", ("extras", "cross_attention_dim"), 0, "extras.cross_attention_dim must be a positive integer"),
    ("controlnet", ("extras",), {"fits": ["sd1"], "cross_attention_dim": 32}, "names [cross_attention_dim, fits]"),
    ("controlnet", ("support",), ["tokenizer", "scheduler"], "is not a controlnet artifact's []"),
]


def _damaged(manifest: dict, path: tuple, value: object) -> dict:
    manifest = copy.deepcopy(manifest)
    target = manifest
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return manifest


def _read(cpp_tools, manifest: dict, tmp_path) -> subprocess.CompletedProcess:
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2))
    return subprocess.run([str(cpp_tools.inspect), "manifest", str(path)], capture_output=True, text=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_family_is_read(cpp_tools, family_manifests, tmp_path, variant):
    result = _read(cpp_tools, family_manifests[variant], tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["family"] == FAMILIES[variant]


@pytest.mark.parametrize(("variant", "path", "value", "message"), DAMAGED)
def test_schema_and_reader_refuse_alike(cpp_tools, family_manifests, tmp_path, variant, path, value, message):
    manifest = _damaged(family_manifests[variant], path, value)
    assert list(schema_validator().iter_errors(manifest)), f"the schema accepts {path} = {value!r}"
    result = _read(cpp_tools, manifest, tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and result.stderr.count("\n") == 1


def test_missing_members_are_named(cpp_tools, family_manifests, tmp_path):
    for key in ("source_sha256", "components", "dims"):
        manifest = copy.deepcopy(family_manifests["sd1"])
        del manifest[key]
        assert list(schema_validator().iter_errors(manifest))
        result = _read(cpp_tools, manifest, tmp_path)
        assert result.returncode == 2 and f"{key} is missing" in result.stderr
    manifest = copy.deepcopy(family_manifests["sdxl"])
    del manifest["components"]["text_encoder_2"]["token_embeddings"]
    assert list(schema_validator().iter_errors(manifest))
    assert "components.text_encoder_2.token_embeddings is missing" in _read(cpp_tools, manifest, tmp_path).stderr


def test_reader_checks_what_the_schema_cannot(cpp_tools, family_manifests, tmp_path, artifact):
    manifest = _damaged(family_manifests["sd1"], ("components", "unet", "inputs", 0, "shape", 2), "tile_height")
    assert not list(schema_validator().iter_errors(manifest))  # a well-formed symbol; dims cannot be cross-checked
    assert "names dimension 'tile_height', which dims does not define" in _read(cpp_tools, manifest, tmp_path).stderr
    manifest = _damaged(family_manifests["sd1"], RESIDUAL, "latent_hieght/2")
    assert not list(schema_validator().iter_errors(manifest))
    result = _read(cpp_tools, manifest, tmp_path)
    assert result.returncode == 2
    assert "unet.inputs[5].shape[2] names dimension 'latent_hieght', which dims does not define" in result.stderr
    # a residual the attributes list that the UNet does not take
    manifest = _damaged(family_manifests["sd1"], ("components", "unet", "attributes", "residuals", 2), "down_block_9")
    assert not list(schema_validator().iter_errors(manifest))
    result = _read(cpp_tools, manifest, tmp_path)
    assert result.returncode == 2
    assert "components.unet.attributes.residuals[2] 'down_block_9' is not an input of unet" in result.stderr
    # a graph path leaving the artifact, and a missing file, against a real artifact's files
    copy_dir = tmp_path / "artifact"
    shutil.copytree(artifact, copy_dir, ignore=shutil.ignore_patterns("engines"))
    real = json.loads((copy_dir / "manifest.json").read_text())
    for rel, message in (
        ("../outside.onnx", "outside the artifact"),
        ("unet/gone.onnx", "unet file unet/gone.onnx is missing"),
    ):
        (copy_dir / "manifest.json").write_text(json.dumps(_damaged(real, ("components", "unet", "onnx", "path"), rel)))
        result = subprocess.run([str(cpp_tools.inspect), "manifest", str(copy_dir)], capture_output=True, text=True)
        assert result.returncode == 2 and message in result.stderr


@pytest.mark.parametrize("variant", ["sd1", "sdxl", "inpaint", "controlnet", "controlnet-sdxl"])
def test_residual_shapes_as_python_computes_them(cpp_tools, family_manifests, tmp_path, variant):
    """Format 5: the C++ reader lists the ControlNet residuals (a UNet's inputs, a ControlNet's outputs) and sizes
    every tensor as sdrt.spec does, "symbol/N" rounding up, at latents of odd sizes."""
    from sdrt.spec import ComponentSpec

    manifest = family_manifests[variant]
    values = {"cfg_batch": 2, "batch": 2, "latent_height": 9, "latent_width": 13, "text_sequence": 154}
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    args = [f"{k}={v}" for k, v in values.items()]
    read = cpp_tools.inspect_json("manifest", str(path), *args)
    network = "controlnet" if variant.startswith("controlnet") else "unet"
    spec = ComponentSpec.from_json(manifest["components"][network])
    assert read["residuals"][network] == spec.attributes["residuals"] and len(spec.attributes["residuals"]) >= 7
    expected = {t.name: list(t.concrete(values)) for t in (*spec.inputs, *spec.outputs)}
    assert read["shapes"][network] == expected
    mid = next(t for t in (*spec.inputs, *spec.outputs) if t.name == "mid_block_residual")
    divisor = int(mid.shape[2].split("/")[1])  # "latent_height/N": N = 8 on the tiny SD 1.x UNet, 2 on the SDXL one
    assert divisor > 1 and read["shapes"][network]["mid_block_residual"][2:] == [-(-9 // divisor), -(-13 // divisor)]


def test_exported_artifact_with_residual_inputs_is_read(cpp_tools, artifact):
    """A real v5 export (the demo SD 1.x artifact the generation tests run): read with its files, residuals listed."""
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["format_version"] == 5 and not list(schema_validator().iter_errors(manifest))
    read = cpp_tools.inspect_json("manifest", str(artifact), "cfg_batch=2", "latent_height=9", "latent_width=13")
    assert read["residuals"]["unet"] == manifest["components"]["unet"]["attributes"]["residuals"]
    assert read["shapes"]["unet"]["mid_block_residual"] == [2, 64, 2, 2]


def test_controlnet_artifact_is_refused_by_the_runtime(cpp_tools, family_manifests, tmp_path):
    """sdrt-cpp reads a ControlNet's manifest but does not run one: one line saying so, exit code 2, no PNG."""
    artifact = tmp_path / "controlnet-artifact"
    (artifact / "controlnet").mkdir(parents=True)
    (artifact / "controlnet" / "model.onnx").write_bytes(b"")  # read_manifest checks the file is there
    (artifact / "manifest.json").write_text(json.dumps(family_manifests["controlnet"]))
    out = tmp_path / "out.png"
    result = subprocess.run(
        [str(cpp_tools.sdrt_cpp), str(artifact), "--prompt", "a cat", "-o", str(out)], capture_output=True, text=True
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "is a ControlNet (made for sd1 models)" in result.stderr and "sdrt-cpp runs no ControlNets" in result.stderr
    assert not out.exists()


def test_artifact_with_deep_cache_networks_is_read(cpp_tools, deep_cache_artifacts):
    """sdrt-cpp runs no DeepCache: it reads an artifact exported with --deep-cache, its components as without."""
    directory = deep_cache_artifacts["sd1"]
    manifest = json.loads((directory / "manifest.json").read_text())
    assert len(manifest["deep_cache"]) == 4 and not list(schema_validator().iter_errors(manifest))
    read = cpp_tools.inspect_json("manifest", str(directory), "cfg_batch=2", "latent_height=9", "latent_width=13")
    assert read["family"] == "sd1" and read["components"] == len(manifest["components"]) == 4
    assert read["shapes"]["unet"]["mid_block_residual"] == [2, 64, 2, 2]
