"""Export a whole diffusers model directory to an sdrt artifact, atomically."""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import onnx
import torch
from tqdm.auto import tqdm

from sdrt.components import TILING, TILING_ROLES
from sdrt.deep_cache_unet import SUFFIX, DeepCacheUNetModule, branch_of, deep_cache_specs
from sdrt.engines.base import circular_padding
from sdrt.export.disk import check_free_space, export_size
from sdrt.export.fp16 import PRECISIONS, convert_component
from sdrt.export.onnx_export import export_component
from sdrt.export.shared_weights import SharedWeights
from sdrt.files import atomic_directory
from sdrt.hashing import file_sha256
from sdrt.manifest import DEEP_CACHE_DATA_FILE, TOKEN_TABLE_FILE, DataFile, Manifest, write_manifest
from sdrt.model_dir import ModelDir
from sdrt.model_source import SourceOptions, open_model
from sdrt.onnx_files import OnnxFile
from sdrt.spec import ComponentSpec, ShapeRanges
from sdrt.versions import library_versions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportConfig:
    """What to export: the shapes the artifact must support, the ONNX opset and the precision of each network."""

    max_batch: int = 4  # most images per engine call (the UNet's batch axis goes to twice this)
    min_size: int = 256  # smallest image height/width in pixels
    max_size: int = 1024  # largest image height/width in pixels
    opt_size: int | None = None  # size engines are tuned for; default the model's native size clamped into the range
    max_text_chunks: int = 4  # most 75-token prompt chunks the UNet accepts (longer prompts need more)
    opset: int = 17  # ONNX opset (17 or newer)
    precision: str = "fp32"  # text encoder and UNet: fp32, or fp16 (weights and math; graph IO stays float32)
    # VAE decoder and encoder: fp32 (cannot overflow), or fp16 (fine for SD 1.x/2.x VAEs; SDXL's overflows)
    vae_precision: str = "fp32"
    tiling: bool = False  # also export the UNet and VAE with circular padding, for seamless tiling (`tiling=True`)
    # DeepCache branch ids to export the UNet's full and shallow graphs for (`deep_cache=DeepCache(n, branch)`)
    deep_cache: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for name in ("precision", "vae_precision"):
            if getattr(self, name) not in PRECISIONS:
                raise ValueError(f"{name} {getattr(self, name)!r} is not one of {', '.join(PRECISIONS)}")
        if self.opset < 17:
            raise ValueError(f"opset {self.opset} is too old; use 17 or newer")
        if self.max_batch < 1:
            raise ValueError(f"max_batch {self.max_batch} must be at least 1")
        if self.min_size > self.max_size:
            raise ValueError(f"min_size {self.min_size} is larger than max_size {self.max_size}")
        branches = tuple(self.deep_cache)
        for branch in branches:
            if isinstance(branch, bool) or not isinstance(branch, int) or branch < 0:
                raise ValueError(f"deep_cache branch {branch!r} is not a branch id (an integer from 0)")
        if len(set(branches)) != len(branches):
            raise ValueError(f"deep_cache {list(branches)} names a branch twice")
        object.__setattr__(self, "deep_cache", tuple(sorted(branches)))

    def ranges(self, latent_factor: int, native_size: int = 512) -> ShapeRanges:
        """The artifact's shape ranges; `native_size` is the size the model was trained at (512, or 768 for SD 2.x)."""
        opt = self.opt_size if self.opt_size is not None else min(max(native_size, self.min_size), self.max_size)
        return ShapeRanges(
            max_batch=self.max_batch,
            min_size=self.min_size,
            max_size=self.max_size,
            opt_size=opt,
            max_text_chunks=self.max_text_chunks,
            latent_factor=latent_factor,
        )

    def component_precision(self, spec: ComponentSpec) -> str:
        """Precision of one component's graph: `vae_precision` for the VAE's halves, else `precision`."""
        return self.vae_precision if spec.role in ("vae_decoder", "vae_encoder") else self.precision


def export_model(
    model_dir: str | os.PathLike,
    artifact_dir: str | os.PathLike,
    config: ExportConfig = ExportConfig(),
    overwrite: bool = False,
    progress: bool = False,
    source: SourceOptions | None = None,
) -> Manifest:
    """Export every component of a model to ONNX under `artifact_dir`, with tokenizers, scheduler and manifest.

    The model is a diffusers directory or a single-file checkpoint (converted first, in a temporary
    directory beside the artifact); `source` says what a single file cannot and which VAE to swap in.
    Everything is written to a temporary sibling directory and renamed into place at the end, so an
    interrupted export never leaves a directory that looks like an artifact (and the next export into the
    same directory removes what it left). Fails before loading any weights when the disk lacks the room.
    """
    out = Path(artifact_dir)
    if out.exists() and not overwrite:
        raise ValueError(f"artifact directory {out} already exists; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open_model(model_dir, source or SourceOptions(), workdir=out.parent) as model:
        return _export(model, out, config, progress)


def _export(model: ModelDir, out: Path, config: ExportConfig, progress: bool) -> Manifest:
    manifest = Manifest.for_model(model, config.ranges(model.latent_factor, model.native_size))
    manifest = replace(
        manifest,
        components={n: _with_precision(s, config.component_precision(s)) for n, s in manifest.components.items()},
    )
    for spec in manifest.components.values():
        if spec.attributes.get("force_upcast") and config.component_precision(spec) == "fp16":
            log.warning(
                "this model's VAE overflows in fp16 (its config sets force_upcast); %s exported in fp16 as asked, "
                "and the pipeline will decode again in float32 when it overflows",
                spec.name,
            )
    fp16 = frozenset(n for n, s in manifest.components.items() if config.component_precision(s) == "fp16")
    deep_cache_config = _deep_cache_config(model, manifest, config.deep_cache)  # a bad branch fails here, first
    size = export_size(model, fp16)
    if config.deep_cache:  # the shared weights file holds about one more UNet; one traced graph waits beside it
        unet_part = model.family.part_of(model.family.denoiser)
        size = replace(size, parts={**size.parts, f"{unet_part} (DeepCache graphs)": 2 * size.parts[unet_part]})
    check_free_space(size, out)  # before gigabytes of weights are loaded
    with atomic_directory(out) as tmp:
        files, tables = {}, {}
        networks = tqdm(model.iter_modules(), total=len(manifest.components), desc="export", unit="component",
                        disable=not progress)  # fmt: skip
        variants: dict[str, OnnxFile] = {}
        deep_specs: dict[str, ComponentSpec] = {}
        deep_files: dict[str, OnnxFile] = {}
        for name, module in networks:  # one part's weights in memory at a time
            spec = manifest.components[name]
            files[name] = export_component(module, spec, manifest.ranges, tmp / name, config.opset)
            if spec.role == "text_encoder":  # the engine starts after the token lookup: keep the table beside it
                tables[name] = write_token_table(module.token_table(), tmp, name)
            if config.tiling and spec.role in TILING_ROLES:  # its seamless twin: the same weights, circular padding
                with circular_padding(module) as circular:
                    exported = export_component(circular, spec, manifest.ranges, tmp / TILING / name, config.opset)
                variants[name] = _variant_file(exported)
            if deep_cache_config is not None and name == model.family.denoiser:
                deep_specs, deep_files = export_deep_cache(
                    module.unet, spec, deep_cache_config, config.deep_cache, manifest.ranges, tmp, config
                )
            del module
            if config.component_precision(spec) == "fp16":
                files[name] = convert_component(tmp, files[name], spec)
                if name in variants:
                    variants[name] = convert_component(tmp, variants[name], spec)
        for part in manifest.support:
            shutil.copytree(model.part_dir(part), tmp / part)
        manifest = manifest.with_files(files, {**library_versions(), "onnx_opset": str(config.opset)}, tables)
        if variants:
            manifest = replace(manifest, variants={TILING: variants})
        if deep_specs:
            manifest = replace(manifest, deep_cache=deep_specs, deep_cache_files=deep_files)
        write_manifest(tmp, manifest)
    log.info("exported %s to %s", model.path, out)
    return manifest


def _deep_cache_config(model: ModelDir, manifest: Manifest, branches: tuple[int, ...]) -> dict[str, Any] | None:
    """The config of the UNet whose DeepCache graphs are asked for (None: none asked); ValueError for a branch it
    has not, before any weights are loaded."""
    if not branches:
        return None
    unet = model.family.denoiser
    if unet not in manifest.components:
        raise ValueError(f"deep_cache {list(branches)}: a {model.family.description} has no UNet to cache")
    config = dict(model.configs[model.family.part_of(unet)])
    for branch in branches:
        try:
            branch_of(config, branch)
        except ValueError as exc:
            raise ValueError(f"--deep-cache (ExportConfig.deep_cache): {exc}") from None
    return config


def export_deep_cache(
    unet: torch.nn.Module,
    spec: ComponentSpec,
    unet_config: dict[str, Any],
    branches: tuple[int, ...],
    ranges: ShapeRanges,
    artifact: Path,
    config: ExportConfig,
) -> tuple[dict[str, ComponentSpec], dict[str, OnnxFile]]:
    """DeepCache's full and shallow graphs of each branch (`sdrt.deep_cache_unet`), under `artifact/<unet>_deep_cache/`
    as `<part>_<branch>.onnx`, all reading their weights from one shared file there (`SharedWeights`).

    Returns the networks' specs and files by name. Each graph is traced (and converted to fp16) in a scratch
    directory beside, then its weights moved into the shared file: the UNet's weights are written once for all.
    """
    directory = artifact / f"{spec.name}{SUFFIX}"
    shared = SharedWeights(directory, DEEP_CACHE_DATA_FILE)
    specs: dict[str, ComponentSpec] = {}
    files: dict[str, OnnxFile] = {}
    scratch = artifact / f".{directory.name}.scratch"
    try:
        for branch in branches:
            for part in deep_cache_specs(spec, unet_config, branch):
                part_dir = scratch / part.name
                traced = export_component(DeepCacheUNetModule(unet, part, unet_config), part, ranges, part_dir,
                                          config.opset)  # fmt: skip
                if config.component_precision(part) == "fp16":
                    traced = convert_component(scratch, traced, part)
                graph = onnx.load(str(scratch / traced.path), load_external_data=False)
                kind = part.attributes["deep_cache_part"]
                files[part.name] = shared.save(graph, part_dir, f"{kind}_{branch}.onnx", artifact)
                specs[part.name] = part
                shutil.rmtree(part_dir)
    finally:
        data, data_sha256 = shared.close(artifact)
        shutil.rmtree(scratch, ignore_errors=True)
    log.info(
        "DeepCache graphs of branches %s: %.1f MB of weights shared by %d graphs that read %.1f MB",
        list(branches), shared.written / 1e6, len(files), shared.referenced / 1e6,
    )  # fmt: skip
    files = {n: replace(f, external_data=data, external_data_sha256=data_sha256) for n, f in files.items()}
    return specs, files


def write_token_table(table: torch.Tensor, artifact: Path, component: str) -> DataFile:
    """Save a text encoder's token table (vocab, D) as float32 safetensors beside its graph; describe the file."""
    from safetensors.torch import save_file

    path = artifact / component / TOKEN_TABLE_FILE
    save_file({"weight": table.detach().to("cpu", torch.float32).contiguous()}, str(path))
    path.chmod(0o644)
    return DataFile(path=str(path.relative_to(artifact)), sha256=file_sha256(path))


def _variant_file(onnx_file: OnnxFile) -> OnnxFile:
    """A variant's graph, described relative to the variant's directory, as the artifact root describes it."""
    return replace(
        onnx_file,
        path=f"{TILING}/{onnx_file.path}",
        external_data=None if onnx_file.external_data is None else f"{TILING}/{onnx_file.external_data}",
    )


def _with_precision(spec: ComponentSpec, precision: str) -> ComponentSpec:
    """`spec` with its graph's precision recorded in its attributes (its IO is float32 either way)."""
    return replace(spec, attributes={**spec.attributes, "precision": precision})
