"""The web UI's embedding images: the data in a PNG text chunk or hidden in the pixels, written here as its
definition writes them, read as the embedding files they stand for; preview pictures passed over, hostile images
refused naming the file; `TI hashes` in the infotext."""

from __future__ import annotations

import base64
import hashlib
import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from PIL.PngImagePlugin import PngInfo

from sdrt import Pipeline
from sdrt.conditioning.embedding_images import lcg_nibbles
from sdrt.conditioning.embeddings import EmbeddingLibrary
from tests.conditioning.test_embeddings import write_sd_embeddings
from tests.conftest import RANGES
from tests.runtime.compare import HEIGHT, STEPS, WIDTH

SIZE_STEPS = {"height": HEIGHT, "width": WIDTH, "num_inference_steps": STEPS}


# --- the web UI's writer, from its definition --------------------------------------------------------------------


def _json(data: dict) -> str:
    def encode(value):
        if isinstance(value, torch.Tensor):
            return {"TORCHTENSOR": value.detach().cpu().numpy().tolist()}
        raise TypeError(type(value))

    return json.dumps(data, default=encode)


def _lcg(count: int) -> np.ndarray:
    """x <- (1664525 x + 1013904223) mod 2^32 from 0, each value mod 255: one value at a time, as defined."""
    out, seed = [], 0
    for _ in range(count):
        seed = (1664525 * seed + 1013904223) % 2**32
        out.append(seed % 255)
    return np.array(out, dtype=np.uint8)


def _style(block: np.ndarray, shades) -> np.ndarray:
    """The web UI's pattern over a block's high nibbles: rows of small ellipses in the embedding's shades."""
    image = Image.new("RGB", (block.shape[1], block.shape[0]))
    draw, i = ImageDraw.Draw(image), 0
    for x in range(-6, image.size[0], 8):
        for yi, y in enumerate(range(-6, image.size[1], 8)):
            offset = 4 if yi % 2 == 0 else 0
            shade = int(shades[i % len(shades)])
            i += 1
            draw.ellipse((x + offset, y, x + 6 + offset, y + 6), fill=(shade, shade, shade))
    return block ^ (np.array(image).astype(np.uint8) & 0xF0)


def hide_in_pixels(picture: Image.Image, data: dict) -> Image.Image:
    """The web UI's insert_image_data_embed: compressed JSON split into nibbles, in two blocks beside the picture."""
    packed = np.frombuffer(zlib.compress(_json(data).encode(), level=9), np.uint8).copy()
    h, depth = picture.size[1], 3
    size = packed.shape[0] + (h - packed.shape[0] % h)
    size = size + (h * depth - size % (h * depth))
    low = np.resize(packed & 0x0F, size).reshape((h, -1, depth))
    high = np.resize(packed >> 4, size).reshape((h, -1, depth))
    first = next(iter(data["string_to_param"].values()))[0].detach().numpy()[:1024]
    shades = (np.abs(first) / np.abs(first).max() * 255).astype(np.uint8)
    noise = _lcg(low.size).reshape(low.shape) & 0x0F
    low = _style(low, shades) ^ noise
    high = _style(high, shades[::-1]) ^ noise
    blocks = [Image.fromarray(low.astype(np.uint8), "RGB"), Image.fromarray(high.astype(np.uint8), "RGB")]
    out = Image.new("RGB", (picture.size[0] + blocks[0].size[0] + blocks[1].size[0] + 2, h), (0, 0, 0))
    out.paste(blocks[0], (0, 0))
    out.paste(picture, (blocks[0].size[0] + 1, 0))
    out.paste(blocks[1], (blocks[0].size[0] + 1 + picture.size[0] + 1, 0))
    return out


def _picture(size=96) -> Image.Image:
    g = np.random.default_rng(0)
    return Image.fromarray((g.random((size, size, 3)) * 200 + 30).astype(np.uint8), "RGB")


def _data(pt: Path) -> dict:
    return torch.load(pt, weights_only=True)


def write_image_embeddings(directory: Path, source: Path) -> Path:
    """webstyle's .pt as a PNG with a text chunk, and as pixel-hidden PNG and lossless WebP under other file names."""
    directory.mkdir(parents=True, exist_ok=True)
    data = _data(source)
    info = PngInfo()
    info.add_text("sd-ti-embedding", base64.b64encode(_json(data).encode()).decode())
    _picture().save(directory / "chunked.png", pnginfo=info)
    hidden = hide_in_pixels(_picture(), {**data, "name": "pixelstyle"})
    hidden.save(directory / "pixels.png")
    hidden_webp = hide_in_pixels(_picture(), {**data, "name": "webpstyle"})
    hidden_webp.save(directory / "pixels.webp", lossless=True)
    _picture(32).save(directory / "chunked.preview.png")  # the web UI's preview pictures
    _picture(32).save(directory / "just-a-picture.png")
    return directory


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    source = write_sd_embeddings(tmp_path_factory.mktemp("pt"))
    return source, write_image_embeddings(tmp_path_factory.mktemp("images"), source / "webstyle.pt")


def test_the_sequence_in_strides_is_the_definitions():
    assert np.array_equal(lcg_nibbles(10_000), _lcg(10_000))
    # the web UI's own check: its first values
    assert lcg_nibbles(5).tolist() == [253, 242, 127, 44, 157]


def test_image_embeddings_read_as_the_file_they_stand_for(dirs):
    source, images = dirs
    library = EmbeddingLibrary.load(images)
    # named by the name their data records (the text chunk's: "webstyle"), previews and plain pictures passed over
    assert set(library.loaded) == {"webstyle", "pixelstyle", "webpstyle"} and not library.skipped
    reference = EmbeddingLibrary.load(source).loaded["webstyle"]
    for name in library.loaded:
        embedding = library.loaded[name]
        assert torch.equal(embedding.vectors[""], reference.vectors[""]), name
        assert (embedding.step, embedding.sd_checkpoint) == (1500, "0123456789")


def test_image_embeddings_give_the_pt_files_images_and_ti_hashes(demo_model, dirs, tmp_path):
    source, images = dirs
    from_pt = Pipeline.load(demo_model, backend="torch", ranges=RANGES, embeddings_dir=source)
    from_images = Pipeline.load(demo_model, backend="torch", ranges=RANGES, embeddings_dir=images)
    ours = from_images.generate("a castle, pixelstyle", negative_prompt="webpstyle", **SIZE_STEPS, seed=2)
    theirs = from_pt.generate("a castle, webstyle", negative_prompt="webstyle", **SIZE_STEPS, seed=2)
    assert np.array_equal(np.asarray(ours.images[0]), np.asarray(theirs.images[0]))
    digest = {
        p: hashlib.sha256(p.read_bytes()).hexdigest()[:12] for p in (images / "pixels.png", images / "pixels.webp")
    }
    assert (
        f'TI hashes: "pixelstyle: {digest[images / "pixels.png"]}, webpstyle: {digest[images / "pixels.webp"]}"'
        in (ours.parameters[0])
    )
    assert "TI hashes" not in from_images.generate("a castle", **SIZE_STEPS, seed=2).parameters[0]


def test_hostile_images_are_skipped_naming_the_reason(tmp_path):
    directory = tmp_path / "embeddings"
    directory.mkdir()
    info = PngInfo()
    info.add_text("sd-ti-embedding", "this is not base64!")
    _picture(16).save(directory / "garbage.png", pnginfo=info)
    bomb = {"string_to_param": {"*": torch.ones(1, 32)}, "pad": "0" * 80_000_000}  # inflates to 80 MB
    hide_in_pixels(_picture(64), bomb).save(directory / "bomb.png")
    info = PngInfo()
    info.add_text(
        "sd-ti-embedding", base64.b64encode(b'{"string_to_param": {"*": {"TORCHTENSOR": [[1, [2]]]}}}').decode()
    )
    _picture(16).save(directory / "ragged.png", pnginfo=info)
    (directory / "truncated.png").write_bytes((directory / "garbage.png").read_bytes()[:60])
    library = EmbeddingLibrary.load(directory)
    assert not library.loaded
    assert "text is not base64" in library.skipped["garbage.png"]
    assert "inflates past" in library.skipped["bomb.png"]
    assert "not a rectangle of numbers" in library.skipped["ragged.png"]
    assert "cannot be read as an image" in library.skipped["truncated.png"]
