"""/sdapi/v1/embeddings, /loras and /sd-vae list what the pipeline loaded, in the web UI's shapes."""

from __future__ import annotations

import httpx
from safetensors.torch import save_file

from sdrt import Pipeline
from sdrt.serve import ServeConfig, create_app
from tests.conditioning.test_embeddings import write_sd_embeddings
from tests.conftest import RANGES
from tests.serve.conftest import running


def test_listings(demo_model, tmp_path):
    import torch

    embeddings = write_sd_embeddings(tmp_path / "embeddings")
    (embeddings / "broken.safetensors").write_bytes(b"nope")
    loras = tmp_path / "loras"
    (loras / "styles").mkdir(parents=True)
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    tensors = {f"{key}.lora_down.weight": torch.zeros(4, 32), f"{key}.lora_up.weight": torch.zeros(32, 4)}
    save_file(tensors, str(loras / "styles" / "ink.safetensors"), metadata={"ss_output_name": "ink-v2"})
    save_file(tensors, str(loras / "plain.safetensors"))
    pipe = Pipeline.load(demo_model, backend="torch", ranges=RANGES, embeddings_dir=embeddings, lora_dir=loras)
    with running(create_app(pipe, ServeConfig(max_wait_ms=10))) as url:
        listed = httpx.get(f"{url}/sdapi/v1/embeddings").json()
        assert set(listed["loaded"]) == {"webstyle", "multivec", "onevec"}
        assert listed["loaded"]["webstyle"] == {
            "step": 1500, "sd_checkpoint": "0123456789", "sd_checkpoint_name": "demo", "shape": 32, "vectors": 1,
        }  # fmt: skip
        assert listed["loaded"]["multivec"]["vectors"] == 3
        assert "not a readable safetensors file" in listed["skipped"]["broken.safetensors"]["reason"]
        assert httpx.get(f"{url}/sdapi/v1/loras").json() == [
            {
                "name": "ink",
                "alias": "ink-v2",
                "path": "styles/ink.safetensors",
                "metadata": {"ss_output_name": "ink-v2"},
            },
            {"name": "plain", "alias": "plain", "path": "plain.safetensors", "metadata": {}},
        ]
        assert httpx.get(f"{url}/sdapi/v1/sd-vae").json() == []  # the model's own VAE: nothing swapped in


def test_sd_vae_lists_the_swapped_vae(artifact, tmp_path):
    import json
    import shutil

    copy = tmp_path / "art"
    shutil.copytree(artifact, copy, ignore=shutil.ignore_patterns("engines"))
    data = json.loads((copy / "manifest.json").read_text())
    data["vae"] = {"name": "vae-ft-mse-840000-ema-pruned.safetensors", "sha256": "0" * 64}
    (copy / "manifest.json").write_text(json.dumps(data))
    with running(create_app(Pipeline.load(copy, backend="onnxruntime"), ServeConfig(max_wait_ms=10))) as url:
        assert httpx.get(f"{url}/sdapi/v1/sd-vae").json() == [
            {"model_name": "vae-ft-mse-840000-ema-pruned.safetensors",
             "filename": "vae-ft-mse-840000-ema-pruned.safetensors"},
        ]  # fmt: skip
