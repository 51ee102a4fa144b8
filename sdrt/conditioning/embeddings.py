"""Textual-inversion embeddings: read from a directory, matched in prompts by name, looked up without a re-export.

Every file in the directory is one embedding named after its file stem, as the web UI names them: the
web UI's `.pt` (`string_to_param`), `.safetensors` or `.bin` holding one tensor or `emb_params`, SDXL's
`clip_l` / `clip_g` pairs, and the web UI's embedding images (`.png`, `.webp`: the data in a text chunk or
hidden in the pixels, `sdrt.conditioning.embedding_images`), named by the name their data records; an image
that carries no embedding is a preview picture and is passed over. Each holds one or more vectors; where a
prompt's token ids contain the ids of an embedding's name, the vectors take their place
(`EmbeddingVocabulary`), as the web UI matches them. The vectors extend the model's token table past the
vocabulary, so the text-encoder engine, which starts after the lookup, never changes. Pickled files load with
torch's weights-only loader only: a file that needs code to unpickle is skipped with a warning naming it,
never run.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sdrt.conditioning.embedding_images import IMAGE_SUFFIXES, read_embedding_image
from sdrt.hashing import file_sha256
from sdrt.weights_io import load_pickle_weights_only

log = logging.getLogger(__name__)

SUFFIXES = (".pt", ".bin", ".safetensors", *IMAGE_SUFFIXES)
# SDXL embeddings hold one tensor per text encoder, under these keys (the web UI's and diffusers' names)
SDXL_KEYS = {"clip_l": "text_encoder", "clip_g": "text_encoder_2"}
SINGLE = ""  # the key of a file's one tensor, for models with one text encoder


@dataclass(frozen=True)
class Embedding:
    """One textual-inversion embedding: its vectors per text encoder, and what the file says about its training."""

    name: str  # the file stem: the word prompts use
    path: Path
    vectors: Mapping[str, torch.Tensor]  # SINGLE, or "clip_l" / "clip_g" -> (N, D) float32
    step: int | None = None  # training step, when the file records it (web UI .pt)
    sd_checkpoint: str | None = None  # hash of the checkpoint it was trained on (web UI .pt)
    sd_checkpoint_name: str | None = None  # that checkpoint's name

    @property
    def short_hash(self) -> str:
        """The web UI's short hash of the embedding's file (the first 12 hex digits of its sha256), for `TI hashes`."""
        return file_sha256(self.path)[:12]

    @property
    def num_vectors(self) -> int:
        return next(iter(self.vectors.values())).shape[0]

    @property
    def shape(self) -> int:
        """Width of its (first) vectors, as the web UI's embeddings list reports it."""
        return next(iter(self.vectors.values())).shape[1]

    def for_networks(self, widths: Mapping[str, int]) -> dict[str, torch.Tensor] | str:
        """Its vectors for each text-encoder network of a model (network -> hidden size), or why it does not fit."""
        if SINGLE in self.vectors:
            if len(widths) != 1:
                return f"one tensor, but the model has {len(widths)} text encoders (SDXL needs clip_l and clip_g)"
            ((network, width),) = widths.items()
            vectors = {network: self.vectors[SINGLE]}
        else:
            vectors = {SDXL_KEYS[k]: v for k, v in self.vectors.items() if SDXL_KEYS[k] in widths}
            missing = sorted(set(widths) - set(vectors))
            if missing:
                return f"no vectors for {', '.join(missing)} (it has {', '.join(sorted(self.vectors))})"
        for network, v in vectors.items():
            if v.shape[1] != widths[network]:
                return f"{v.shape[1]}-wide vectors, but the {network} takes {widths[network]}"
        return vectors


@dataclass(frozen=True)
class EmbeddingLibrary:
    """The embeddings of one directory, read once: those loaded, and why the others were skipped."""

    directory: Path | None = None
    loaded: Mapping[str, Embedding] = field(default_factory=dict)  # by name
    skipped: Mapping[str, str] = field(default_factory=dict)  # file name -> why

    @classmethod
    def load(cls, directory: str | os.PathLike) -> EmbeddingLibrary:
        """Read every embedding file under `directory`; a file that cannot be read is skipped with a warning."""
        root = Path(directory)
        if not root.is_dir():
            raise ValueError(f"embeddings directory {root} does not exist or is not a directory")
        loaded: dict[str, Embedding] = {}
        skipped: dict[str, str] = {}
        for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES):
            rel = str(path.relative_to(root))
            if path.suffix.lower() in IMAGE_SUFFIXES and ".preview" in path.name.lower():
                continue  # the web UI's preview pictures of networks
            try:
                embedding = read_embedding(path)
            except ValueError as exc:
                skipped[rel] = str(exc)
            else:
                if embedding is None:
                    continue  # an image that carries no embedding: a preview picture
                if embedding.name not in loaded:
                    loaded[embedding.name] = embedding
                    continue
                skipped[rel] = f"another file is named {embedding.name} already ({loaded[embedding.name].path.name})"
            log.warning("skipped embedding %s: %s", path, skipped[rel])
        log.info("read %d embeddings from %s", len(loaded), root)
        return cls(root, loaded, skipped)

    def reloaded(self) -> EmbeddingLibrary:
        """The library read again from its directory (new files picked up, changed ones read again)."""
        return self if self.directory is None else EmbeddingLibrary.load(self.directory)

    def vocabulary(self, tokenizer, network: str, widths: Mapping[str, int], base_size: int) -> EmbeddingVocabulary:
        """The embeddings that fit a model with these text encoders, as `network`'s extension of its token table."""
        entries = []
        for embedding in self.loaded.values():
            fits = embedding.for_networks(widths)
            if isinstance(fits, str):
                log.warning(
                    "embedding %s does not fit this model: %s; prompts naming it get its text", embedding.name, fits
                )
                continue
            entries.append((embedding.name, fits[network]))
        return EmbeddingVocabulary(tokenizer, base_size, entries)


class EmbeddingVocabulary:
    """One text encoder's embeddings as ids past its vocabulary: the ids of each name, the vectors replacing them."""

    def __init__(self, tokenizer, base_size: int, entries: Sequence[tuple[str, torch.Tensor]]) -> None:
        self.names = []
        self._spans: list[tuple[int, int, str]] = []  # (first id, id past the last, name) of each embedding
        self._by_first: dict[int, list[tuple[tuple[int, ...], list[int]]]] = {}
        vectors, next_id = [], base_size
        for name, v in entries:
            name_ids = tuple(tokenizer(name, add_special_tokens=False, verbose=False).input_ids)
            if not name_ids:
                continue
            self.names.append((name, v.shape[0]))
            self._spans.append((next_id, next_id + v.shape[0], name))
            self._by_first.setdefault(name_ids[0], []).append((name_ids, list(range(next_id, next_id + v.shape[0]))))
            vectors.append(v.to(torch.float32))
            next_id += v.shape[0]
        for candidates in self._by_first.values():  # the longest name wins where several start alike
            candidates.sort(key=lambda c: -len(c[0]))
        width = entries[0][1].shape[1] if entries else 0
        self.vectors = torch.cat(vectors) if vectors else torch.zeros((0, width))
        # what tokenization depends on: the names, their vector counts, their order
        self.key = hashlib.sha256(repr(self.names).encode()).hexdigest()[:16]

    def __bool__(self) -> bool:
        return bool(self.names)

    def used(self, ids: Iterable[int]) -> list[str]:
        """The names of the embeddings whose vectors' ids appear in `ids`, in order of first use."""
        found: dict[str, None] = {}
        for i in ids:
            if self._spans and i >= self._spans[0][0]:
                found.update({name: None for start, end, name in self._spans if start <= i < end})
        return list(found)

    def match(self, ids: Sequence[int], at: int) -> tuple[int, list[int]] | None:
        """(ids consumed, the embedding's ids) when an embedding's name starts at `ids[at]`, else None."""
        for name_ids, vector_ids in self._by_first.get(ids[at], ()):
            if tuple(ids[at : at + len(name_ids)]) == name_ids:
                return len(name_ids), vector_ids
        return None


def read_embedding(path: Path) -> Embedding | None:
    """One embedding file (None: an image that carries no embedding); ValueError saying why it cannot be used
    (a pickle that needs code included)."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        data = read_embedding_image(path)
        if data is None:
            return None
        name = data.get("name")
        return _embedding(path, data, name if isinstance(name, str) and name.strip() else path.stem)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            data: Any = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise ValueError(f"not a readable safetensors file ({exc})") from exc
    else:
        data = load_pickle_weights_only(path)
    return _embedding(path, data, path.stem)


def _embedding(path: Path, data: Any, name: str) -> Embedding:
    if not isinstance(data, Mapping):
        raise ValueError(f"holds a {type(data).__name__}, not a dictionary of tensors")
    meta: dict[str, Any] = {}
    if "string_to_param" in data:  # the web UI's .pt
        params = data["string_to_param"]
        if not isinstance(params, Mapping) or not params:
            raise ValueError("its string_to_param is not a dictionary of tensors")
        vectors = {SINGLE: params.get("*", next(iter(params.values())))}
        step = data.get("step")
        meta = {
            "step": step if isinstance(step, int) else None,
            "sd_checkpoint": _text(data.get("sd_checkpoint")),
            "sd_checkpoint_name": _text(data.get("sd_checkpoint_name")),
        }
    elif any(k in data for k in SDXL_KEYS):
        vectors = {k: data[k] for k in SDXL_KEYS if k in data}
    elif "emb_params" in data:
        vectors = {SINGLE: data["emb_params"]}
    else:
        tensors = [v for v in data.values() if isinstance(v, torch.Tensor)]
        if len(tensors) != 1:
            raise ValueError(f"no embedding tensor found (keys {sorted(map(str, data))[:5]})")
        vectors = {SINGLE: tensors[0]}
    checked = {}
    for key, v in vectors.items():
        if not isinstance(v, torch.Tensor) or not v.is_floating_point() or v.dim() not in (1, 2) or v.numel() == 0:
            raise ValueError(f"its {key or 'tensor'} is not a 1-D or 2-D float tensor")
        if not torch.isfinite(v).all():
            raise ValueError(f"its {key or 'tensor'} has non-finite values (NaN or infinity)")
        checked[key] = v.detach().reshape(-1, v.shape[-1]).to(torch.float32)
    if len({v.shape[0] for v in checked.values()}) > 1:
        raise ValueError("its clip_l and clip_g hold different numbers of vectors")
    return Embedding(name=name, path=path, vectors=checked, **meta)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None
