"""What a model family is: the parts of its model directory, its networks, its manifest extras, its conditioning.

A family is described once (one module under `sdrt.families`) and every stage reads the description:
the model directory reader (`sdrt.model_dir`) reads the parts it lists, the exporter traces the networks
it describes, the backends load the modules it builds, the manifest stores and validates its extras, and
the runtime asks its conditioner for the UNet's named conditioning inputs. No stage names a family's
networks; a new family is a new module plus its tests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from sdrt.components import UNET, VAE_DECODER, VAE_ENCODER, latent_factor
from sdrt.conditioning.embedders import ConditioningContext, Embedder
from sdrt.params import Param
from sdrt.spec import ComponentSpec

if TYPE_CHECKING:
    from torch import nn

# the noise added to an image that conditions a model: unCLIP's image embedding, the x4 upscaler's low-res image
NOISE_LEVEL = Param(
    "noise_level",
    "int",
    "noise added to the conditioning image, a timestep of the model's image-noising scheduler: unCLIP's image "
    "embedding (default 0; more: looser variations), the x4 upscaler's low-res image (default 20, at most 350)",
    minimum=0,
    owner="unclip, upscaler_x4",
)
MODEL = "model"  # a part whose weights become a torch module
SUPPORT = "support"  # a part copied into the artifact as it is: tokenizer, scheduler, image processor
PART_KINDS = (MODEL, SUPPORT)
# weight files sdrt reads: safetensors only (pickles can run code)
WEIGHTS = {
    "transformers": ("model.safetensors",),
    "diffusers": ("diffusion_pytorch_model.safetensors",),
}


@dataclass(frozen=True)
class Part:
    """One subfolder of a diffusers model directory that a family reads."""

    name: str  # the subfolder and the model_index.json key, e.g. "text_encoder_2"
    kind: str  # MODEL (weights loaded into a module) or SUPPORT (copied into the artifact)
    classes: tuple[str, ...]  # model_index.json classes that may load it, e.g. ("CLIPTextModel",)
    config: str | None = None  # config file read when the directory is opened, e.g. "config.json"

    def __post_init__(self) -> None:
        if self.kind not in PART_KINDS:
            raise ValueError(f"part {self.name}: kind {self.kind!r} is not one of {', '.join(PART_KINDS)}")


def model_part(name: str, *classes: str) -> Part:
    return Part(name, MODEL, classes, "config.json")


def support_part(name: str, *classes: str, config: str | None = None) -> Part:
    return Part(name, SUPPORT, classes, config)


@dataclass(frozen=True)
class TextEncoderPair:
    """A tokenizer and the text-encoder network that reads its ids."""

    tokenizer: str  # support part holding the tokenizer, e.g. "tokenizer_2"
    network: str  # text-encoder network (and its model part), e.g. "text_encoder_2"


class ModedRequest(Protocol):
    """What a family checks of a request beyond its conditioning: where it starts."""

    @property
    def mode(self) -> str:
        """ "txt2img", "img2img", "inpaint" or "variation"."""


@dataclass(frozen=True)
class Family:
    """One model family. Subclasses fill in the networks and the conditioner; the defaults fit SD-style models."""

    name: str  # manifest "family", e.g. "sd1"
    parts: tuple[Part, ...]  # what the model directory holds
    network_names: tuple[str, ...]  # the networks `networks` describes, in export order
    text_encoders: tuple[TextEncoderPair, ...]  # tokenizer -> text-encoder pairs the conditioner uses
    description: str  # one line, for errors and `sdrt info`
    # where requests start: "txt2img" families take a prompt alone; "img2img" families need an input image
    modes: tuple[str, ...] = ("txt2img", "img2img", "inpaint")
    default_steps: int = 30  # denoising steps when a request gives none
    default_guidance: float = 7.5  # guidance scale when a request gives none
    default_strength: float = 0.8  # image-to-image strength when a request gives none
    # an input image conditions the model (unCLIP's image embedding) instead of starting its latents: requests get
    # no strength, and their size defaults to the artifact's rather than the image's
    image_conditioned: bool = False
    # an image-conditioned family's output is this many times its input image (the x4 upscaler's 4; the size
    # defaults to it); 0: the output size defaults to the artifact's tuned size
    image_scale: int = 0
    image_channels: int = 0  # channels an input image adds to the UNet's input (the x4 upscaler's low-res RGB)
    # the web UI's "Approx cheap" preview: rows are latent channels, columns R, G, B (latents as sampled)
    latent_rgb: tuple[tuple[float, float, float], ...] = ()
    refiners: tuple[str, ...] = ()  # families whose models can refine this family's latents (base -> refiner)
    extras_defaults: Mapping[str, Any] = field(default_factory=dict)  # manifest extras and their defaults
    lora_loader: str = ""  # diffusers' LoRA loader mixin for this family's files; "" = LoRAs are not supported
    params: tuple[Param, ...] = ()  # request parameters this family's conditioning reads (request.option(name))

    # the networks the generic runtime drives; every family names them so
    denoiser = UNET
    vae_decoder = VAE_DECODER
    vae_encoder = VAE_ENCODER

    @property
    def lora_parts(self) -> tuple[str, ...]:
        """The networks a LoRA adapts (and their model parts): the text encoders and the denoiser."""
        return (*(pair.network for pair in self.text_encoders), self.denoiser) if self.lora_loader else ()

    def part(self, name: str) -> Part:
        for part in self.parts:
            if part.name == name:
                return part
        raise KeyError(name)

    @property
    def model_parts(self) -> tuple[Part, ...]:
        return tuple(p for p in self.parts if p.kind == MODEL)

    @property
    def support_parts(self) -> tuple[Part, ...]:
        return tuple(p for p in self.parts if p.kind == SUPPORT)

    def check_networks(self, names: Sequence[str]) -> None:
        """ValueError unless `names` are exactly this family's networks (a manifest's components, say)."""
        if set(names) != set(self.network_names):
            raise ValueError(
                f"a {self.name} artifact holds networks {list(self.network_names)}, this one names {list(names)}"
            )

    def claims(self, index: Mapping[str, Any], configs: Mapping[str, Mapping[str, Any]]) -> bool:
        """True when a model directory with this model_index.json and part configs is of this family."""
        raise NotImplementedError

    def networks(self, configs: Mapping[str, Mapping[str, Any]]) -> dict[str, ComponentSpec]:
        """Every network's spec, by network name, from the part configs."""
        raise NotImplementedError

    def part_of(self, network: str) -> str:
        """The model part whose weights a network runs: the VAE's halves share "vae", the rest their own name."""
        return "vae" if network in (self.vae_decoder, self.vae_encoder) else network

    def module(self, spec: ComponentSpec, part: nn.Module) -> nn.Module:
        """A network's torch module with exactly its spec's IO, around its loaded model part (by the spec's role)."""
        from sdrt import network_modules as modules

        wrappers = {
            "text_encoder": lambda: modules.TextEncoderModule(part, spec),
            "denoiser": lambda: modules.UNetModule(part, spec),
            "controlnet": lambda: modules.ControlNetModule(part, spec),
            "image_encoder": lambda: modules.ImageEncoderModule(part),
            "vae_decoder": lambda: modules.VaeDecoderModule(part),
            "vae_encoder": lambda: modules.VaeEncoderModule(part),
        }
        if spec.role not in wrappers:
            raise ValueError(f"family {self.name} has no module for {spec.name} (role {spec.role})")
        return wrappers[spec.role]()

    def manifest_extras(self, index: Mapping[str, Any], configs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
        """The family's facts the runtime needs, read from model_index.json and the configs (manifest `extras`)."""
        return {key: index.get(key, default) for key, default in self.extras_defaults.items()}

    def check_extras(self, extras: Mapping[str, Any]) -> dict[str, Any]:
        """Validated manifest extras: exactly the family's keys, with their types; ValueError naming what is wrong."""
        unknown = set(extras) - set(self.extras_defaults)
        missing = set(self.extras_defaults) - set(extras)
        if unknown or missing:
            raise ValueError(
                f"manifest extras of family {self.name}: unknown {sorted(unknown)}, missing {sorted(missing)}; "
                f"the family has {sorted(self.extras_defaults)}"
            )
        for key, default in self.extras_defaults.items():
            value = extras[key]
            if type(value) is not type(default):
                raise ValueError(
                    f"manifest extra {key} of family {self.name} is {value!r}, not a {type(default).__name__}"
                )
        return dict(extras)

    def embedders(self, context: ConditioningContext) -> list[Embedder]:
        """The parts of this family's conditioning, in the order they run (and draw noise), for a loaded model."""
        raise NotImplementedError

    def check_request(self, request: ModedRequest) -> None:
        """Family-specific request checks (beyond the embedders'); ValueError naming the field."""
        if request.mode not in self.modes:
            needs = "an input image (image=...)" if "txt2img" not in self.modes else f"one of {list(self.modes)}"
            raise ValueError(f"a {self.description} runs {', '.join(self.modes)}, not {request.mode}: give {needs}")

    def latent_factor(self, configs: Mapping[str, Mapping[str, Any]]) -> int:
        """Pixels per latent cell (the VAE's downsampling)."""
        return latent_factor(configs["vae"])

    def vae_scaling_factor(self, configs: Mapping[str, Mapping[str, Any]]) -> float | None:
        """What latents are divided by before the VAE decoder (None: the family has no VAE)."""
        return float(configs["vae"].get("scaling_factor", 0.18215))

    def native_size(self, configs: Mapping[str, Mapping[str, Any]]) -> int:
        """Image size in pixels the UNet was trained at (512 for SD 1.x, 768 for SD 2.x-768, 1024 for SDXL)."""
        return int(configs["unet"].get("sample_size", 64)) * self.latent_factor(configs)

    def prediction_type(self, configs: Mapping[str, Mapping[str, Any]]) -> str:
        return str(configs["scheduler"].get("prediction_type", "epsilon"))
