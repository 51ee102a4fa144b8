"""Single-file checkpoints: found from their keys, converted by diffusers' functions, exported like their directory."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sdrt import Pipeline
from sdrt.cli import main
from sdrt.export import export_model
from sdrt.hashing import file_sha256
from sdrt.manifest import read_manifest
from sdrt.model_dir import ModelDir
from sdrt.model_source import SourceOptions
from sdrt.single_file.checkpoint import (
    CONFIG_DIR,
    choose_config,
    convert_part,
    empty_model,
    model_type,
    plan,
    published_config,
    read_checkpoint,
)
from sdrt.single_file.tokenizer import clip_tokenizer, vocabulary_file
from tests.conftest import RANGES, export, write_model
from tests.single_file.original_layout import diffusers_parts, original_weights, write_checkpoint

PROMPTS = [
    "a photo of an astronaut riding a horse on the moon",
    "Portrait of a woman, (masterpiece:1.2), 8k UHD, trending on ArtStation!!",
    "café naïve résumé, Ünïcödé and   many    spaces\tand tabs",
    "don't stop, it's 4:30pm; we'll see... <lora> [brackets] {braces}",
    "emoji 🙂🚀 and 日本語 text, numbers 1234567890",
    "",
]


def _open_clip_file(name: str) -> Path:
    """A file of the installed open-clip-torch (requirements-nodeps.txt, for these checks), which is never imported."""
    try:
        path = Path(str(importlib.metadata.distribution("open_clip_torch").locate_file(f"open_clip/{name}")))
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("open-clip-torch is not installed (pip install --no-deps -r requirements-nodeps.txt)")
    return path


def test_the_shipped_vocabulary_is_open_clips_file():
    assert vocabulary_file().read_bytes() == _open_clip_file("bpe_simple_vocab_16e6.txt.gz").read_bytes()


def _open_clip_tokenizer():
    """open_clip's own SimpleTokenizer (the tokenizer OpenCLIP and SD 2.x were trained with), loaded from its file."""
    path = _open_clip_file("tokenizer.py")
    spec = importlib.util.spec_from_file_location("open_clip_tokenizer_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SimpleTokenizer()


def test_offline_tokenizer_gives_open_clips_ids_on_the_published_vocabulary():
    reference = _open_clip_tokenizer()
    ours = clip_tokenizer()
    for prompt in PROMPTS:
        assert ours(prompt, add_special_tokens=False).input_ids == reference.encode(prompt), prompt


def test_offline_tokenizer_gives_the_ids_every_sd_user_has_seen():
    ours = clip_tokenizer()
    assert len(ours.get_vocab()) == 49408 and ours.bos_token_id == 49406 and ours.eos_token_id == 49407
    assert ours("a photo of an astronaut riding a horse").input_ids == [
        49406, 320, 1125, 539, 550, 18376, 6765, 320, 4558, 49407,
    ]  # fmt: skip


def test_sd1_and_openclip_tokenizers_differ_only_in_the_pad_token():
    sd1, openclip = clip_tokenizer(), clip_tokenizer("!")
    assert sd1.get_vocab() == openclip.get_vocab() and (sd1.pad_token_id, openclip.pad_token_id) == (49407, 0)
    padded = openclip("a cat", padding="max_length", max_length=8).input_ids
    assert padded == [49406, 320, 2368, 49407, 0, 0, 0, 0]


@pytest.mark.parametrize("variant, family", [("sd1", "sd1"), ("sd2", "sd2"), ("inpaint", "sd1"),
                                             ("sdxl", "sdxl"), ("sdxl-refiner", "sdxl_refiner"),
                                             ("upscaler_x4", "sd2")])  # fmt: skip
def test_diffusers_conversion_of_the_original_layout_gives_the_directorys_weights(tmp_path_factory, variant, family):
    """Every part converted by diffusers' functions equals the diffusers directory's weights exactly."""
    model_dir = write_model(tmp_path_factory, variant, variant=variant)
    parts = diffusers_parts(model_dir)
    original = original_weights(parts, family)
    index = json.loads((model_dir / "model_index.json").read_text())
    for name, (state, config) in parts.items():
        library, cls = index[name]
        converted = convert_part(original, name, library, cls, config)
        assert set(converted) == set(state), name
        for key, value in state.items():
            assert torch.equal(converted[key], value), f"{name}: {key}"


def _model_parts(index: dict) -> list[tuple[str, list[str]]]:
    """The parts with weights a model_index.json names (text encoders, UNet, VAE)."""
    names = ("text_encoder", "text_encoder_2", "unet", "vae")
    return [(part, index[part]) for part in names if part in index and index[part][0] is not None]


def _published_checkpoint(name: str, extra_sd2_layer: bool = False) -> dict[str, torch.Tensor]:
    """A checkpoint of a shipped config's published sizes, on the meta device (names and shapes only)."""
    data = published_config(name)
    family = {"sd15": "sd1", "sd15_inpainting": "sd1", "sdxl_base": "sdxl", "sdxl_inpainting": "sdxl",
              "sdxl_refiner": "sdxl_refiner"}.get(name, "sd2")  # fmt: skip
    parts = {}
    for part, entry in _model_parts(data["model_index"]):
        parts[part] = (empty_model(*entry, data[part]).state_dict(), data[part])
    weights = original_weights(parts, family)
    if extra_sd2_layer:  # OpenCLIP ViT-H has 24 layers; SD 2.x uses 23 and its files carry the 24th
        layer = {k.replace(".resblocks.0.", ".resblocks.23."): v for k, v in weights.items() if ".resblocks.0." in k}
        weights.update(layer)
    return weights


@pytest.mark.parametrize(
    "name, prediction_type",
    [("sd15", None), ("sd15_inpainting", None), ("sd21_768_v", "v_prediction"), ("sd21_512_epsilon", "epsilon"),
     ("sd2_inpainting", None), ("sdxl_base", None), ("sdxl_refiner", None), ("sdxl_inpainting", None),
     ("sd_x4_upscaler", None)],
)  # fmt: skip
def test_published_sizes_are_recognized_and_every_part_fits_its_shipped_config(name, prediction_type):
    """The family from the keys and shapes alone (diffusers' inference), then every part checked against its config."""
    checkpoint = _published_checkpoint(name, extra_sd2_layer=name.startswith("sd2") or name == "sd_x4_upscaler")
    assert choose_config(model_type(checkpoint), prediction_type) == name
    conversion = plan(checkpoint, prediction_type)
    for part, entry in _model_parts(conversion.index):
        convert_part(checkpoint, part, *entry, conversion.configs[part])
    if prediction_type is not None:
        assert conversion.configs["scheduler"]["prediction_type"] == prediction_type


def test_every_shipped_config_is_tested():
    assert {p.stem for p in CONFIG_DIR.glob("*.json")} == {
        "sd15", "sd15_inpainting", "sd21_768_v", "sd21_512_epsilon", "sd2_inpainting", "sdxl_base", "sdxl_refiner",
        "sdxl_inpainting", "sd_x4_upscaler", "controlnet_sd15", "controlnet_sd21",  # controlnet_*: test_controlnet_file
    }  # fmt: skip


def test_sd2_without_a_prediction_type_is_ambiguous():
    checkpoint = _published_checkpoint("sd21_768_v")
    with pytest.raises(ValueError, match="SD 2.x files do not record what their UNet predicts.*--prediction-type"):
        plan(checkpoint)


def test_what_is_not_a_stable_diffusion_checkpoint_is_refused(tmp_path):
    save_file({"encoder.conv_in.weight": torch.zeros(2, 3, 3, 3)}, str(tmp_path / "vae.safetensors"))
    with pytest.raises(ValueError, match="no UNet in the original layout.*not a full Stable Diffusion checkpoint"):
        export_model(tmp_path / "vae.safetensors", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def sd1_checkpoint(demo_model, tmp_path_factory) -> Path:
    return write_checkpoint(demo_model, tmp_path_factory.mktemp("ckpt") / "demo.safetensors", "sd1")


def test_a_checkpoint_of_other_sizes_needs_its_config(sd1_checkpoint, tmp_path):
    with pytest.raises(ValueError, match=r"fit no published Stable Diffusion .* architecture.*--config DIR"):
        export_model(sd1_checkpoint, tmp_path / "out")
    # a checkpoint with the published blocks but other widths: taken for SD 1.5, refused part by part
    widths = {k: v[..., :1] if v.dim() else v for k, v in _published_checkpoint("sd15").items()}
    with pytest.raises(ValueError, match=r"taken for Stable Diffusion 1.5 .* does not fit the architecture.*--config"):
        plan_and_convert(widths)


def plan_and_convert(checkpoint) -> None:
    """What export does with a checkpoint, without writing: plan, then convert and check every part."""
    from sdrt.single_file.checkpoint import write_diffusers_dir

    conversion = plan(checkpoint)
    write_diffusers_dir(checkpoint, conversion, Path("/nonexistent-never-written"), "the checkpoint")


def _same_export(ours: Path, theirs: Path) -> None:
    a, b = read_manifest(ours), read_manifest(theirs)
    assert a.family == b.family and set(a.files) == set(b.files)
    for name in a.files:
        assert a.files[name].sha256 == b.files[name].sha256, name
    for name in a.token_tables:
        assert a.token_tables[name].sha256 == b.token_tables[name].sha256, name
    assert (a.extras, a.prediction_type, a.inpainting) == (b.extras, b.prediction_type, b.inpainting)


def _same_images(ours: Path, theirs: Path, **kwargs) -> None:
    settings = {"height": 64, "width": 72, "num_inference_steps": 3, "seed": 9, **kwargs}
    a = Pipeline.load(ours, backend="onnxruntime").generate("a castle on a hill", **settings).images
    b = Pipeline.load(theirs, backend="onnxruntime").generate("a castle on a hill", **settings).images
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b, strict=True))


def test_sd1_checkpoint_exports_what_its_directory_exports(sd1_checkpoint, demo_model, artifact, tmp_path):
    """`sdrt export FILE --config DIR`: the same graphs and token table bit for bit, the same images."""
    out = tmp_path / "from-file"
    argv = ["export", str(sd1_checkpoint), "-o", str(out), "--config", str(demo_model), "--max-batch", "2",
            "--min-size", "64", "--max-size", "256", "--opt-size", "128"]  # fmt: skip
    assert main(argv) == 0
    _same_export(out, artifact)
    assert read_manifest(out).source_sha256 == file_sha256(sd1_checkpoint)  # the web UI's model hash
    _same_images(out, artifact)


def test_inpainting_checkpoint_exports_what_its_directory_exports(inpaint_model, tmp_path_factory, tmp_path):
    from PIL import Image

    file = write_checkpoint(inpaint_model, tmp_path / "inpaint.safetensors", "sd1")
    theirs = export(inpaint_model, tmp_path_factory, "inpaint-dir")
    ours = tmp_path / "inpaint-file"
    export_model(file, ours, _export_config(), source=SourceOptions(config_dir=inpaint_model))
    _same_export(ours, theirs)
    assert read_manifest(ours).inpainting
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 72, 3), dtype=np.uint8))
    mask = Image.fromarray(np.where(np.arange(72)[None, :].repeat(64, 0) > 30, 255, 0).astype(np.uint8))
    _same_images(ours, theirs, image=image, mask_image=mask)


def test_sdxl_checkpoint_exports_what_its_directory_exports(sdxl_model, sdxl_artifact, tmp_path):
    file = write_checkpoint(sdxl_model, tmp_path / "sdxl.safetensors", "sdxl")
    ours = tmp_path / "sdxl-file"
    export_model(file, ours, _export_config(), source=SourceOptions(config_dir=sdxl_model))
    _same_export(ours, sdxl_artifact)
    _same_images(ours, sdxl_artifact)


def test_x4_upscaler_checkpoint_exports_what_its_directory_exports(x4_model, x4_artifact, tmp_path):
    """x4-upscaler-ema.safetensors' layout: the low-res scheduler and max_noise_level come from the configs."""
    from PIL import Image

    file = write_checkpoint(x4_model, tmp_path / "x4.safetensors", "sd2")
    ours = tmp_path / "x4-file"
    export_model(file, ours, _export_config(), source=SourceOptions(config_dir=x4_model))
    _same_export(ours, x4_artifact)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 20, 3), dtype=np.uint8))
    _same_images(ours, x4_artifact, image=image, height=64, width=80)
    assert read_manifest(ours).extras == {"max_noise_level": 350}


def _export_config():
    from sdrt.export import ExportConfig

    return ExportConfig(max_batch=RANGES.max_batch, min_size=RANGES.min_size, max_size=RANGES.max_size, opt_size=128)


def test_pickled_checkpoint_is_refused_unless_allowed_then_read_weights_only(sd1_checkpoint, demo_model, tmp_path):
    from safetensors.torch import load_file

    ckpt = tmp_path / "demo.ckpt"
    torch.save({"state_dict": load_file(str(sd1_checkpoint)), "global_step": 470000}, ckpt)
    with pytest.raises(ValueError, match=r"is a pickle \(\.ckpt\).*--allow-pickle.*weights-only"):
        export_model(ckpt, tmp_path / "out")
    with pytest.raises(ValueError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.ckpt")
    read = read_checkpoint(ckpt, allow_pickle=True)
    direct = read_checkpoint(sd1_checkpoint)
    assert set(read) == set(direct) and all(torch.equal(read[k], direct[k]) for k in direct)


class _WritesMarker:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


@pytest.mark.parametrize("allow_pickle", [False, True])
def test_malicious_ckpt_never_runs(tmp_path, allow_pickle):
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"state_dict": {"model.diffusion_model.x": _WritesMarker(marker)}}))
    message = "needs code to unpickle, which sdrt never runs" if allow_pickle else "is a pickle"
    with pytest.raises(ValueError, match=message):
        export_model(evil, tmp_path / "out", source=SourceOptions(allow_pickle=allow_pickle))
    assert not marker.exists() and not (tmp_path / "out").exists()
    argv = ["export", str(evil), "-o", str(tmp_path / "out2"), *(["--allow-pickle"] if allow_pickle else [])]
    assert main(argv) == 2
    assert not marker.exists()


def test_single_file_options_are_refused_for_a_directory(demo_model, tmp_path):
    with pytest.raises(ValueError, match="describe a single-file checkpoint"):
        export_model(demo_model, tmp_path / "out", source=SourceOptions(prediction_type="epsilon"))
    with pytest.raises(ValueError, match="prediction_type 'x' is not one of epsilon, v_prediction"):
        SourceOptions(prediction_type="x")


def test_converted_directory_opens_as_the_family_describes(sd1_checkpoint, demo_model):
    from sdrt.conditioning.prompts import load_tokenizer
    from sdrt.model_source import open_model

    with open_model(sd1_checkpoint, SourceOptions(config_dir=demo_model)) as model:
        assert model.family.name == "sd1" and model.weights_sha256() == file_sha256(sd1_checkpoint)
        ids = load_tokenizer(model.path / "tokenizer")("a castle").input_ids
        assert ids == load_tokenizer(demo_model / "tokenizer")("a castle").input_ids  # copied from the config dir
        assert ModelDir.open(model.path).configs["unet"] == ModelDir.open(demo_model).configs["unet"]
        converted = model.path
    assert not converted.exists()  # the temporary directory goes with the block
