"""manifest.json: the contract between an exported artifact and everything that runs it (C++ included)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sdrt.deep_cache_unet import PARTS, network_name
from sdrt.engines.base import NetworkSet
from sdrt.families import Family, family_named
from sdrt.files import read_json_object
from sdrt.hashing import file_sha256
from sdrt.model_dir import ModelDir
from sdrt.onnx_files import OnnxFile
from sdrt.spec import ComponentSpec, ShapeRanges

# 5: UNets take the residuals ControlNets add (dimensions at fractions of the latent size), ControlNet artifacts
# (family controlnet, no VAE: vae_scaling_factor null); 4: text encoders take token embeddings (the artifact keeps
# each token table), the swapped VAE and the LoRAs fused at export are recorded; 3: one model family description
# (networks, support directories and extras by family); 2: CLIP-skip input, dynamic text axis, inpainting flag
FORMAT_VERSION = 5
MANIFEST_NAME = "manifest.json"
TOKEN_TABLE_FILE = "token_embeddings.safetensors"  # a text encoder's token table: tensor "weight" (vocab, D) float32
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
# DeepCache's graphs (`sdrt export --deep-cache`) lie in the directory <unet>_deep_cache/, sharing this weights file
DEEP_CACHE_DATA_FILE = "weights.onnx.data"


@dataclass(frozen=True)
class DataFile:
    """A file of the artifact other than a graph (a token table), and a hash of its bytes."""

    path: str  # relative to the artifact root, e.g. "text_encoder/token_embeddings.safetensors"
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """What an artifact holds: its family, component IO specs, supported shapes, model facts and provenance."""

    family: str  # model family name, e.g. "sd1", "sdxl" (sdrt.families)
    ranges: ShapeRanges  # batch and image sizes the artifact supports
    components: Mapping[str, ComponentSpec]  # network name -> IO spec
    vae_scaling_factor: float | None  # latents are divided by this before the VAE decoder (None: no VAE)
    source_sha256: str  # sha256 over the source model's weight files
    inpainting: bool = False  # the UNet takes latents + mask + masked-image latents (9 channels for SD)
    prediction_type: str = "epsilon"  # what the UNet predicts: "epsilon", "v_prediction" (SD 2.x 768) or "sample"
    support: tuple[str, ...] = ()  # directories copied from the model as they are: tokenizers, scheduler, ...
    extras: Mapping[str, Any] = field(default_factory=dict)  # the family's own facts, validated by the family
    files: Mapping[str, OnnxFile] = field(default_factory=dict)  # component name -> ONNX file (empty for a model dir)
    token_tables: Mapping[str, DataFile] = field(default_factory=dict)  # text encoder -> its token table file
    # where the weights came from beyond the model itself: the swapped VAE ({"name", "sha256"}), the LoRAs fused
    # at export ([{"name", "sha256", "weight"}, plus "unet_weight" where it differs]) and the hypernetworks traced
    # into the UNet ([{"name", "sha256", "multiplier"}], in order)
    vae: Mapping[str, str] | None = None
    loras: tuple[Mapping[str, Any], ...] = ()
    hypernetworks: tuple[Mapping[str, Any], ...] = ()
    # graphs some networks also have, exported another way, by variant: "tiling" (every convolution of the UNet and
    # VAE padding circularly: seamless textures, `sdrt export --tiling`) -> network -> its ONNX file
    variants: Mapping[str, Mapping[str, OnnxFile]] = field(default_factory=dict)
    # DeepCache's networks of the UNet (`sdrt export --deep-cache BRANCH`): name -> spec, two per branch ("full":
    # the UNet's inputs, noise_pred and the branch's feature out; "shallow": the feature in), named
    # <unet>_deep_cache_<part>_<branch> with attributes deep_cache_branch and deep_cache_part; and their files
    deep_cache: Mapping[str, ComponentSpec] = field(default_factory=dict)
    deep_cache_files: Mapping[str, OnnxFile] = field(default_factory=dict)
    versions: Mapping[str, str] = field(default_factory=dict)  # library versions used for the export
    format_version: int = FORMAT_VERSION  # bumped on any incompatible change

    def __post_init__(self) -> None:
        if self.format_version != FORMAT_VERSION:
            raise ValueError(
                f"artifact format version {self.format_version} is not supported by this sdrt "
                f"(it reads version {FORMAT_VERSION}); re-export the model with this sdrt"
            )
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type {self.prediction_type!r} is not one of {list(PREDICTION_TYPES)}")
        family = family_named(self.family)
        family.check_networks(list(self.components))
        object.__setattr__(self, "extras", family.check_extras(self.extras))
        if self.files:  # an exported artifact: every text encoder's token table beside its graph
            encoders = {n for n, s in self.components.items() if s.role == "text_encoder"}
            if set(self.token_tables) != encoders:
                raise ValueError(
                    f"manifest lists token tables for {sorted(self.token_tables)}, but its text encoders are "
                    f"{sorted(encoders)}; re-export the model with this sdrt"
                )
        needed = {p.name for p in family.support_parts}
        if set(self.support) != needed:
            raise ValueError(f"a {self.family} artifact has support directories {sorted(needed)}, not {self.support}")
        self._check_deep_cache(family)

    def _check_deep_cache(self, family: Family) -> None:
        """ValueError unless the DeepCache networks come in full/shallow pairs of the UNet, named as their branch."""
        if not self.deep_cache:
            return
        if family.denoiser not in self.components:
            raise ValueError(f"manifest lists DeepCache networks, but a {self.family} artifact has no UNet")
        for name, spec in self.deep_cache.items():
            branch, part = spec.attributes.get("deep_cache_branch"), spec.attributes.get("deep_cache_part")
            if isinstance(branch, bool) or not isinstance(branch, int) or branch < 0 or part not in PARTS:
                raise ValueError(
                    f"DeepCache network {name} has deep_cache_branch {branch!r} and deep_cache_part {part!r}; "
                    f"they must be a branch id (an integer from 0) and one of {list(PARTS)}"
                )
            if name != network_name(family.denoiser, part, branch) or spec.name != name:
                raise ValueError(f"DeepCache network {name} is not named {network_name(family.denoiser, part, branch)}")
        for branch in self.deep_cache_branches:
            for part in PARTS:
                if network_name(family.denoiser, part, branch) not in self.deep_cache:
                    raise ValueError(f"manifest lists DeepCache branch {branch} without its {part} network")
        if self.files and set(self.deep_cache_files) != set(self.deep_cache):
            raise ValueError(
                f"manifest lists DeepCache files for {sorted(self.deep_cache_files)}, but its DeepCache networks "
                f"are {sorted(self.deep_cache)}"
            )

    @property
    def deep_cache_branches(self) -> tuple[int, ...]:
        """The DeepCache branch ids this artifact has graphs for (`sdrt export --deep-cache`), in order."""
        return tuple(sorted({int(s.attributes["deep_cache_branch"]) for s in self.deep_cache.values()}))

    def deep_cache_networks(self, branch: int) -> NetworkSet:
        """The full and shallow networks of DeepCache branch `branch` (in that order); ValueError naming the export
        that adds them when the artifact lacks them."""
        if branch not in self.deep_cache_branches:
            have = ", ".join(map(str, self.deep_cache_branches)) or "none"
            raise ValueError(
                f"this artifact has no DeepCache graphs for branch {branch} (it has: {have}); export it again with "
                f"sdrt export --deep-cache {branch}, or run the model directory on the torch backend"
            )
        names = [network_name(self.model_family.denoiser, part, branch) for part in PARTS]
        return NetworkSet(
            {n: self.deep_cache[n] for n in names},
            self.ranges,
            {n: self.deep_cache_files[n] for n in names if n in self.deep_cache_files},
            self.source_sha256,
        )

    @property
    def model_family(self) -> Family:
        return family_named(self.family)

    @classmethod
    def for_model(cls, model: ModelDir, ranges: ShapeRanges | None = None) -> Manifest:
        """The manifest describing a model directory (no ONNX files yet)."""
        family = model.family
        specs = family.networks(model.configs)
        factor = model.latent_factor
        if ranges is None:
            ranges = ShapeRanges(latent_factor=factor)
        elif ranges.latent_factor != factor:
            raise ValueError(f"ranges use latent factor {ranges.latent_factor}, but the model's VAE has {factor}")
        return cls(
            family=family.name,
            ranges=ranges,
            components=specs,
            vae_scaling_factor=family.vae_scaling_factor(model.configs),
            source_sha256=model.weights_sha256(),
            inpainting=is_inpainting_unet(model.configs, family.image_channels),
            prediction_type=family.prediction_type(model.configs),
            support=tuple(p.name for p in family.support_parts),
            extras=family.manifest_extras(model.index, model.configs),
            vae=model.vae,
            loras=tuple(
                {"name": use.path.name, "sha256": file_sha256(use.path), "weight": use.te}
                | ({"unet_weight": use.unet} if use.unet != use.te else {})
                for use in model.loras
            ),
            hypernetworks=tuple(
                {"name": path.name, "sha256": file_sha256(path), "multiplier": multiplier}
                for path, multiplier in model.hypernetworks
            ),
        )

    def to_json(self) -> dict[str, Any]:
        family = self.model_family
        return {
            "format_version": self.format_version,
            "family": self.family,
            "ranges": self.ranges.to_json(),
            "dims": {k: vars(v) for k, v in self.ranges.dims().items()},
            "vae_scaling_factor": self.vae_scaling_factor,
            "source_sha256": self.source_sha256,
            "inpainting": self.inpainting,
            "prediction_type": self.prediction_type,
            "support": list(self.support),
            # which tokenizer directory feeds which text-encoder network (the family's; for readers of the file)
            "text_encoders": [{"tokenizer": t.tokenizer, "network": t.network} for t in family.text_encoders],
            "extras": dict(self.extras),
            "vae": dict(self.vae) if self.vae is not None else None,
            "loras": [dict(lora) for lora in self.loras],
            **({"hypernetworks": [dict(h) for h in self.hypernetworks]} if self.hypernetworks else {}),
            "variants": {v: {n: vars(f) for n, f in files.items()} for v, files in self.variants.items()},
            **({"deep_cache": self._deep_cache_json()} if self.deep_cache else {}),
            "components": {
                name: {
                    **spec.to_json(),
                    "onnx": vars(self.files[name]) if name in self.files else None,
                    **({"token_embeddings": vars(self.token_tables[name])} if name in self.token_tables else {}),
                }
                for name, spec in self.components.items()
            },
            "versions": dict(self.versions),
        }

    def _deep_cache_json(self) -> dict[str, Any]:
        return {
            name: {
                **spec.to_json(),
                "onnx": vars(self.deep_cache_files[name]) if name in self.deep_cache_files else None,
            }
            for name, spec in self.deep_cache.items()
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Manifest:
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(
                f"artifact format version {version!r} is not supported by this sdrt "
                f"(it reads version {FORMAT_VERSION}); re-export the model with this sdrt"
            )
        try:
            components = {n: ComponentSpec.from_json(c) for n, c in data["components"].items()}
            deep_cache = data.get("deep_cache", {})
            files = {n: OnnxFile(**c["onnx"]) for n, c in data["components"].items() if c.get("onnx")}
            tables = {
                n: DataFile(**c["token_embeddings"]) for n, c in data["components"].items() if c.get("token_embeddings")
            }
            return cls(
                family=data["family"],
                ranges=ShapeRanges.from_json(data["ranges"]),
                components=components,
                vae_scaling_factor=None if data["vae_scaling_factor"] is None else float(data["vae_scaling_factor"]),
                source_sha256=data["source_sha256"],
                inpainting=bool(data["inpainting"]),
                prediction_type=str(data["prediction_type"]),
                support=tuple(data["support"]),
                extras=dict(data["extras"]),
                files=files,
                token_tables=tables,
                vae=dict(data["vae"]) if data.get("vae") is not None else None,
                loras=tuple(dict(lora) for lora in data.get("loras", ())),
                hypernetworks=tuple(dict(h) for h in data.get("hypernetworks", ())),
                variants={
                    v: {n: OnnxFile(**f) for n, f in files.items()} for v, files in data.get("variants", {}).items()
                },
                deep_cache={n: ComponentSpec.from_json(c) for n, c in deep_cache.items()},
                deep_cache_files={n: OnnxFile(**c["onnx"]) for n, c in deep_cache.items() if c.get("onnx")},
                versions=dict(data.get("versions", {})),
                format_version=version,
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"manifest is malformed: {exc!r}") from exc

    def variant(self, name: str) -> NetworkSet:
        """The networks of variant `name` ("tiling"), their graphs as exported for it; ValueError if it has none."""
        files = self.variants.get(name)
        if not files:
            raise ValueError(f"this artifact has no {name} graphs; export it again with --{name}")
        return NetworkSet({n: self.components[n] for n in files}, self.ranges, dict(files), self.source_sha256)

    def with_files(
        self, files: Mapping[str, OnnxFile], versions: Mapping[str, str], token_tables: Mapping[str, DataFile]
    ) -> Manifest:
        return replace(self, files=dict(files), versions=dict(versions), token_tables=dict(token_tables))


def is_inpainting_unet(configs: Mapping[str, Any], image_channels: int = 0) -> bool:
    """True for an inpainting UNet: its input is latents, a 1-channel mask and masked-image latents (a family whose
    input image adds `image_channels` to the latents', as the x4 upscaler's low-res image, has no inpainting UNet)."""
    if "unet" not in configs or "vae" not in configs:
        return False  # no UNet to inpaint with (a ControlNet)
    latent = int(configs["vae"]["latent_channels"])
    channels = int(configs["unet"]["in_channels"])
    if image_channels:
        return False  # the family checks its own UNet's channels
    if channels not in (latent, 2 * latent + 1):
        raise ValueError(
            f"UNet in_channels {channels} is neither {latent} (text-to-image) nor {2 * latent + 1} (inpainting)"
        )
    return channels == 2 * latent + 1


def write_manifest(directory: Path, manifest: Manifest) -> None:
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest.to_json(), indent=2) + "\n")


def read_manifest(directory: str | os.PathLike) -> Manifest:
    """Read and validate `directory/manifest.json`; raise ValueError saying what is wrong."""
    root = Path(directory)
    path = root / MANIFEST_NAME
    if not root.is_dir():
        raise ValueError(f"artifact directory {root} does not exist or is not a directory")
    if not path.is_file():
        raise ValueError(f"{root} is not an sdrt artifact: it has no {MANIFEST_NAME} (create one with 'sdrt export')")
    manifest = Manifest.from_json(read_json_object(path))
    paths = [(n, f.path) for n, f in manifest.token_tables.items()]
    paths += [(n, rel) for n, f in manifest.files.items() for rel in (f.path, f.external_data)]
    paths += [(f"{n} ({v})", rel) for v, fs in manifest.variants.items() for n, f in fs.items()
              for rel in (f.path, f.external_data)]  # fmt: skip
    paths += [(n, rel) for n, f in manifest.deep_cache_files.items() for rel in (f.path, f.external_data)]
    for name, rel in paths:
        if rel is None:
            continue
        if not (root / rel).resolve().is_relative_to(root.resolve()):
            raise ValueError(f"manifest of {root} points {name} at {rel}, outside the artifact")
        if not (root / rel).is_file():
            raise ValueError(f"artifact {root} is incomplete: {name} file {rel} is missing")
    for rel in manifest.support:
        if not (root / rel).is_dir():
            raise ValueError(f"artifact {root} is incomplete: {rel}/ is missing")
    return manifest
