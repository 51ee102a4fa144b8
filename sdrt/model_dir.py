"""Reading a diffusers-format model directory strictly from disk, as its family describes it."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sdrt.families import Family, family_for
from sdrt.families.base import WEIGHTS
from sdrt.files import read_json_object
from sdrt.hashing import files_sha256

log = logging.getLogger(__name__)

# the libraries whose classes a model_index.json may name for a part sdrt loads
_LIBRARIES = ("diffusers", "transformers")


@dataclass(frozen=True)
class ModelDir:
    """A validated diffusers model directory: its family, index and part configs; nothing loaded yet."""

    path: Path  # the directory holding model_index.json
    family: Family  # the model family, found from model_index.json and the configs
    index: dict[str, Any]  # model_index.json
    configs: dict[str, Any]  # part name -> its config dict (parts with a config file)
    # where the weights really came from, when the directory was converted from a single file: its sha256
    source_sha256: str | None = None
    swapped: Mapping[str, Path] = field(default_factory=dict)  # part -> the directory holding it instead (a VAE)
    vae: Mapping[str, str] | None = None  # the swapped VAE's name and sha256, for the manifest and infotexts
    loras: tuple[tuple[Path, float], ...] = ()  # LoRAs fused into the parts they adapt as each part is loaded
    root_part: str | None = None  # a part that is the directory itself (a diffusers ControlNet directory's one part)

    def with_part(
        self, name: str, directory: Path, config: Mapping[str, Any], described: Mapping[str, str]
    ) -> ModelDir:
        """This model with part `name` read from `directory` instead (a swapped VAE), described for the manifest."""
        return replace(
            self, swapped={**self.swapped, name: directory}, configs={**self.configs, name: dict(config)}, vae=described
        )

    def with_loras(self, loras: tuple[tuple[Path, float], ...]) -> ModelDir:
        """This model with LoRAs fused into its text encoders and UNet when they load; each file is checked now."""
        from sdrt.lora import prepare_lora

        if not self.family.lora_loader:
            raise ValueError(f"LoRAs are not supported for {self.family.description}s")
        for path, _ in loras:
            lora = prepare_lora(path, self.family.lora_loader, self.configs.get("unet"))
            unknown = sorted(set(lora.layers) - set(self.family.lora_parts))
            if unknown:
                raise ValueError(f"LoRA file {path} adapts {', '.join(unknown)}, which this model does not have")
        return replace(self, loras=tuple(loras))

    def part_dir(self, name: str) -> Path:
        """The directory part `name` is read from."""
        if name in self.swapped:
            return self.swapped[name]
        return self.path if name == self.root_part else self.path / name

    @classmethod
    def open(cls, path: str | os.PathLike) -> ModelDir:
        """Validate the layout and read the configs; raise ValueError naming what is missing or wrong."""
        root = Path(path)
        if not root.is_dir():
            raise ValueError(f"model directory {root} does not exist or is not a directory")
        index_file = root / "model_index.json"
        root_part = None
        if not index_file.is_file() and _single_model_class(root) is not None:
            # one model in diffusers' layout (a ControlNet): its directory is the model's one part
            cls_name = _single_model_class(root)
            index = {"_class_name": cls_name, "controlnet": ["diffusers", cls_name]}
            configs = {"controlnet": read_json_object(root / "config.json")}
            root_part = "controlnet"
        else:
            index = read_model_index(root)
            configs = read_config_files(root, index)
        family = family_for(index, configs, where=str(index_file if root_part is None else root / "config.json"))
        model = cls(path=root, family=family, index=index, configs=configs, root_part=root_part)
        missing = [p.name for p in family.parts if not model.part_dir(p.name).is_dir()]
        if missing:
            raise ValueError(f"{family.description} directory {root} lacks {', '.join(m + '/' for m in missing)}")
        for part in family.parts:
            if part.config is not None and part.name not in configs:
                raise ValueError(f"{model.part_dir(part.name)} has no {part.config}")
        for part in family.model_parts:
            model.weight_file(part.name)  # fails early, naming the missing file
        return model

    @property
    def latent_factor(self) -> int:
        return self.family.latent_factor(self.configs)

    @property
    def native_size(self) -> int:
        """Image size in pixels the UNet was trained at (512 for SD 1.x, 768 for SD 2.x-768, 1024 for SDXL)."""
        return self.family.native_size(self.configs)

    def part_class(self, name: str) -> tuple[str, str]:
        """(library, class) model_index.json gives part `name`, checked against what the family accepts."""
        part = self.family.part(name)
        entry = self.index.get(name)
        if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(e, str) for e in entry)):
            raise ValueError(f"{self.path / 'model_index.json'}: {name} is {entry!r}, not [library, class]")
        library, cls = entry
        if part.classes and (library not in _LIBRARIES or cls not in part.classes):
            raise ValueError(
                f"{self.path / 'model_index.json'}: {name} is {library}.{cls}; a {self.family.description} "
                f"reads {name} as one of {', '.join(part.classes)}"
            )
        return library, cls

    def weight_file(self, name: str) -> str:
        """Relative path of a model part's safetensors weights; ValueError naming what is there instead."""
        library, _ = self.part_class(name)
        directory = self.path if name == self.root_part else self.path / name
        for file in WEIGHTS[library]:
            if (directory / file).is_file():
                return str((directory / file).relative_to(self.path))
        pickles = sorted(p.name for p in directory.glob("*.bin"))
        hint = (
            f"; it has {pickles}, pickle files that sdrt does not load (convert them to safetensors)" if pickles else ""
        )
        raise ValueError(f"{directory} has no {' or '.join(WEIGHTS[library])}{hint}")

    def weight_files(self) -> list[str]:
        """Relative paths of the weight files, for the source hash: the model parts', and any a support part holds
        (unCLIP's image normalizer: the statistics its embeddings are noised with)."""
        support = [
            f"{p.name}/{f.name}" for p in self.family.support_parts for f in (self.path / p.name).glob("*.safetensors")
        ]
        return [self.weight_file(p.name) for p in self.family.model_parts] + sorted(support)

    def weights_sha256(self) -> str:
        """The source model's hash: its weight files' (a swapped part not included), or its single file's."""
        return self.source_sha256 or files_sha256(self.path, self.weight_files())

    def load_part(self, name: str) -> nn.Module:
        """One model part from safetensors on disk, in eval mode, fp32, with the class model_index.json names."""
        import importlib

        library, cls = self.part_class(name)
        loader = getattr(importlib.import_module(library), cls)
        log.info("loading %s (%s) from %s", name, cls, self.part_dir(name))
        # fp32 whatever the file holds: transformers 5 would keep an fp16 checkpoint's dtype, diffusers upcasts
        dtype = {"dtype": torch.float32} if library == "transformers" else {"torch_dtype": torch.float32}
        module = loader.from_pretrained(self.part_dir(name), local_files_only=True, use_safetensors=True, **dtype)
        if self.loras and name in self.family.lora_parts:
            from sdrt.lora import fuse_into_part, prepare_lora

            loader_name, unet = self.family.lora_loader, self.configs.get("unet")
            files = [(prepare_lora(path, loader_name, unet), weight) for path, weight in self.loras]
            with torch.no_grad():
                fused = fuse_into_part(name, module, files, loader_name)
            log.info("fused %d LoRA layers into %s", fused, name)
        return module.eval()

    def load_modules(self) -> dict[str, nn.Module]:
        """Every network's torch module with its spec's IO (the family wraps the loaded parts)."""
        return dict(self.iter_modules())

    def iter_modules(self) -> Iterator[tuple[str, nn.Module]]:
        """(network, module) in the family's order, each part loaded once and dropped when its networks are done.

        An exporter that drops each module after use holds one part's weights at a time: what lets a 10 GB
        fp32 SDXL UNet export on a machine that could not hold every part at once.
        """
        specs = self.family.networks(self.configs)
        names = list(specs)
        part: tuple[str, nn.Module] | None = None
        for i, name in enumerate(names):
            wanted = self.family.part_of(name)
            if part is None or part[0] != wanted:
                part = None  # release the previous part before loading the next
                part = (wanted, self.load_part(wanted))
            yield name, self.family.module(specs[name], part[1]).eval()
            if all(self.family.part_of(n) != wanted for n in names[i + 1 :]):
                part = None


def _single_model_class(root: Path) -> str | None:
    """The class of a one-model diffusers directory sdrt reads (a ControlNetModel), from its config.json; else None."""
    config = root / "config.json"
    if not config.is_file():
        return None
    try:
        cls = read_json_object(config).get("_class_name")
    except ValueError:
        return None
    return cls if cls == "ControlNetModel" else None


def read_model_index(root: Path) -> dict[str, Any]:
    """A model directory's model_index.json; ValueError saying what a diffusers model directory holds."""
    index_file = root / "model_index.json"
    if not index_file.is_file():
        raise ValueError(
            f"{root} is not a diffusers model directory: it has no model_index.json "
            "(expected model_index.json beside text_encoder/, tokenizer/, unet/, vae/, scheduler/)"
        )
    return read_json_object(index_file)


def read_config_files(root: Path, index: dict[str, Any]) -> dict[str, Any]:
    """The config of every part model_index.json names whose directory has one of the usual config files."""
    configs = {}
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or entry[0] is None:
            continue
        for file in ("config.json", "scheduler_config.json", "preprocessor_config.json"):
            if (root / name / file).is_file():
                configs[name] = read_json_object(root / name / file)
                break
    return configs
