"""/sdapi/v1/embeddings, /loras and /sd-vae list what the pipeline loaded, in the web UI's shapes."""

from __future__ import annotations

import hashlib

import httpx
import torch
from safetensors.torch import save_file

from sdrt import Pipeline
from sdrt.serve import ServeConfig, create_app
from tests.conditioning.test_embeddings import write_sd_embeddings
from tests.conftest import RANGES
from tests.serve.conftest import running


def test_listings(demo_model, tmp_path):
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


def test_hypernetworks_listing_refreshes_and_the_infotext_round_trip(demo_model, tmp_path):
    """New files are used after POST /refresh-*, without a restart; /png-info reads the hashes back."""
    import shutil

    from tests.hypernetwork_files import write_hypernetwork

    dirs = {name: tmp_path / name for name in ("embeddings", "loras", "hypernetworks")}
    for directory in dirs.values():
        directory.mkdir()
    write_hypernetwork(dirs["hypernetworks"] / "ink.pt", [32, 64], seed=1)
    pipe = Pipeline.load(
        demo_model, backend="torch", ranges=RANGES, embeddings_dir=dirs["embeddings"], lora_dir=dirs["loras"],
        hypernetwork_dir=dirs["hypernetworks"],
    )  # fmt: skip
    body = {"prompt": "a castle, webstyle <lora:plain:0.5> <hypernet:late:0.6>", "steps": 2, "width": 64, "height": 64}
    with running(create_app(pipe, ServeConfig(max_wait_ms=10))) as url:
        api = f"{url}/sdapi/v1"
        assert httpx.get(f"{api}/hypernetworks").json() == [{"name": "ink", "path": "ink.pt"}]
        refused = httpx.post(f"{api}/txt2img", json=body)
        assert refused.status_code == 422 and "LoRA 'plain' is not in" in refused.text
        # files that arrive while the server runs
        write_sd_embeddings(dirs["embeddings"])
        key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
        tensors = {f"{key}.lora_down.weight": torch.ones(4, 32) * 0.1, f"{key}.lora_up.weight": torch.ones(32, 4) * 0.1}
        save_file(tensors, str(dirs["loras"] / "plain.safetensors"))
        shutil.copy(dirs["hypernetworks"] / "ink.pt", dirs["hypernetworks"] / "late.pt")
        assert httpx.get(f"{api}/hypernetworks").json() == [{"name": "ink", "path": "ink.pt"}]
        for what in ("embeddings", "loras", "hypernetworks"):
            response = httpx.post(f"{api}/refresh-{what}")
            assert response.status_code == 200 and response.json() is None
        assert [h["name"] for h in httpx.get(f"{api}/hypernetworks").json()] == ["ink", "late"]
        assert [lora["name"] for lora in httpx.get(f"{api}/loras").json()] == ["plain"]
        assert "webstyle" in httpx.get(f"{api}/embeddings").json()["loaded"]
        done = httpx.post(f"{api}/txt2img", json=body, timeout=120)
        assert done.status_code == 200, done.text
        read = httpx.post(f"{api}/png-info", json={"image": done.json()["images"][0]}).json()["parameters"]
    digest = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in (*dirs["embeddings"].iterdir(), *dirs["hypernetworks"].iterdir())
    }
    lora = (dirs["loras"] / "plain.safetensors").read_bytes()
    addnet = hashlib.sha256(lora[8 + int.from_bytes(lora[:8], "little") :]).hexdigest()
    assert read["Lora hashes"] == f"plain: {addnet[:12]}"
    assert read["TI hashes"] == f"webstyle: {digest['webstyle.pt'][:12]}"
    assert (read["Hypernet"], read["Hypernet hash"], read["Hypernet strength"]) == (
        "late",
        digest["late.pt"][:10],
        "0.6",
    )
    assert read["Prompt"] == body["prompt"]
