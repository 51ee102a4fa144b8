"""LoRA per request: `<lora:name:weight>` fuses for that request only, equal to diffusers' load_lora_weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdrt import Pipeline
from sdrt.cli import main
from sdrt.manifest import read_manifest
from tests.conftest import RANGES
from tests.runtime.compare import HEIGHT, STEPS, WIDTH, assert_images_close
from tests.test_lora import KOHYA_LAYERS, lora_factors, write_kohya_lora

SIZE_STEPS = {"height": HEIGHT, "width": WIDTH, "num_inference_steps": STEPS}


def _small(factors, scale=0.05):
    """Factors scaled down to a trained LoRA's size, so the image changes without saturating."""
    return {k: (d * scale, u * scale, a) for k, (d, u, a) in factors.items()}


@pytest.fixture(scope="module")
def lora_dir(demo_model, tmp_path_factory):
    from sdrt.model_dir import ModelDir

    model = ModelDir.open(demo_model)
    modules = {"text_encoder": model.load_part("text_encoder"), "unet": model.load_part("unet")}
    directory = tmp_path_factory.mktemp("loras")
    write_kohya_lora(directory / "style.safetensors", _small(lora_factors(modules, seed=1)))
    layers = [layer for layer in KOHYA_LAYERS if layer[1] == "unet"]  # a LoCon (conv layer) on the UNet alone
    write_kohya_lora(directory / "detail.safetensors", _small(lora_factors(modules, seed=2, layers=layers)))
    return directory


@pytest.fixture(scope="module")
def lora_pipe(demo_model, lora_dir):
    return Pipeline.load(demo_model, backend="torch", ranges=RANGES, lora_dir=lora_dir)


@pytest.fixture(scope="module")
def diffusers_lora(demo_model, lora_dir):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(demo_model, safety_checker=None, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(lora_dir / "style.safetensors"), adapter_name="style")
    pipe.load_lora_weights(str(lora_dir / "detail.safetensors"), adapter_name="detail")
    return pipe


def _theirs(pipe, adapters, weights, prompt, seed):
    pipe.set_adapters(adapters, weights)
    return pipe(prompt, **SIZE_STEPS, generator=[torch.Generator("cpu").manual_seed(seed)]).images


def test_one_lora_in_the_prompt_matches_diffusers(lora_pipe, diffusers_lora):
    ours = lora_pipe.generate("a cat on a table <lora:style:0.7>", **SIZE_STEPS, seed=3)
    assert_images_close(ours.images, _theirs(diffusers_lora, ["style", "detail"], [0.7, 0.0], "a cat on a table", 3))
    assert ours.parameters[0].startswith("a cat on a table <lora:style:0.7>")  # the infotext keeps the tag


def test_two_loras_add_up_as_diffusers_adds_them(lora_pipe, diffusers_lora):
    ours = lora_pipe.generate(
        "a cat <lora:style:0.5> <lora:detail:1.5>", negative_prompt="blurry", **SIZE_STEPS, seed=4
    )
    diffusers_lora.set_adapters(["style", "detail"], [0.5, 1.5])
    theirs = diffusers_lora(
        "a cat  ", negative_prompt="blurry", **SIZE_STEPS, generator=[torch.Generator("cpu").manual_seed(4)]
    ).images
    assert_images_close(ours.images, theirs)


def test_requests_with_other_loras_batch_apart_and_each_equals_its_solo_image(lora_pipe):
    pipe = lora_pipe
    kwargs = {**SIZE_STEPS, "negative_prompt": "blurry", "scheduler": "euler_a"}  # test_batching's settings
    with_a = [pipe.request(p + " <lora:style:0.8>", seed=i, **kwargs) for i, p in enumerate(["a cat", "a dog"])]
    with_b = pipe.request("a cat <lora:detail>", seed=0, **kwargs)
    plain = pipe.request("a cat", seed=0, **kwargs)
    assert pipe.batch_key(with_a[0]) == pipe.batch_key(with_a[1])
    assert len({pipe.batch_key(r) for r in (with_a[0], with_b, plain)}) == 3
    with pytest.raises(ValueError, match="equal batch_key"):
        pipe.run_batch([with_a[0], with_b])
    solo = {id(r): np.asarray(pipe.run(r).images[0]) for r in (*with_a, with_b, plain)}
    batched = pipe.run_batch(with_a)  # after b and plain ran: switching back is exact
    for request, result in zip(with_a, batched, strict=True):
        assert np.abs(np.asarray(result.images[0], dtype=np.int16) - solo[id(request)]).max() <= 1
    assert np.array_equal(np.asarray(pipe.run(plain).images[0]), solo[id(plain)])
    assert not np.array_equal(solo[id(with_a[0])], solo[id(plain)])
    assert not np.array_equal(solo[id(with_b)], solo[id(plain)])


def test_unknown_names_and_missing_directory_are_request_errors(lora_pipe, pipelines):
    with pytest.raises(ValueError, match=r"LoRA 'nope' is not in .* \(it has: detail, style\)"):
        lora_pipe.request("a cat <lora:nope:1>")
    with pytest.raises(ValueError, match="loaded without a LoRA directory"):
        pipelines["torch"].request("a cat <lora:style:1>")


def test_onnxruntime_answers_each_lora_request_with_how_to_fuse_at_export(artifact, lora_dir):
    pipe = Pipeline.load(artifact, backend="onnxruntime", lora_dir=lora_dir)
    with pytest.raises(
        ValueError, match=r"weights baked in: fuse the LoRA at export instead \(sdrt export MODEL --lora"
    ):
        pipe.request("a cat <lora:style:0.7>", height=64, width=64, num_inference_steps=2)
    assert pipe.generate("a cat", height=64, width=64, num_inference_steps=1, seed=1).images  # the rest still runs


def test_lora_fused_at_export_runs_on_onnxruntime_as_per_request_on_torch(demo_model, lora_dir, lora_pipe, tmp_path):
    out = tmp_path / "art"
    argv = ["export", str(demo_model), "-o", str(out), "--max-batch", "2", "--min-size", "64", "--max-size", "256",
            "--opt-size", "128", "--lora", f"{lora_dir / 'style.safetensors'}:0.7"]  # fmt: skip
    assert main(argv) == 0
    manifest = read_manifest(out)
    assert [(lora["name"], lora["weight"]) for lora in manifest.loras] == [("style.safetensors", 0.7)]
    fused = Pipeline.load(out, backend="onnxruntime").generate("a cat on a table", **SIZE_STEPS, seed=3)
    per_request = lora_pipe.generate("a cat on a table <lora:style:0.7>", **SIZE_STEPS, seed=3)
    assert_images_close(fused.images, per_request.images)


def test_sdxl_kohya_lora_with_sgm_block_names_matches_diffusers(sdxl_model, tmp_path):
    """lora_te1_ / lora_te2_ text-encoder keys and an sgm-named UNet block (input_blocks.4.1 = down_blocks.1...)."""
    from diffusers import StableDiffusionXLPipeline

    from sdrt.model_dir import ModelDir

    model = ModelDir.open(sdxl_model)
    modules = {n: model.load_part(n) for n in ("text_encoder", "text_encoder_2", "unet")}
    attention = [f"encoder.layers.0.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "out_proj")]
    layers = [
        ("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q", "unet",
         "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", None),
        ("lora_unet_output_blocks_0_1_transformer_blocks_1_attn2_to_v", "unet",
         "up_blocks.0.attentions.0.transformer_blocks.1.attn2.to_v", None),
        *[(f"lora_te1_text_model_{p.replace('.', '_')}", "text_encoder", p, None) for p in attention],
        *[(f"lora_te2_text_model_{p.replace('.', '_')}", "text_encoder_2", "text_model." + p, None) for p in attention],
    ]  # fmt: skip
    directory = tmp_path / "loras"
    directory.mkdir()
    write_kohya_lora(directory / "xl.safetensors", _small(lora_factors(modules, seed=5, layers=layers), 0.2))
    pipe = Pipeline.load(sdxl_model, backend="torch", ranges=RANGES, lora_dir=directory)
    ours = pipe.generate("a lighthouse <lora:xl:0.9>", **SIZE_STEPS, seed=6)
    plain = pipe.generate("a lighthouse", **SIZE_STEPS, seed=6)
    theirs_pipe = StableDiffusionXLPipeline.from_pretrained(sdxl_model, local_files_only=True)
    theirs_pipe.set_progress_bar_config(disable=True)
    theirs_pipe.load_lora_weights(str(directory / "xl.safetensors"), adapter_name="xl")
    theirs_pipe.set_adapters(["xl"], [0.9])
    theirs = theirs_pipe("a lighthouse ", **SIZE_STEPS, generator=[torch.Generator("cpu").manual_seed(6)]).images
    assert_images_close(ours.images, theirs)
    assert not np.array_equal(np.asarray(ours.images[0]), np.asarray(plain.images[0]))
