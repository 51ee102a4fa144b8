"""The ControlNets a pipeline's requests may name, loaded on first use and checked to fit its base model.

A unit names a ControlNet artifact (from `sdrt export CONTROLNET_DIR`) by its directory, or by its name in the
pipeline's `controlnet_dir`; on the torch backend also a diffusers ControlNet directory. It is loaded with the
pipeline's backend, device and options and kept. It fits the base model when its residual outputs are the base
UNet's residual inputs (names, channels, sizes) and it reads the UNet's text states and added vectors as they
are; anything else is a clear error before any engine runs.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sdrt.components import CONTROLNET
from sdrt.engines import load_engines
from sdrt.engines.base import Engine
from sdrt.manifest import MANIFEST_NAME, Manifest, read_manifest
from sdrt.model_dir import ModelDir
from sdrt.runtime.control_residuals import ControlNetEngine
from sdrt.runtime.model import Model
from sdrt.spec import ComponentSpec


@dataclass(frozen=True)
class LoadedControlNet:
    """A ControlNet artifact (or model directory) loaded: its manifest and its engine as the wrapper runs it."""

    path: Path
    manifest: Manifest
    run: ControlNetEngine

    @property
    def name(self) -> str:
        return self.path.resolve().name

    @property
    def short_hash(self) -> str:
        """The web UI extension's model hash: the first 8 hex digits of the weights' sha256."""
        return self.manifest.source_sha256[:8]


class ControlNetLibrary:
    """ControlNets by name: an artifact directory, or a subdirectory of `directory`; loaded once, kept."""

    def __init__(
        self,
        base: Model,
        directory: str | os.PathLike | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.base = base
        self.directory = None if directory is None else Path(directory)
        if self.directory is not None and not self.directory.is_dir():
            raise ValueError(f"ControlNet directory {self.directory} does not exist or is not a directory")
        self.options = dict(options or {})  # the pipeline's backend options (dtype, cache_dir, ...)
        self._loaded: dict[Path, LoadedControlNet] = {}
        self._lock = threading.Lock()  # a server checks requests in threads while the engine runs

    def names(self) -> list[str]:
        """The ControlNet artifacts in `directory`, by name."""
        if self.directory is None:
            return []
        return sorted(p.name for p in self.directory.iterdir() if p.is_dir() and _is_controlnet(p, self.base.backend))

    def labels(self) -> list[str]:
        """The ControlNets in `directory` as the web UI extension lists them: "name [hash]" (sha256's first 8)."""
        out = []
        for name in self.names():
            path = self.directory / name  # type: ignore[operator]  # names() is empty without a directory
            if (path / MANIFEST_NAME).is_file():
                digest = read_manifest(path).source_sha256
            else:
                digest = ModelDir.open(path).weights_sha256()
            out.append(f"{name} [{digest[:8]}]")
        return out

    def resolve(self, name: str) -> Path:
        """The directory a unit's model names; ValueError listing what there is instead."""
        path = Path(name)
        if path.is_dir():
            return path
        stem = name.split(" [", 1)[0].strip()  # the extension writes "name [hash]"
        if self.directory is not None and (self.directory / stem).is_dir():
            return self.directory / stem
        known = ", ".join(self.names()) or "none"
        where = f"in {self.directory} (it has: {known})" if self.directory is not None else "(no controlnet_dir given)"
        raise ValueError(f"ControlNet {name!r} is neither a directory nor a ControlNet {where}")

    def get(self, name: str) -> LoadedControlNet:
        """The ControlNet `name` names, loaded and checked to fit the base model."""
        path = self.resolve(name).resolve()
        with self._lock:
            if path not in self._loaded:
                self._loaded[path] = self._load(path)
            return self._loaded[path]

    def wrap(self, name: str, wrapper: Callable[[Engine], Engine]) -> None:
        """Load the ControlNet `name` names and run its engine through `wrapper` from now on (timing, tracing)."""
        loaded = self.get(name)
        with self._lock:
            run = replace(loaded.run, engine=wrapper(loaded.run.engine))
            self._loaded[loaded.path] = replace(loaded, run=run)

    def _load(self, path: Path) -> LoadedControlNet:
        base = self.base
        modules = None
        if (path / MANIFEST_NAME).is_file():
            manifest = read_manifest(path)
        else:
            model = ModelDir.open(path)  # a diffusers ControlNet directory (the torch backend runs it)
            manifest = Manifest.for_model(model, base.manifest.ranges)
            modules = model.load_modules
        if manifest.family != CONTROLNET:
            raise ValueError(f"{path} is a {manifest.model_family.description}, not a ControlNet")
        spec = manifest.components[CONTROLNET]
        check_fits(spec, manifest, base)
        engines = load_engines(path, manifest, base.backend, str(base.device), modules=modules, **self.options)
        run = ControlNetEngine(
            name=path.name,
            engine=engines[CONTROLNET],
            residuals=tuple(spec.output_names),
            row_inputs=("encoder_hidden_states", *spec.attributes.get("added_cond", ())),
            global_pool=bool(manifest.extras["global_pool_conditions"]),
        )
        return LoadedControlNet(path, manifest, run)


def check_fits(spec: ComponentSpec, manifest: Manifest, base: Model) -> None:
    """ValueError unless a ControlNet's residuals are the base UNet's residual inputs and it reads the UNet's feeds."""
    unet = base.denoiser.spec
    made_for = (
        f"made for {', '.join(manifest.extras['fits'])} models with {manifest.extras['cross_attention_dim']}-wide text"
    )
    residuals = [t for t in unet.inputs if t.name in unet.attributes.get("residuals", ())]
    if not residuals:
        raise ValueError(
            f"this {base.family.description}'s UNet takes no ControlNet residuals (its artifact predates them, or "
            f"its family has no ControlNets); the ControlNet was {made_for}"
        )
    if list(spec.outputs) != residuals:
        raise ValueError(
            f"the ControlNet ({made_for}) does not fit this {base.family.description}: its residuals "
            f"{[(t.name, t.shape[1]) for t in spec.outputs][:3]}... are not the UNet's "
            f"{[(t.name, t.shape[1]) for t in residuals][:3]}..."
        )
    unet_inputs = {t.name: t for t in unet.inputs}
    for name in ("encoder_hidden_states", *spec.attributes.get("added_cond", ())):
        ours = next(t for t in spec.inputs if t.name == name)
        if name not in unet_inputs or unet_inputs[name].shape != ours.shape:
            theirs = unet_inputs[name].shape if name in unet_inputs else "none"
            raise ValueError(
                f"the ControlNet ({made_for}) reads {name} of shape {list(ours.shape)}; this "
                f"{base.family.description}'s UNet has {theirs}"
            )


def _is_controlnet(path: Path, backend: str | None) -> bool:
    """True for a ControlNet artifact directory (or, on the torch backend, a diffusers ControlNet directory)."""
    manifest = path / MANIFEST_NAME
    if manifest.is_file():
        try:
            import json

            return json.loads(manifest.read_text()).get("family") == CONTROLNET
        except (ValueError, OSError):
            return False
    if backend == "torch" and (path / "config.json").is_file():
        try:
            import json

            return json.loads((path / "config.json").read_text()).get("_class_name") == "ControlNetModel"
        except (ValueError, OSError):
            return False
    return False
