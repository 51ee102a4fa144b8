"""What `sdrt export` reads: a diffusers directory or a single-file checkpoint, with a VAE swapped in.

A single-file checkpoint becomes, in a temporary directory, exactly the diffusers directory its weights
describe (`sdrt.single_file.checkpoint`), so it goes through the same exporter as any model directory;
the manifest's source hash is the file's own sha256, the web UI's model hash. A swapped VAE (a diffusers
VAE directory, or a single file in the original or diffusers layout) replaces the model's `vae` part.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from sdrt.files import read_json_object, scratch_directory
from sdrt.hashing import file_sha256, files_sha256
from sdrt.model_dir import ModelDir

log = logging.getLogger(__name__)

# a VAE file in diffusers' own layout has this key; one in the original layout has encoder.down.0.block.0...
_DIFFUSERS_VAE_KEY = "encoder.down_blocks.0.resnets.0.conv1.weight"


@dataclass(frozen=True)
class SourceOptions:
    """How to read the model: what a single file cannot say, whether pickles may be read, a VAE to swap in."""

    prediction_type: str | None = None  # a single file's UNet prediction (SD 2.x files do not record it)
    config_dir: Path | None = None  # a diffusers directory whose configs (and tokenizers) a single file takes
    allow_pickle: bool = False  # read pickled .ckpt/.pt files, with torch's weights-only loader
    vae: Path | None = None  # a VAE to export instead of the model's: diffusers directory or single file
    loras: tuple[tuple[Path, float], ...] = ()  # LoRA files fused into the exported weights, with their weights

    def __post_init__(self) -> None:
        from sdrt.single_file.checkpoint import PREDICTION_TYPES

        if self.prediction_type is not None and self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type {self.prediction_type!r} is not one of {', '.join(PREDICTION_TYPES)}")
        if self.config_dir is not None and not Path(self.config_dir).is_dir():
            raise ValueError(f"config directory {self.config_dir} does not exist or is not a directory")


@contextmanager
def open_model(
    path: str | os.PathLike, options: SourceOptions = SourceOptions(), workdir: Path | None = None
) -> Iterator[ModelDir]:
    """The model at `path` (a diffusers directory or a single-file checkpoint) as a ModelDir, with its VAE swap.

    Converted files live in a temporary directory under `workdir` (default: the system's) until the block ends.
    """
    source = Path(path)
    with scratch_directory(workdir, "sdrt-source") as scratch:
        if source.is_file():
            model = convert_single_file(source, Path(scratch) / "model", options)
        else:
            if options.prediction_type is not None or options.config_dir is not None:
                raise ValueError(
                    "--prediction-type and --config describe a single-file checkpoint; "
                    f"{source} is a model directory, whose own configs say it"
                )
            model = ModelDir.open(source)
        if options.vae is not None:
            model = swap_vae(model, Path(options.vae), Path(scratch) / "vae", options.allow_pickle)
        if options.loras:
            model = model.with_loras(tuple((Path(p), float(w)) for p, w in options.loras))
        yield model


def convert_single_file(file: Path, out: Path, options: SourceOptions) -> ModelDir:
    """A single-file checkpoint written out as the diffusers directory it describes, opened."""
    from sdrt.files import atomic_directory
    from sdrt.single_file.checkpoint import plan, read_checkpoint, write_diffusers_dir
    from sdrt.single_file.controlnet import is_controlnet, write_controlnet_dir

    checkpoint = read_checkpoint(file, options.allow_pickle)
    if is_controlnet(checkpoint):  # a ControlNet (the web UI's control_*.safetensors, or diffusers' in one file)
        if options.prediction_type is not None:
            raise ValueError(f"{file} is a ControlNet: --prediction-type describes a full model's UNet")
        log.info("converting the ControlNet %s to a diffusers directory", file)
        with atomic_directory(out) as tmp:
            try:
                write_controlnet_dir(checkpoint, tmp, file.name, options.config_dir)
            except ValueError as exc:
                raise ValueError(f"{file}: {exc}") from exc
        del checkpoint
        return replace(ModelDir.open(out), source_sha256=file_sha256(file))
    try:
        conversion = plan(checkpoint, options.prediction_type, options.config_dir)
    except ValueError as exc:
        raise ValueError(f"{file}: {exc}") from exc
    log.info("converting %s (%s) to a diffusers directory", file, conversion.described)
    with atomic_directory(out) as tmp:
        write_diffusers_dir(checkpoint, conversion, tmp, str(file))
    del checkpoint
    return replace(ModelDir.open(out), source_sha256=file_sha256(file))


def swap_vae(model: ModelDir, vae: Path, scratch: Path, allow_pickle: bool = False) -> ModelDir:
    """`model` with its VAE read from `vae`: a diffusers VAE directory, or a file converted with the model's config."""
    from safetensors.torch import save_file

    from sdrt.families.base import WEIGHTS
    from sdrt.single_file.checkpoint import convert_part, read_checkpoint

    library, cls = model.part_class("vae")
    if vae.is_dir():
        config = read_json_object(vae / "config.json")
        weights = WEIGHTS[library][0]
        if not (vae / weights).is_file():
            raise ValueError(f"VAE directory {vae} has no {weights}")
        directory, sha256 = vae, files_sha256(vae, [weights])
    elif vae.is_file():
        config = dict(model.configs["vae"])  # a file carries no config: it must be the model's VAE architecture
        checkpoint = read_checkpoint(vae, allow_pickle)
        try:
            if _DIFFUSERS_VAE_KEY in checkpoint:
                converted = _checked_as_is(checkpoint, library, cls, config)
            else:
                converted = convert_part(checkpoint, "vae", library, cls, config)
        except ValueError as exc:
            raise ValueError(f"VAE {vae} does not fit this model's VAE: {exc}") from exc
        scratch.mkdir(parents=True)
        (scratch / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        save_file({k: v.contiguous() for k, v in converted.items()}, str(scratch / WEIGHTS[library][0]))
        directory, sha256 = scratch, file_sha256(vae)
    else:
        raise ValueError(f"VAE {vae} does not exist")
    latent = int(model.configs["vae"]["latent_channels"])
    if int(config.get("latent_channels", -1)) != latent:
        raise ValueError(
            f"VAE {vae} has {config.get('latent_channels')} latent channels; this model's UNet takes {latent}"
        )
    log.info("exporting the VAE of %s instead of the model's", vae)
    return model.with_part("vae", directory, config, {"name": vae.name, "sha256": sha256})


def _checked_as_is(checkpoint, library: str, cls: str, config) -> dict:
    """A VAE file already in diffusers' layout, checked key for key and shape for shape."""
    from sdrt.single_file.checkpoint import check_weights, empty_model

    return check_weights("vae", {k: checkpoint[k] for k in checkpoint}, empty_model(library, cls, config))
