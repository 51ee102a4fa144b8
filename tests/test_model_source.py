"""VAE swap at export: the artifact's VAE engines are the given VAE's; the manifest and infotexts name it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sdrt import Pipeline
from sdrt.cli import main
from sdrt.export import export_model
from sdrt.hashing import file_sha256
from sdrt.manifest import read_manifest
from sdrt.model_source import SourceOptions
from tests.conftest import RANGES
from tests.runtime.compare import HEIGHT, STEPS, WIDTH, assert_images_close
from tests.single_file.original_layout import original_vae_weights

SIZE_STEPS = {"height": HEIGHT, "width": WIDTH, "num_inference_steps": STEPS}


def _export_args(model: Path, out: Path, *extra: str) -> list[str]:
    return ["export", str(model), "-o", str(out), "--max-batch", str(RANGES.max_batch), "--min-size",
            str(RANGES.min_size), "--max-size", str(RANGES.max_size), "--opt-size", "128", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def other_vae(tmp_path_factory) -> Path:
    """Another VAE of the demo's architecture (other random weights), as a diffusers VAE directory."""
    from sdrt.demo import write_demo_model

    other = write_demo_model(tmp_path_factory.mktemp("other") / "model", seed=11)
    vae = tmp_path_factory.mktemp("vaes") / "vae-ft-test"
    shutil.copytree(other / "vae", vae)
    return vae


@pytest.fixture(scope="module")
def swapped(demo_model, other_vae, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("swapped") / "art"
    assert main(_export_args(demo_model, out, "--vae", str(other_vae))) == 0
    return out


def test_swapped_vae_images_equal_diffusers_with_that_vae(swapped, demo_model, other_vae):
    from diffusers import AutoencoderKL, StableDiffusionPipeline

    vae = AutoencoderKL.from_pretrained(other_vae, local_files_only=True)
    pipe = StableDiffusionPipeline.from_pretrained(demo_model, vae=vae, safety_checker=None, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    ours = Pipeline.load(swapped, backend="onnxruntime").generate("a castle", **SIZE_STEPS, seed=4)
    theirs = pipe("a castle", **SIZE_STEPS, generator=[torch.Generator("cpu").manual_seed(4)]).images
    assert_images_close(ours.images, theirs)
    assert "VAE: vae-ft-test" in ours.parameters[0]


def test_manifest_records_the_vae_and_keeps_the_models_hash(swapped, artifact, other_vae):
    manifest, base = read_manifest(swapped), read_manifest(artifact)
    weights = other_vae / "diffusion_pytorch_model.safetensors"
    assert manifest.vae["name"] == "vae-ft-test" and len(manifest.vae["sha256"]) == 64
    assert manifest.source_sha256 == base.source_sha256 and base.vae is None
    assert manifest.files["unet"].sha256 == base.files["unet"].sha256
    assert manifest.files["vae_decoder"].sha256 != base.files["vae_decoder"].sha256
    assert weights.is_file()


def test_single_file_vae_in_the_original_layout_exports_the_same_vae(swapped, demo_model, other_vae, tmp_path):
    config = json.loads((other_vae / "config.json").read_text())
    file = tmp_path / "vae-ft-test-original.safetensors"
    save_file(
        original_vae_weights(load_file(str(other_vae / "diffusion_pytorch_model.safetensors")), config), str(file)
    )
    out = tmp_path / "art"
    export_model(demo_model, out, _config(), source=SourceOptions(vae=file))
    manifest, dir_swap = read_manifest(out), read_manifest(swapped)
    for name in ("vae_decoder", "vae_encoder", "unet"):
        assert manifest.files[name].sha256 == dir_swap.files[name].sha256, name
    assert manifest.vae == {"name": file.name, "sha256": file_sha256(file)}


def test_a_vae_that_does_not_fit_is_refused(demo_model, sdxl_model, tmp_path):
    with pytest.raises(ValueError, match="does not fit this model's VAE"):
        save_file({"encoder.conv_in.weight": torch.zeros(8, 3, 3, 3)}, str(tmp_path / "bad.safetensors"))
        export_model(demo_model, tmp_path / "out", _config(), source=SourceOptions(vae=tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="VAE .* does not exist"):
        export_model(demo_model, tmp_path / "out", _config(), source=SourceOptions(vae=tmp_path / "missing"))
    assert not (tmp_path / "out").exists()


def _config():
    from sdrt.export import ExportConfig

    return ExportConfig(max_batch=RANGES.max_batch, min_size=RANGES.min_size, max_size=RANGES.max_size, opt_size=128)
