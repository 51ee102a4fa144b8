"""Textual inversion without a re-export: images match diffusers' load_textual_inversion on the same files."""

from __future__ import annotations

import hashlib
import logging
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sdrt import Pipeline
from sdrt.conditioning.embeddings import EmbeddingLibrary
from sdrt.conditioning.prompts import tokenize_prompt
from tests.conftest import BACKENDS, RANGES
from tests.runtime.compare import HEIGHT, STEPS, WIDTH, assert_images_close

SIZE_STEPS = {"height": HEIGHT, "width": WIDTH, "num_inference_steps": STEPS}
PROMPT = "a photo of webstyle castle on a hill, multivec"
NEGATIVE = "blurry, onevec"


def _vectors(seed: int, n: int, width: int) -> torch.Tensor:
    # a trained embedding lives among the vocabulary's vectors: a few times their scale
    return 0.05 * torch.randn((n, width), generator=torch.Generator().manual_seed(seed))


def write_sd_embeddings(directory: Path, width: int = 32) -> Path:
    """The web UI's .pt (one vector), its .safetensors (emb_params, three vectors), diffusers' .bin (one)."""
    directory.mkdir(parents=True, exist_ok=True)
    web_ui = {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": _vectors(1, 1, width).requires_grad_()},
        "name": "webstyle",
        "step": 1500,
        "sd_checkpoint": "0123456789",
        "sd_checkpoint_name": "demo",
    }
    torch.save(web_ui, directory / "webstyle.pt")
    save_file({"emb_params": _vectors(2, 3, width)}, str(directory / "multivec.safetensors"))
    torch.save({"<onevec>": _vectors(3, 1, width)[0]}, directory / "onevec.bin")
    return directory


class _WritesMarker:
    """Unpickling this runs code that writes a file: what a malicious embedding would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def write_malicious_pickles(directory: Path, marker: Path) -> list[Path]:
    """A torch .pt and a bare pickle .bin whose loading would write `marker`."""
    directory.mkdir(parents=True, exist_ok=True)
    torch_file = directory / "evil.pt"
    torch.save({"string_to_param": {"*": _WritesMarker(marker)}}, torch_file)
    bare = directory / "evil2.bin"
    bare.write_bytes(pickle.dumps({"x": _WritesMarker(marker)}))
    return [torch_file, bare]


@pytest.fixture(scope="module")
def embeddings_dir(tmp_path_factory) -> Path:
    return write_sd_embeddings(tmp_path_factory.mktemp("embeddings"))


@pytest.fixture(scope="module")
def ti_pipelines(demo_model, artifact, embeddings_dir) -> dict:
    return {
        "torch": Pipeline.load(demo_model, backend="torch", ranges=RANGES, embeddings_dir=embeddings_dir),
        "onnxruntime": Pipeline.load(artifact, backend="onnxruntime", embeddings_dir=embeddings_dir),
    }


@pytest.fixture(scope="module")
def diffusers_ti(demo_model, embeddings_dir):
    """diffusers' own pipeline with the same three files loaded by load_textual_inversion, under their stems."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(demo_model, safety_checker=None, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    for name in ("webstyle.pt", "multivec.safetensors", "onevec.bin"):
        pipe.load_textual_inversion(str(embeddings_dir / name), token=Path(name).stem)
    return pipe


def _generators(seed: int) -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(seed)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_embeddings_in_prompt_and_negative_match_diffusers(ti_pipelines, diffusers_ti, backend):
    """Web UI .pt (one vector), .safetensors (three), diffusers .bin (one); in the prompt and the negative prompt."""
    ours = ti_pipelines[backend].generate(PROMPT, negative_prompt=NEGATIVE, **SIZE_STEPS, seed=5, guidance_scale=7.5)
    theirs = diffusers_ti(
        PROMPT, negative_prompt=NEGATIVE, **SIZE_STEPS, guidance_scale=7.5, generator=_generators(5)
    ).images
    assert_images_close(ours.images, theirs)


def test_embeddings_change_the_image(ti_pipelines, pipelines):
    """The same prompt without the embeddings loaded reads the names as text: a different image."""
    import numpy as np

    with_ti = ti_pipelines["onnxruntime"].generate(PROMPT, **SIZE_STEPS, seed=5).images[0]
    without = pipelines["onnxruntime"].generate(PROMPT, **SIZE_STEPS, seed=5).images[0]
    assert np.abs(np.asarray(with_ti, dtype=np.int16) - np.asarray(without, dtype=np.int16)).max() > 10


def test_multi_vector_embedding_fills_its_positions_and_moves_to_the_next_chunk(ti_pipelines):
    encoder = ti_pipelines["onnxruntime"].model.prompt_encoder("text_encoder")
    vocab = encoder.vocabulary
    base = encoder.engine.spec.attributes["vocab_size"]
    (prompt,) = (p.at(0) for p in encoder.tokenize(["a multivec castle"]))  # no prompt editing: one part
    plain = tokenize_prompt(encoder.tokenizer, "a castle")
    ids = prompt.ids[0]
    assert ids[1] == plain.ids[0][1] and ids[5] == plain.ids[0][2]  # a, (three vectors), castle
    assert all(i >= base for i in ids[2:5]) and prompt.num_tokens == 5
    torch.testing.assert_close(encoder.table[list(ids[2:5])], vocab.vectors[[i - base for i in ids[2:5]]])
    # 74 words then a 3-vector embedding: it does not fit the first chunk, so it starts the second
    (long_,) = (p.at(0) for p in encoder.tokenize([" ".join(["castle"] * 74) + " multivec"]))
    assert long_.num_chunks == 2 and all(i >= base for i in long_.ids[1][1:4])


def test_embeddings_list_what_the_web_ui_lists(ti_pipelines, embeddings_dir):
    library = ti_pipelines["onnxruntime"].model.embeddings
    assert set(library.loaded) == {"webstyle", "multivec", "onevec"} and not library.skipped
    web = library.loaded["webstyle"]
    assert (web.step, web.sd_checkpoint, web.sd_checkpoint_name, web.shape, web.num_vectors) == (
        1500, "0123456789", "demo", 32, 1,
    )  # fmt: skip
    assert library.loaded["multivec"].num_vectors == 3


def _tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def test_loading_embeddings_changes_no_artifact_file(artifact, embeddings_dir, pipelines):
    before = _tree_hashes(artifact)  # the session's pipelines built the onnxruntime engines already
    pipe = Pipeline.load(artifact, backend="onnxruntime", embeddings_dir=embeddings_dir)
    pipe.generate(PROMPT, height=64, width=64, num_inference_steps=2, seed=1)
    assert _tree_hashes(artifact) == before


def test_malicious_pickles_are_skipped_never_run(artifact, tmp_path, caplog):
    marker = tmp_path / "marker"
    directory = write_sd_embeddings(tmp_path / "embeddings")
    evil = write_malicious_pickles(directory, marker)
    with caplog.at_level(logging.WARNING, logger="sdrt"):
        pipe = Pipeline.load(artifact, backend="onnxruntime", embeddings_dir=directory)
    assert not marker.exists()
    skipped = pipe.model.embeddings.skipped
    assert set(skipped) == {p.name for p in evil} and "webstyle" in pipe.model.embeddings.loaded
    for path in evil:
        assert "needs code to unpickle, which sdrt never runs" in skipped[path.name]
        assert any(str(path) in r.getMessage() for r in caplog.records)
    pipe.generate("a photo of evil", height=64, width=64, num_inference_steps=1, seed=1)
    assert not marker.exists()


def test_unreadable_and_odd_files_are_skipped_with_the_reason(tmp_path):
    directory = tmp_path / "e"
    directory.mkdir()
    (directory / "broken.safetensors").write_bytes(b"not safetensors")
    save_file({"a": torch.zeros(2, 4), "b": torch.zeros(2, 4)}, str(directory / "two.safetensors"))
    save_file({"clip_l": torch.zeros(1, 4), "clip_g": torch.zeros(2, 8)}, str(directory / "uneven.safetensors"))
    library = EmbeddingLibrary.load(directory)
    assert not library.loaded
    assert "not a readable safetensors file" in library.skipped["broken.safetensors"]
    assert "no embedding tensor found" in library.skipped["two.safetensors"]
    assert "different numbers of vectors" in library.skipped["uneven.safetensors"]
    with pytest.raises(ValueError, match="embeddings directory .* does not exist"):
        EmbeddingLibrary.load(tmp_path / "missing")


def test_sdxl_clip_l_and_clip_g_embedding_matches_diffusers(sdxl_model, sdxl_artifact, tmp_path):
    """An SDXL embedding: clip_l vectors for the first encoder, clip_g for the second; diffusers loads each."""
    from diffusers import StableDiffusionXLPipeline

    directory = tmp_path / "xl"
    directory.mkdir()
    save_file({"clip_l": _vectors(7, 2, 32), "clip_g": _vectors(8, 2, 32)}, str(directory / "xlstyle.safetensors"))
    ours = Pipeline.load(sdxl_artifact, backend="onnxruntime", embeddings_dir=directory)
    prompt = "a xlstyle lighthouse at dusk"
    image = ours.generate(prompt, negative_prompt="xlstyle", **SIZE_STEPS, seed=3).images
    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl_model, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    from safetensors.torch import load_file

    state = load_file(str(directory / "xlstyle.safetensors"))
    pipe.load_textual_inversion(
        state["clip_l"], token="xlstyle", text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer
    )
    pipe.load_textual_inversion(
        state["clip_g"], token="xlstyle", text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2
    )
    theirs = pipe(prompt, negative_prompt="xlstyle", **SIZE_STEPS, guidance_scale=5.0, generator=_generators(3)).images
    assert_images_close(image, theirs)
