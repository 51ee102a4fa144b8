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
            "sdxl-inpaint": "sdxl", "unclip": "unclip"}  # fmt: skip

# (variant, path, value, what the reader's message says)
DAMAGED = [
    ("sd1", ("format_version",), 3, "artifact format version 3 is not supported by sdrt-cpp"),
    ("sd1", ("family",), "sd3", "family 'sd3' is not one of sd1, sd2, sdxl, sdxl_refiner, unclip"),
    ("sd1", ("ranges", "max_batch"), 0, "ranges.max_batch must be at least 1"),
    ("sd1", ("ranges", "tile_size"), 64, "ranges.tile_size is not a known field"),
    ("sd1", ("dims", "batch", "min"), 0, "dims.batch needs 1 <= min <= opt <= max"),
    ("sd1", ("prediction_type",), "flow", "prediction_type 'flow' is not one of epsilon, v_prediction, sample"),
    ("sd1", ("vae_scaling_factor",), -1, "vae_scaling_factor must be a positive number"),
    ("sd1", ("components", "unet", "inputs", 0, "dtype"), "bfloat16", "unet.inputs[0].dtype 'bfloat16' is not one of"),
    ("sd1", ("components", "unet", "role"), "unet", "components.unet.role 'unet' is not one of"),
    ("sd1", ("components", "unet", "onnx"), None, "components.unet.onnx is null"),
    ("sd1", ("components", "unet", "inputs"), [], "components.unet.inputs is empty"),
    ("sd1", ("components", "vae_decoder", "inputs", 0, "shape", 2), "8*Latent", "is not an integer, a symbol or"),
    (
        "sdxl",
        ("extras", "requires_aesthetics_score"),
        True,
        "extras.requires_aesthetics_score does not fit family sdxl",
    ),
    ("sd2", ("extras",), {"force_zeros_for_empty_prompt": True}, "extras names [force_zeros_for_empty_prompt]"),
    ("unclip", ("support",), ["tokenizer", "scheduler"], "is not a unclip artifact's"),
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
