"""One loaded model: an artifact (or a model directory) with its family, engines, tokenizers, scheduler config."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from sdrt.components import latent_factor
from sdrt.conditioning.embedders import Conditioner, ConditioningContext
from sdrt.conditioning.embeddings import EmbeddingLibrary
from sdrt.conditioning.prompts import PromptEncoder, load_tokenizer, tokenizer_key
from sdrt.engines import Engine, check_device, load_engines
from sdrt.families import Family
from sdrt.files import read_json_object
from sdrt.manifest import MANIFEST_NAME, Manifest, read_manifest
from sdrt.model_dir import ModelDir
from sdrt.runtime.vae_guard import VaeDecoderGuard
from sdrt.runtime.vae_tiles import TiledVae
from sdrt.schedulers import make_scheduler
from sdrt.spec import ShapeRanges

SCHEDULER_DIR = "scheduler"


class Model:
    """A model's engines and what drives them, described by its family; the pipeline runs one or two of these."""

    def __init__(
        self,
        manifest: Manifest,
        engines: Mapping[str, Engine],
        tokenizers: Mapping[str, tuple[Any, str]],
        scheduler_config: Mapping[str, Any],
        token_tables: Mapping[str, torch.Tensor],
        name: str = "model",
        path: Path | None = None,
        backend: str | None = None,
        embeddings: EmbeddingLibrary | None = None,
        vae_tiling: str = "auto",
    ) -> None:
        self.manifest = manifest
        self.family: Family = manifest.model_family
        self.engines = dict(engines)
        decoder = self.engines[self.family.vae_decoder]
        if not isinstance(decoder, (VaeDecoderGuard, TiledVae)):  # NaN/Inf from fp16: decode again in float32
            decoder = VaeDecoderGuard(decoder, fallback=getattr(decoder, "float32_copy", None))
        self.vae_tiling = vae_tiling  # large images decode and encode in tiles (runtime.vae_tiles)
        for name in (self.family.vae_decoder, self.family.vae_encoder):
            engine = decoder if name == self.family.vae_decoder else self.engines.get(name)
            if engine is not None:
                inner = engine.inner if isinstance(engine, TiledVae) else engine
                self.engines[name] = TiledVae(inner, vae_tiling)
        self.tokenizers = dict(tokenizers)  # support part -> (tokenizer, key)
        self.scheduler_config = dict(scheduler_config)
        make_scheduler(None, self.scheduler_config)  # a bad config fails here, not at the first generation
        self.name = name  # shown in infotexts
        self.path = path  # where it was loaded from
        self.backend = backend
        self.token_tables = dict(token_tables)  # text-encoder network -> (vocab, D) token table
        self.embeddings = embeddings or EmbeddingLibrary()
        widths = {
            p.network: int(self.engines[p.network].spec.attributes["hidden_size"]) for p in self.family.text_encoders
        }
        self.encoders = {}
        for pair in self.family.text_encoders:
            tokenizer, key = self.tokenizers[pair.tokenizer]
            table = self.token_tables[pair.network]
            vocabulary = self.embeddings.vocabulary(tokenizer, pair.network, widths, table.shape[0])
            self.encoders[pair.network] = PromptEncoder(tokenizer, key, self.engines, pair.network, table, vocabulary)
        support = {} if path is None else {p.name: Path(path) / p.name for p in self.family.support_parts}
        context = ConditioningContext(self.encoders, self.engines, self.manifest.extras, support)
        self.conditioner = Conditioner(self.family.embedders(context))

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        backend: str = "onnxruntime",
        device: str = "cpu",
        ranges: ShapeRanges | None = None,
        embeddings: EmbeddingLibrary | None = None,
        vae_tiling: str = "auto",
        **options: Any,
    ) -> Model:
        """Load an artifact (from `sdrt export`) or, for the torch backend, a diffusers model directory.

        `embeddings` are the textual-inversion embeddings its prompts may name; `vae_tiling` says when the VAE runs
        in tiles ("auto": large images, "on": as diffusers' enable_tiling, "off").
        """
        root = Path(path)
        check_device(device)
        modules = None  # a model directory's torch modules, for a backend that runs them
        if (root / MANIFEST_NAME).is_file():
            manifest = read_manifest(root)
        elif (root / "model_index.json").is_file():
            model = ModelDir.open(root)
            factor = latent_factor(model.configs["vae"])
            manifest = Manifest.for_model(
                model, ranges or ShapeRanges(max_batch=8, min_size=64, max_size=4096, latent_factor=factor)
            )
            modules = model.load_modules
        else:
            raise ValueError(
                f"{root} is neither an sdrt artifact (no {MANIFEST_NAME}) nor a diffusers model directory "
                "(no model_index.json)"
            )
        family = manifest.model_family
        tokenizers = {
            pair.tokenizer: (load_tokenizer(root / pair.tokenizer), tokenizer_key(root / pair.tokenizer))
            for pair in family.text_encoders
        }
        scheduler_config = read_json_object(root / SCHEDULER_DIR / "scheduler_config.json")
        engines = load_engines(root, manifest, backend, device, modules=modules, **options)
        tables = {p.network: _token_table(root, manifest, engines, p.network) for p in family.text_encoders}
        return cls(
            manifest, engines, tokenizers, scheduler_config, tables, name=root.resolve().name, path=root,
            backend=backend, embeddings=embeddings, vae_tiling=vae_tiling,
        )  # fmt: skip

    @property
    def denoiser(self) -> Engine:
        return self.engines[self.family.denoiser]

    @property
    def device(self):
        return self.denoiser.device

    @property
    def latent_channels(self) -> int:
        return int(self.engines[self.family.vae_decoder].spec.attributes["latent_channels"])

    def prompt_encoder(self, network: str) -> PromptEncoder:
        """The tokenizer and engine of text-encoder network `network`."""
        return self.encoders[network]

    def tokenizer_keys(self) -> dict[str, PromptEncoder]:
        """Tokenizer key -> an encoder using that tokenizer (requests carry tokens under these keys)."""
        return {e.key: e for e in self.encoders.values()}


def _token_table(root: Path, manifest: Manifest, engines: Mapping[str, Engine], network: str) -> torch.Tensor:
    """A text encoder's token table: the artifact's file, or (a model directory) its torch module's embedding."""
    if network in manifest.token_tables:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = root / manifest.token_tables[network].path
        try:
            return load_file(str(path))["weight"]
        except (SafetensorError, OSError, KeyError) as exc:
            raise ValueError(f"token table {path} cannot be read ({exc!r}); re-export the model") from exc
    module = getattr(engines[network], "module", None)  # the torch backend runs the module itself
    if module is None or not hasattr(module, "token_table"):
        raise ValueError(f"{root} gives no token table for {network}: re-export the model with this sdrt")
    return module.token_table().detach().float()
