"""One loaded model: an artifact (or a model directory) with its family, engines, tokenizers, scheduler config."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from sdrt.components import TILING, TILING_ROLES
from sdrt.conditioning.embedders import Conditioner, ConditioningContext
from sdrt.conditioning.embeddings import EmbeddingLibrary
from sdrt.conditioning.prompts import PromptEncoder, load_tokenizer, tokenizer_key
from sdrt.deep_cache_unet import PARTS, DeepCacheUNetModule, deep_cache_specs, network_name
from sdrt.engines import Engine, check_device, load_engines
from sdrt.engines.base import Circular
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
        self.vae_tiling = vae_tiling  # large images decode and encode in tiles (runtime.vae_tiles)
        self.engines = self._wrapped_vae(dict(engines))
        self._tiling: dict[str, Engine] | None = None  # seamless tiling's engines, made on first use
        self.load_tiling: Callable[[], Mapping[str, Engine]] | None = None  # loads an artifact's tiling graphs
        self.tokenizers = dict(tokenizers)  # support part -> (tokenizer, key)
        self.scheduler_config = dict(scheduler_config)
        make_scheduler(None, self.scheduler_config)  # a bad config fails here, not at the first generation
        self.name = name  # shown in infotexts
        self.path = path  # where it was loaded from
        self.backend = backend
        self.token_tables = dict(token_tables)  # text-encoder network -> (vocab, D) token table
        self.options: dict[str, Any] = {}  # backend options it was loaded with
        self.engines_seconds = 0.0  # wall time its engines took to load: verified, built where missing, opened
        self._deep_cache: dict[int, tuple[Engine, Engine]] = {}  # branch -> DeepCache's full and shallow engines
        # an artifact's DeepCache graphs of a branch (`sdrt export --deep-cache`) -> their engines, by name
        self.load_deep_cache: Callable[[int], Mapping[str, Engine]] | None = None
        self.use_embeddings(embeddings or EmbeddingLibrary())

    def use_embeddings(self, embeddings: EmbeddingLibrary) -> None:
        """Make prompts read these textual-inversion embeddings (new encoders and conditioner, swapped in at once:
        a pass already running keeps the ones it started with)."""
        widths = {
            p.network: int(self.engines[p.network].spec.attributes["hidden_size"]) for p in self.family.text_encoders
        }
        encoders = {}
        for pair in self.family.text_encoders:
            tokenizer, key = self.tokenizers[pair.tokenizer]
            table = self.token_tables[pair.network]
            vocabulary = embeddings.vocabulary(tokenizer, pair.network, widths, table.shape[0])
            encoders[pair.network] = PromptEncoder(tokenizer, key, self.engines, pair.network, table, vocabulary)
        support = {} if self.path is None else {p.name: Path(self.path) / p.name for p in self.family.support_parts}
        context = ConditioningContext(encoders, self.engines, self.manifest.extras, support)
        conditioner = Conditioner(self.family.embedders(context))
        self.embeddings, self.encoders, self.conditioner = embeddings, encoders, conditioner

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
            factor = model.latent_factor
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
        if not family.network_names or family.modes == ():
            raise ValueError(
                f"{root} is a {family.description}, which steers a base model: load the base model and name it in "
                "control=[...]"
            )
        tokenizers = {
            pair.tokenizer: (load_tokenizer(root / pair.tokenizer), tokenizer_key(root / pair.tokenizer))
            for pair in family.text_encoders
        }
        scheduler_config = read_json_object(root / SCHEDULER_DIR / "scheduler_config.json")
        started = time.perf_counter()
        engines = load_engines(root, manifest, backend, device, modules=modules, **options)
        engines_seconds = time.perf_counter() - started
        tables = {p.network: _token_table(root, manifest, engines, p.network) for p in family.text_encoders}
        model = cls(
            manifest, engines, tokenizers, scheduler_config, tables, name=Path(os.path.abspath(root)).name, path=root,
            backend=backend, embeddings=embeddings, vae_tiling=vae_tiling,
        )  # fmt: skip
        if TILING in manifest.variants:  # seamless tiling's graphs, loaded on the first request that asks
            model.load_tiling = lambda: load_engines(root, manifest.variant(TILING), backend, device, **options)
        if modules is None:  # an artifact: DeepCache runs its exported graphs, loaded on the first request that asks
            model.load_deep_cache = lambda branch: load_engines(
                root, manifest.deep_cache_networks(branch), backend, device, **options
            )
        model.options = dict(options)  # the backend options it was loaded with (ControlNets load with the same)
        model.engines_seconds = engines_seconds
        return model

    def _wrapped_vae(self, engines: dict[str, Engine]) -> dict[str, Engine]:
        """`engines` with the VAE decoder guarded against fp16 overflow and both VAE halves tiled when large."""
        decoder = engines[self.family.vae_decoder]
        if not isinstance(decoder, (VaeDecoderGuard, TiledVae)):  # NaN/Inf from fp16: decode again in float32
            decoder = VaeDecoderGuard(decoder, fallback=getattr(decoder, "float32_copy", None))
        for name in (self.family.vae_decoder, self.family.vae_encoder):
            engine = decoder if name == self.family.vae_decoder else engines.get(name)
            if engine is not None:
                inner = engine.inner if isinstance(engine, TiledVae) else engine
                engines[name] = TiledVae(inner, self.vae_tiling)
        return engines

    def check_tiling(self) -> None:
        """ValueError unless this model can run seamless tiling (an artifact needs `sdrt export --tiling`)."""
        if self._tiling is not None or all(isinstance(self._raw(n), Circular) for n in self._tiling_networks()):
            return
        if self.load_tiling is None or TILING not in self.manifest.variants:
            raise ValueError(
                f"tiling needs circular-padding graphs, which this artifact ({self.name}) does not have: export it "
                "again with --tiling (sdrt export --tiling), or run the model directory on the torch backend"
            )

    def engines_for(self, tiling: bool) -> dict[str, Engine]:
        """The engines a request runs: these, or with `tiling` the UNet's and VAE's circular-padding twins."""
        if not tiling:
            return self.engines
        if self._tiling is None:
            self.check_tiling()
            names = self._tiling_networks()
            if all(isinstance(self._raw(n), Circular) for n in names):
                twins: Mapping[str, Engine] = {n: self._raw(n).circular() for n in names}  # type: ignore[union-attr]
            else:
                twins = self.load_tiling()  # type: ignore[misc]  # check_tiling made sure there is a loader
            self._tiling = self._wrapped_vae({**self.engines, **twins})
        return self._tiling

    def _tiling_networks(self) -> list[str]:
        return [n for n, e in self.engines.items() if e.spec.role in TILING_ROLES]

    def _raw(self, name: str) -> Engine:
        """The backend's engine of network `name`, without the runtime's VAE wrappers."""
        engine = self.engines[name]
        while isinstance(engine, (TiledVae, VaeDecoderGuard)):
            engine = engine.inner if isinstance(engine, TiledVae) else engine.decoder
        return engine

    @property
    def denoiser(self) -> Engine:
        return self.engines[self.family.denoiser]

    @property
    def device(self):
        return self.denoiser.device

    @property
    def latent_channels(self) -> int:
        return int(self.engines[self.family.vae_decoder].spec.attributes["latent_channels"])

    def deep_cache_engines(self, branch: int) -> tuple[Engine, Engine]:
        """DeepCache's full and shallow UNet networks for `branch` (`sdrt.deep_cache_unet`), made once.

        The torch backend runs them on the UNet's own module (its weights and LoRAs shared); the other backends
        load the artifact's graphs of the branch (`sdrt export --deep-cache BRANCH`). ValueError for a branch the
        UNet or the artifact has not.
        """
        if branch not in self._deep_cache:
            engine = self.denoiser
            module = getattr(getattr(engine, "module", None), "unet", None)
            sibling = getattr(engine, "sibling", None)
            if module is None or sibling is None:
                if self.load_deep_cache is None:
                    raise ValueError(
                        f"the {self.backend} backend runs DeepCache from an artifact's exported graphs (sdrt export "
                        f"--deep-cache {branch}), and this model was not loaded from one; use the torch backend"
                    )
                engines = self.load_deep_cache(branch)
                parts = [network_name(self.family.denoiser, part, branch) for part in PARTS]
                self._deep_cache[branch] = (engines[parts[0]], engines[parts[1]])
                return self._deep_cache[branch]
            config = dict(module.config)
            full, shallow = deep_cache_specs(engine.spec, config, branch)
            self._deep_cache[branch] = (
                sibling(DeepCacheUNetModule(module, full, config), full),
                sibling(DeepCacheUNetModule(module, shallow, config), shallow),
            )
        return self._deep_cache[branch]

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
