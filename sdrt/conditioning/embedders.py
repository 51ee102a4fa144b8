"""Conditioning as parts: embedders turn a batch of requests into named UNet inputs of a kind, and a conditioner
composes a family's embedders.

A family declares its embedders (`Family.embedders(context)`): text states and pooled text (`TextEmbedder`),
SDXL's size and crop ids, unCLIP's noised image embedding, ... Each gets the narrowest context it needs
(`ConditioningContext`: its prompt encoders, the engines it calls, the family's manifest extras, the support
directories the loader opened), never the loaded model, and reads requests through `ConditionedRequest`, never
the runtime's request class. The conditioner runs them in order (an embedder that draws noise draws it in
diffusers' order), merges their inputs, and keeps the step schedule prompt editing makes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from PIL import Image

from sdrt.conditioning.guidance import ClassifierFreeGuidance, Conditioning
from sdrt.conditioning.prompts import PromptEncoder, PromptTokens, RowCache
from sdrt.engines import Engine
from sdrt.lazy import deferred

if TYPE_CHECKING:
    import torch
else:
    torch = deferred("torch")


class ConditionedRequest(Protocol):
    """What embedders read of a request: its prompts' tokens, sizes, images and the options families declare."""

    tokens: Mapping[str, PromptTokens]  # tokenizer key -> the prompts' and negative prompts' tokens
    guidance_scales: tuple[float, ...]  # per prompt
    clip_skip: int
    height: int
    width: int
    image: Image.Image | None  # the input image (unCLIP: the image to vary)

    @property
    def num_images(self) -> int: ...

    def per_image(self, values: tuple) -> list: ...

    def option(self, name: str) -> Any:
        """The value of a parameter a family or feature declares (`sdrt.params`), e.g. "noise_level"."""


@dataclass(frozen=True)
class ConditioningContext:
    """What a family's embedders may use of a loaded model; nothing else of it reaches them."""

    encoders: Mapping[str, PromptEncoder]  # text-encoder network -> its tokenizer, engine and token table
    engines: Mapping[str, Engine]  # the model's engines, read at each call (a timing wrapper is then seen)
    extras: Mapping[str, Any] = field(default_factory=dict)  # the family's manifest extras
    support: Mapping[str, Path] = field(default_factory=dict)  # support part -> its directory (processors, ...)


@dataclass
class EmbedBatch:
    """One batch as embedders see it: its requests, guidance rows, the images' generators and a row cache."""

    requests: Sequence[ConditionedRequest]
    cfg: ClassifierFreeGuidance
    generators: Sequence[torch.Generator]  # one per image, in order: embedders that draw noise draw from these
    cache: RowCache = field(default_factory=dict)  # text-encoder rows encoded so far, shared by every part


class Embedder(Protocol):
    """One part of a family's conditioning: a batch of requests -> named UNet inputs (`Conditioning.kinds`)."""

    def check(self, request: ConditionedRequest) -> None:
        """ValueError unless this part can condition `request` (prompt length, CLIP skip, noise level, ...)."""

    def batch_key(self, request: ConditionedRequest) -> tuple:
        """What requests must share for this part to condition them in one batch."""

    def embed(self, batch: EmbedBatch) -> Conditioning:
        """The inputs of every image (cond rows) and guided image (uncond rows); a schedule if they change by step."""


class Conditioner:
    """A family's conditioning: its embedders run in order, their inputs merged into one `Conditioning`."""

    def __init__(self, embedders: Sequence[Embedder]) -> None:
        if not embedders:
            raise ValueError("a conditioner needs at least one embedder")
        self.embedders = tuple(embedders)

    def check(self, request: ConditionedRequest) -> None:
        for embedder in self.embedders:
            embedder.check(request)

    def batch_key(self, request: ConditionedRequest) -> tuple:
        return tuple(embedder.batch_key(request) for embedder in self.embedders)

    def prepare(
        self,
        requests: Sequence[ConditionedRequest],
        cfg: ClassifierFreeGuidance,
        generators: Sequence[torch.Generator] = (),
    ) -> Conditioning:
        """The conditioning of a batch. `generators` (one per image) are drawn from in the embedders' order."""
        batch = EmbedBatch(requests, cfg, generators)
        conditioning = self.embedders[0].embed(batch)
        for embedder in self.embedders[1:]:
            conditioning = conditioning.merged(embedder.embed(batch))
        return conditioning

    def part(self, kind: type) -> Any:
        """The first embedder of a type (for callers that need one part's own facts)."""
        for embedder in self.embedders:
            if isinstance(embedder, kind):
                return embedder
        raise KeyError(kind.__name__)
