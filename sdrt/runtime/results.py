"""A request's result: its images, the seeds that reproduce them, each image's infotext, and where the time went."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from PIL import Image

from sdrt.runtime.images import Parameters
from sdrt.runtime.request import GenerationRequest
from sdrt.runtime.timing import (
    CONTROLNET,
    DENOISE,
    TEXT_ENCODER,
    UNET,
    UNET_SHALLOW,
    VAE_DECODE,
    VAE_ENCODE,
    StageClock,
    Timings,
)
from sdrt.schedulers import sampler_label

if TYPE_CHECKING:
    from sdrt.runtime.model import Model

log = logging.getLogger(__name__)

Fields = tuple[tuple[str, str], ...]  # "Key: value" entries of an infotext, in order
NetworkFields = Callable[[GenerationRequest], Fields]  # a request's extra networks as infotext entries
_UNSAFE = str.maketrans("", "", ":,")  # the web UI drops these from the names in its hash lists

# what adds up when a request's timings span several passes (the total is the passes' totals added, too)
_ADDED = (
    "text_encoder", "unet", "scheduler", "vae_decode", "vae_encode", "total", "steps", "unet_calls", "controlnet",
    "unet_shallow", "unet_shallow_calls",
)  # fmt: skip


@dataclass(frozen=True)
class GenerationResult:
    """Images of one request, with the seeds that reproduce them and where the time went."""

    images: list[Image.Image]  # one per image, prompt-major
    seeds: list[int]  # seed of each image
    parameters: list[str]  # web UI infotext of each image (the PNG `parameters` chunk)
    timings: Timings  # seconds per stage, of every batch the request ran in (all its passes)
    request: GenerationRequest  # the validated request


def batch_timings(clock: StageClock, started: float, steps: int) -> Timings:
    """The timings of one batch's pass from its clock (`started`: perf_counter when it began)."""
    s, calls = clock.seconds, clock.calls
    unet = s.get(UNET, 0.0) + s.get(UNET_SHALLOW, 0.0)
    return Timings(
        text_encoder=s.get(TEXT_ENCODER, 0.0),
        unet=unet,
        scheduler=s.get(DENOISE, 0.0) - unet - s.get(CONTROLNET, 0.0),
        vae_decode=s.get(VAE_DECODE, 0.0),
        total=time.perf_counter() - started,
        steps=steps,
        unet_calls=calls.get(UNET, 0) + calls.get(UNET_SHALLOW, 0),
        vae_encode=s.get(VAE_ENCODE, 0.0),
        controlnet=s.get(CONTROLNET, 0.0),
        unet_shallow=s.get(UNET_SHALLOW, 0.0),
        unet_shallow_calls=calls.get(UNET_SHALLOW, 0),
    )


def added(timings: Sequence[Timings]) -> Timings:
    """Timings of several passes, stage by stage."""
    first, *rest = timings
    for more in rest:
        first = replace(first, **{k: getattr(first, k) + getattr(more, k) for k in _ADDED})
    return first


def results(
    requests: Sequence[GenerationRequest],
    images: Sequence[Image.Image],
    timings: Timings,
    base: Model,
    last: Model,
    extra: Fields = (),
    strength: float | None = None,
    networks: NetworkFields | None = None,
) -> list[GenerationResult]:
    """Each request's images (`images` in order, request by request) with its seeds and infotexts.

    `base` is the model the request names (its hash and name in the infotext), `last` the one whose VAE decoded
    (the refiner's, after a hand-off); `extra` more infotext entries (the hires fix's); `networks` gives a
    request's LoRA and hypernetwork entries (`Lora hashes`, `Hypernet`, ...).
    """
    out, at = [], 0
    for r in requests:
        rows = list(images[at : at + r.num_images])
        at += r.num_images
        texts = infotexts(r, base, last, (*extra, *(networks(r) if networks is not None else ())), strength)
        out.append(GenerationResult(images=rows, seeds=r.seeds, parameters=texts, timings=timings, request=r))
    return out


def infotexts(
    request: GenerationRequest,
    base: Model,
    last: Model,
    extra: Fields = (),
    strength: float | None = None,
) -> list[str]:
    """The web UI's infotext of each image of a request (with `TI hashes` of the embeddings its texts use)."""
    vae = last.manifest.vae or {}  # the VAE that decoded, as the web UI names it: "VAE: file, VAE hash: ..."
    refiner = None
    if request.refiner_switch_at is not None:  # the web UI's "Refiner: name [hash]"
        refiner = f"{last.name} [{last.manifest.source_sha256[:10]}]"
    label = sampler_label(request.scheduler, base.scheduler_config)
    if request.tiling:  # the web UI writes "Tiling: True" for a seamless image
        extra = (*extra, ("Tiling", "True"))
    # the web UI ControlNet extension's entries: "ControlNet 0: "Module: canny, Model: name [hash], ...""
    extra = (*extra, *((f"ControlNet {i}", unit.infotext()) for i, unit in enumerate(request.control)))
    prompts = request.per_image(request.prompts)
    negatives = request.per_image(request.negative_prompts)
    scales = request.per_image(request.guidance_scales)
    return [
        Parameters(
            prompt=prompts[i],
            negative_prompt=negatives[i],
            steps=request.steps,
            sampler=label,
            guidance_scale=scales[i],
            seed=seed,
            width=request.width,
            height=request.height,
            model_hash=base.manifest.source_sha256[:10],
            model=base.name,
            clip_skip=request.clip_skip,
            denoising_strength=request.strength if strength is None else strength,
            refiner=refiner,
            refiner_switch_at=request.refiner_switch_at,
            vae=vae.get("name"),
            vae_hash=vae["sha256"][:10] if "sha256" in vae else None,
            extra=(*extra, *ti_hashes(request, base, i // request.num_images_per_prompt)),
        ).infotext()
        for i, seed in enumerate(request.seeds)
    ]


def ti_hashes(request: GenerationRequest, model: Model, prompt: int) -> Fields:
    """`TI hashes: "name: hash, ..."` for the embeddings a prompt and its negative prompt use, as the web UI writes."""
    used: dict[str, str] = {}
    for encoder in model.encoders.values():
        tokens = request.tokens.get(encoder.key)
        if encoder.vocabulary is None or tokens is None:
            continue
        for scheduled in (tokens.prompts[prompt], tokens.negatives[prompt]):
            ids = (i for part in scheduled.parts for chunk in part.ids for i in chunk)
            for name in encoder.vocabulary.used(ids):
                embedding = model.embeddings.loaded.get(name)
                if embedding is not None and name not in used:
                    try:
                        used[name] = embedding.short_hash
                    except OSError as exc:  # removed since it was read: the infotext goes without its hash
                        log.info("no hash for embedding %s: %s", name, exc)
    if not used:
        return ()
    return (("TI hashes", ", ".join(f"{name.translate(_UNSAFE)}: {h}" for name, h in used.items())),)


def network_fields(loras: Sequence[tuple[str, str]], hypernetworks: Sequence[tuple[str, str, float]]) -> Fields:
    """The web UI's entries for a request's LoRAs ((name, short hash)) and hypernetworks ((name, hash, multiplier))."""
    fields: list[tuple[str, str]] = []
    if loras:
        fields.append(("Lora hashes", ", ".join(f"{name.translate(_UNSAFE)}: {h}" for name, h in loras)))
    if hypernetworks:
        fields.append(("Hypernet", ", ".join(name for name, _, _ in hypernetworks)))
        fields.append(("Hypernet hash", ", ".join(h for _, h, _ in hypernetworks)))
        if any(m != 1.0 for _, _, m in hypernetworks):
            fields.append(("Hypernet strength", ", ".join(f"{m:g}" for _, _, m in hypernetworks)))
    return tuple(fields)
