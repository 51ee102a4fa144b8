"""What a server serves: a catalog of models, how one loads, and how many may be loaded at once.

`sdrt serve ART [ART...]` or `--model-dir DIR` makes a `ModelSet`; a server around one pipeline already
loaded (the tests, the Python API) makes a `ModelSet.single`. The server keeps the loaded ones in a
`ModelPool` and runs each as a `Served`: its pipeline and its lane in the batcher.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdrt.families import family_named
from sdrt.runtime.pipeline import Pipeline
from sdrt.serve.batcher import Lane
from sdrt.serve.catalog import CatalogEntry, ModelCatalog, describe

DEFAULT_MAX_LOADED = 1  # the web UI's default too (sd_checkpoints_limit)


@dataclass(frozen=True)
class ModelSet:
    """The models a server may serve and how it loads them."""

    catalog: ModelCatalog  # what exists, by name; the first is the default
    load: Callable[[CatalogEntry], Pipeline]  # loads one (in a worker thread)
    max_loaded: int = DEFAULT_MAX_LOADED  # most models loaded at once
    max_bytes: int | None = None  # most bytes of weights loaded at once (None: no bound but the count)
    preload: bool = True  # load the default model before /ready; False: every model loads when first asked for
    refiner_bytes: int = 0  # bytes a model loaded with the refiner counts for beyond its own
    refined_families: frozenset[str] = frozenset()  # families that load with the refiner

    def __post_init__(self) -> None:
        if isinstance(self.max_loaded, bool) or self.max_loaded < 1:
            raise ValueError(f"max_loaded_models {self.max_loaded} must be at least 1")
        if self.max_bytes is not None and self.max_bytes < 1:
            raise ValueError(f"max_model_memory {self.max_bytes} bytes must be positive")

    def cost(self, entry: CatalogEntry) -> int:
        """Bytes a loaded `entry` is counted for: its weights, and the refiner's when it loads with one."""
        return entry.weight_bytes + (self.refiner_bytes if entry.family in self.refined_families else 0)

    @classmethod
    def single(cls, pipeline: Pipeline) -> ModelSet:
        """One pipeline, already loaded: the only model, never loaded again."""
        entry = CatalogEntry(
            name=pipeline.model_name,
            path=pipeline.path or Path(pipeline.model_name),
            sha256=pipeline.manifest.source_sha256,
            family=pipeline.family.name,
        )
        return cls(ModelCatalog.of([entry]), lambda _: pipeline)

    @classmethod
    def from_paths(
        cls,
        paths: Sequence[str | os.PathLike] = (),
        model_dir: str | os.PathLike | None = None,
        backend: str = "onnxruntime",
        device: str = "cpu",
        refiner: str | os.PathLike | None = None,
        max_loaded: int = DEFAULT_MAX_LOADED,
        max_bytes: int | None = None,
        preload: bool = True,
        **load_options: Any,
    ) -> ModelSet:
        """Artifacts (the first is the default) and a directory of them, loaded by `Pipeline.load` with
        `load_options`; an SDXL `refiner` loads with every model of a family it refines."""
        catalog = ModelCatalog(paths, model_dir)
        refined: frozenset[str] = frozenset()
        refiner_bytes = 0
        if refiner is not None:
            described = describe(refiner)
            if described.error is not None:
                raise ValueError(f"refiner {refiner}: {described.error}")
            refiner_bytes = described.weight_bytes
            refined = frozenset(
                e.family for e in catalog.servable() if described.family in family_named(e.family).refiners
            )
            if not refined:
                families = sorted({e.family for e in catalog.servable()})
                raise ValueError(f"refiner {refiner} ({described.family}) refines none of the models ({families})")

        def load(entry: CatalogEntry) -> Pipeline:
            with_refiner = refiner if entry.family in refined else None
            return Pipeline.load(entry.path, backend=backend, device=device, refiner=with_refiner, **load_options)

        return cls(catalog, load, max_loaded, max_bytes, preload, refiner_bytes, refined)


@dataclass(frozen=True, eq=False)
class Served:
    """A loaded model as the server runs it: its catalog entry, its pipeline and its lane in the batcher."""

    entry: CatalogEntry
    pipeline: Pipeline
    lane: Lane

    @property
    def name(self) -> str:
        return self.entry.name
