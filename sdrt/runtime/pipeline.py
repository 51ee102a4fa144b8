"""The pipeline: requests -> conditioning -> start latents -> denoising stages with batched CFG -> VAE -> images.

A batch runs in three steps: `prepare` (seeds, generators, guidance rows), `sample` (each denoising stage:
its model's conditioner, its scheduler's timestep window, the loop) and `finish` (decode, images, infotexts).
A stage is a model (the base, or the SDXL refiner) and the share of the schedule it runs; the loop feeds
the UNet `{"sample", "timestep", **conditioning}` and never sees what the conditioning is.
"""

from __future__ import annotations

import inspect
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from sdrt.engines import Engine, call_in_chunks
from sdrt.excerpt import excerpt
from sdrt.manifest import Manifest
from sdrt.runtime.embeddings import EmbeddingLibrary
from sdrt.runtime.guidance import ClassifierFreeGuidance, Conditioning
from sdrt.runtime.hires import Hires, infotext_fields, upscale_image, upscale_latents
from sdrt.runtime.image_inputs import ImageInput, open_image, preprocess_image, preprocess_mask, size_from_image
from sdrt.runtime.images import Parameters, to_pil
from sdrt.runtime.init_latents import Inpainting, latent_mask, stage_timesteps
from sdrt.runtime.latents import generators, initial_noise, random_seed, sample_vae_latents
from sdrt.runtime.lora_prompts import strip_loras
from sdrt.runtime.loras import LoraLibrary
from sdrt.runtime.model import Model
from sdrt.runtime.prompts import PromptTokens
from sdrt.runtime.request import GenerationRequest
from sdrt.runtime.schedulers import canonical_sampler, make_scheduler, sampler_label
from sdrt.runtime.timing import StageClock, Timings
from sdrt.spec import ShapeRanges

log = logging.getLogger(__name__)

DEFAULT_MAX_IMAGES = 64
_ADDED_TIMINGS = ("text_encoder", "unet", "scheduler", "vae_decode", "vae_encode", "steps", "unet_calls")
_PLACEHOLDER_IMAGE = Image.new("RGB", (8, 8))  # the input of a hires second pass checked before its first pass ran

# callback(step index, timestep, latents (N, C, h, w)) after a denoising step
StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]


@dataclass(frozen=True)
class GenerationResult:
    """Images of one request, with the seeds that reproduce them and where the time went."""

    images: list[Image.Image]  # one per image, prompt-major
    seeds: list[int]  # seed of each image
    parameters: list[str]  # web UI infotext of each image (the PNG `parameters` chunk)
    timings: Timings  # seconds per stage
    request: GenerationRequest  # the validated request


@dataclass(frozen=True)
class Stage:
    """One denoising stage: a model and the share of the schedule it runs (diffusers' denoising_start/end)."""

    model: Model  # whose UNet denoises and whose conditioner conditions it
    start: float | None = None  # denoising_start: the stage begins where this share of the schedule is done
    end: float | None = None  # denoising_end: the stage hands over when this share of the schedule is done


@dataclass
class _Batch:
    """What every stage of one batch shares: its requests, guidance rows, generators and clock."""

    requests: list[GenerationRequest]
    cfg: ClassifierFreeGuidance
    seeds: list[int]
    gens: list[torch.Generator]
    clock: StageClock
    start: float  # perf_counter at the batch's start
    steps: int = 0  # denoising steps run so far, all stages
    unet_calls: int = 0  # UNet calls so far, all stages: the step a prompt's schedule (prompt editing) counts
    stop: Callable[[], bool] | None = None  # asked after each step: True ends the batch there (an interrupt)
    stopped: bool = False  # the batch was stopped before its last step
    later: list[Timings] = field(default_factory=list)  # the hires fix's second passes, counted in the timings

    @property
    def first(self) -> GenerationRequest:
        return self.requests[0]  # the settings all requests share


class Pipeline:
    """Text-to-image, image-to-image and inpainting on any backend's engines, for any model family.

    With an SDXL refiner (`refiner=`), a request with `refiner_switch_at` runs the base for that share of
    the schedule and the refiner for the rest (diffusers' ensemble of expert denoisers).
    """

    def __init__(
        self,
        model: Model,
        refiner: Model | None = None,
        max_images: int = DEFAULT_MAX_IMAGES,
        loras: LoraLibrary | None = None,
        model_dir: str | os.PathLike | None = None,
    ) -> None:
        if refiner is not None and refiner.family.name not in model.family.refiners:
            raise ValueError(
                f"a {refiner.family.description} cannot refine a {model.family.description} "
                f"({model.family.name} is refined by {', '.join(model.family.refiners) or 'no family'})"
            )
        self.model = model
        self.refiner = refiner
        self.max_images = max_images
        self.device = model.device
        self.loras = loras or LoraLibrary()  # the LoRA files prompts may name
        self._model_dir = model_dir  # the model a tensorrt artifact came from: LoRAs are fused into its weights
        self._lora: Any = None  # what switches LoRAs for this backend, made on first use
        self._fixed_loras: list[tuple[Path, float]] = []  # set_lora's, fused under every request's own
        self._fused: tuple[tuple[Path, float], ...] = ()  # what the engines hold now

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        backend: str = "onnxruntime",
        device: str = "cpu",
        ranges: ShapeRanges | None = None,
        refiner: str | os.PathLike | None = None,
        embeddings_dir: str | os.PathLike | None = None,
        lora_dir: str | os.PathLike | None = None,
        model_dir: str | os.PathLike | None = None,
        **options: Any,
    ) -> Pipeline:
        """Load an artifact (from `sdrt export`) or, for the torch backend, a diffusers model directory.

        `refiner` is a refiner artifact (or model directory) loaded the same way. `ranges` sets the shapes
        a model directory accepts (an artifact's come from its manifest). `embeddings_dir` holds
        textual-inversion embeddings, used where a prompt names one (nothing is re-exported or rebuilt);
        `lora_dir` LoRA files a prompt names as `<lora:name:weight>`, fused for that request only (torch
        backend, or tensorrt engines built with --refit, which also need `model_dir`: the model the artifact
        was exported from). Backend options (e.g. `optimization="all"` for onnxruntime) pass through to the backend.
        """
        embeddings = None if embeddings_dir is None else EmbeddingLibrary.load(embeddings_dir)
        model = Model.load(path, backend, device, ranges, embeddings=embeddings, **options)
        refiner_model = None
        if refiner is not None:
            refiner_model = Model.load(refiner, backend, device, ranges, embeddings=embeddings, **options)
        loras = None if lora_dir is None else LoraLibrary.load(lora_dir)
        return cls(model, refiner_model, loras=loras, model_dir=model_dir)

    # the base model's parts, under the names callers use
    @property
    def manifest(self) -> Manifest:
        return self.model.manifest

    @property
    def engines(self) -> dict[str, Engine]:
        return self.model.engines

    @property
    def family(self):
        return self.model.family

    @property
    def tokenizer(self):
        """The base model's first tokenizer."""
        return next(iter(self.model.tokenizers.values()))[0]

    @property
    def scheduler_config(self) -> dict[str, Any]:
        return self.model.scheduler_config

    @property
    def path(self) -> Path | None:
        return self.model.path

    @property
    def backend(self) -> str | None:
        return self.model.backend

    @property
    def model_name(self) -> str:
        return self.model.name

    @property
    def models(self) -> list[Model]:
        return [self.model] + ([self.refiner] if self.refiner is not None else [])

    def set_lora(
        self, lora: str | os.PathLike | None, scale: float = 1.0, model_dir: str | os.PathLike | None = None
    ) -> None:
        """Fuse a LoRA (safetensors, kohya or diffusers format) into the text encoders and UNet; None removes it.

        It stays fused under every request's own `<lora:...>` set (the two add up). Switching is exact: A,
        then B, then A again gives A's weights bit for bit. The torch backend fuses into its modules. The
        tensorrt backend refits engines built with `--refit`, which needs the model directory the artifact
        was exported from (`model_dir`). ONNX Runtime engines have their weights baked in: fuse the LoRA at
        export instead (`sdrt export --lora FILE:WEIGHT`).
        """
        from sdrt.export.lora import as_lora_set

        if model_dir is not None:
            self._model_dir = model_dir
        fixed = as_lora_set(lora, scale)
        self._switch([*fixed, *self._request_loras(())])
        self._fixed_loras = fixed

    def _request_loras(self, tags: Sequence[tuple[str, float]]) -> list[tuple[Path, float]]:
        return [(self.loras.resolve(name), weight) for name, weight in tags]

    def _switch(self, loras: Sequence[tuple[Path, float]]) -> None:
        """Make the base model's engines hold exactly these LoRAs (the base weights for none)."""
        wanted = tuple(sorted((Path(p), float(w)) for p, w in loras))
        if wanted == self._fused:
            return
        if self._lora is None:
            self._lora = self._lora_switch()
        self._fused = ()  # a failed switch leaves the base weights
        self._lora(list(wanted))
        self._fused = wanted

    def _lora_switch(self) -> Callable[[list[tuple[Path, float]]], Any]:
        """The function that fuses a LoRA set into this backend's engines; ValueError where it cannot."""
        family = self.family
        if not family.lora_loader:
            raise ValueError(f"LoRAs are not supported for {family.description}s")
        if self.backend == "torch":
            from sdrt.export.lora import LoraFuser

            # the torch backend's engines hold the diffusers modules the exporter would trace
            modules = {n: _inner_module(self.engines[n].module) for n in family.lora_parts}
            return LoraFuser(modules, family.lora_loader).set
        if self.backend == "tensorrt":
            from sdrt.engines.refit import LoraRefitter

            if self._model_dir is None:
                raise ValueError(
                    "LoRAs on the tensorrt backend need model_dir (--model-dir): the model the artifact came from"
                )
            # weight maps are cached beside the engines: in the cache directory they were loaded from, if any
            cache_dir = getattr(self.model.denoiser, "cache_dir", None)
            refitter = LoraRefitter(self.path, self.manifest, self._model_dir, cache_dir=cache_dir)
            return lambda loras: refitter.apply(self.engines, loras)
        raise ValueError(
            f"LoRAs need the torch backend or the tensorrt backend built with --refit, not {self.backend}, whose "
            "engines have their weights baked in: fuse the LoRA at export instead (sdrt export MODEL --lora "
            "FILE:WEIGHT), or run this request on the torch or tensorrt backend"
        )

    @property
    def clip_skip_max(self) -> int:
        """Largest clip_skip every text encoder of the base model allows."""
        return min(e.clip_skip_max for e in self.model.encoders.values())

    def generate(
        self,
        prompt: str | Sequence[str] = "",
        negative_prompt: str | Sequence[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | Sequence[float] | None = None,
        seed: int | None = None,
        num_images_per_prompt: int = 1,
        scheduler: str | None = None,
        eta: float = 0.0,
        clip_skip: int | None = None,
        image: ImageInput | None = None,
        mask_image: ImageInput | None = None,
        strength: float | None = None,
        callback: StepCallback | None = None,
        callback_steps: int = 1,
        progress: bool = False,
        refiner_switch_at: float | None = None,
        aesthetic_score: float = 6.0,
        negative_aesthetic_score: float = 2.5,
        noise_level: int = 0,
        image_embeds: torch.Tensor | None = None,
        hires: Hires | None = None,
    ) -> GenerationResult:
        """Generate images for one prompt or a list of prompts (a batch).

        Prompts use the web UI's emphasis syntax (`(word:1.3)`, `[word]`, `BREAK`) and may be longer
        than 75 tokens. negative_prompt and guidance_scale take one value for all prompts or one per
        prompt; prompts with different guidance scales still share every UNet call. clip_skip counts
        as diffusers does (1 = the web UI's "CLIP skip 2") and applies to negative prompts too.
        Steps and guidance default to the family's (30 and 7.5; SDXL 30 and 5.0).

        With `image`: image-to-image (strength default 0.8, SDXL 0.3); with `image` and `mask_image`:
        inpainting (strength default 1.0; white mask pixels are repainted). Images are resized to
        height x width, which default to the image's size rounded down to a multiple of 8; without an
        image they default to the size the artifact is tuned for. Image i uses seed + i; with no seed a
        random one is drawn and reported in the result. `callback(step, timestep, latents)` runs after
        every `callback_steps`-th step. With a refiner loaded, `refiner_switch_at=F` hands the latents to
        the refiner after the share F of the schedule; `aesthetic_score` and `negative_aesthetic_score`
        condition an SDXL refiner. On an unCLIP model, `image` (or its CLIP embedding `image_embeds`) conditions
        the UNet and the result is a variation of it, with `noise_level` noise added to the embedding; the prompt
        is optional there ("") and steps and guidance default to 20 and 10. `hires=Hires(scale=2.0)` is the web
        UI's hires fix: the images are upscaled and denoised again at the larger size (image-to-image at the
        hires strength).
        """
        request = self.request(
            prompt, negative_prompt, height, width, num_inference_steps, guidance_scale, seed,
            num_images_per_prompt, scheduler, eta, clip_skip, image, mask_image, strength,
            refiner_switch_at, aesthetic_score, negative_aesthetic_score, noise_level, image_embeds, hires,
        )  # fmt: skip
        return self.run(request, progress=progress, callback=callback, callback_steps=callback_steps)

    def request(
        self,
        prompt: str | Sequence[str] = "",
        negative_prompt: str | Sequence[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | Sequence[float] | None = None,
        seed: int | None = None,
        num_images_per_prompt: int = 1,
        scheduler: str | None = None,
        eta: float = 0.0,
        clip_skip: int | None = None,
        image: ImageInput | None = None,
        mask_image: ImageInput | None = None,
        strength: float | None = None,
        refiner_switch_at: float | None = None,
        aesthetic_score: float = 6.0,
        negative_aesthetic_score: float = 2.5,
        noise_level: int = 0,
        image_embeds: torch.Tensor | None = None,
        hires: Hires | None = None,
    ) -> GenerationRequest:
        """The checked, tokenized request `generate` would run, defaults filled in; ValueError naming a bad field."""
        family = self.family
        prompts = _texts("prompt", prompt)
        negatives = ("",) * len(prompts) if negative_prompt is None else _texts("negative_prompt", negative_prompt)
        if len(negatives) == 1:
            negatives *= len(prompts)
        if guidance_scale is None:
            guidance_scale = family.default_guidance
        scales = tuple(guidance_scale) if isinstance(guidance_scale, Sequence) else (guidance_scale,)
        if len(scales) == 1:
            scales *= len(prompts)
        init_image = None if image is None else open_image(image, "image")
        mask = None if mask_image is None else open_image(mask_image, "mask_image")
        default_height = default_width = self.manifest.ranges.opt_size
        if init_image is not None and not family.image_conditioned:
            default_height, default_width = size_from_image(init_image, self.manifest.ranges.latent_factor)
            if strength is None:
                strength = 1.0 if mask is not None else family.default_strength
        request = GenerationRequest(
            prompts=prompts,
            negative_prompts=negatives,
            height=default_height if height is None else height,
            width=default_width if width is None else width,
            steps=family.default_steps if num_inference_steps is None else num_inference_steps,
            guidance_scales=scales,
            seed=random_seed() if seed is None else seed,
            num_images_per_prompt=num_images_per_prompt,
            scheduler=scheduler,
            eta=eta,
            clip_skip=0 if clip_skip is None else clip_skip,
            image=init_image,
            mask_image=mask,
            strength=strength,
            refiner_switch_at=refiner_switch_at,
            aesthetic_score=aesthetic_score,
            negative_aesthetic_score=negative_aesthetic_score,
            noise_level=noise_level,
            image_embeds=image_embeds,
            hires=hires,
        )
        request = self.tokenized(request)
        self.check(request)
        return request

    def tokenized(self, request: GenerationRequest) -> GenerationRequest:
        """`request` carrying its tokens for every tokenizer of this pipeline's models (tokenized once).

        With hires, it carries its second pass too (tokenized as well), as the checks and the batch key see it.
        """
        if request.hires is not None and request.hires.strength > 0 and request.second_pass is None:
            request = replace(request, second_pass=self.tokenized(self._second_pass(request)))
        encoders = {k: e for m in self.models for k, e in m.tokenizer_keys().items()}
        missing = {k: e for k, e in encoders.items() if k not in request.tokens}
        if not missing:
            return request
        tokens = dict(request.tokens)
        # the text encoders read the prompts without their <lora:...> tags
        prompts = [strip_loras(p) for p in request.prompts]
        negatives = [strip_loras(n) for n in request.negative_prompts]
        for key, encoder in missing.items():
            tokens[key] = PromptTokens(
                encoder.tokenize(prompts, request.steps), encoder.tokenize(negatives, request.steps)
            )
        return replace(request, tokens=tokens)

    def stages(self, request: GenerationRequest) -> list[Stage]:
        """The denoising stages `request` runs: the base alone, or the base then the refiner."""
        switch = request.refiner_switch_at
        if switch is None:
            return [Stage(self.model)]
        if self.refiner is None:
            raise ValueError("refiner_switch_at needs a refiner: load the pipeline with refiner=REFINER_ARTIFACT")
        return [Stage(self.model, end=switch), Stage(self.refiner, start=switch)]

    def _second_pass(
        self, request: GenerationRequest, index: int | None = None, source: torch.Tensor | Image.Image | None = None
    ) -> GenerationRequest:
        """The hires fix's second pass: image-to-image at the target size, from upscaled latents or an image.

        With `index`, the pass of the request's image `index` alone (its prompt and seed) from `source`;
        without, the whole request's, from a placeholder of the right shape (for checks and the batch key).
        """
        hires = request.hires
        assert hires is not None  # callers check
        factor = self.manifest.ranges.latent_factor
        height, width = hires.geometry(request.height, request.width, factor).size
        prompts, negatives, scales = request.prompts, request.negative_prompts, request.guidance_scales
        count, seed = request.num_images_per_prompt, request.seed
        if index is not None:
            at = index // request.num_images_per_prompt
            prompts, negatives, scales = prompts[at : at + 1], negatives[at : at + 1], scales[at : at + 1]
            count, seed = 1, request.seed + index
        if hires.prompt is not None:
            prompts = (hires.prompt,) * len(prompts)
        if hires.negative_prompt is not None:
            negatives = (hires.negative_prompt,) * len(negatives)
        image = latents = None
        if isinstance(source, Image.Image):
            image = source
        elif source is not None:
            latents = source
        elif hires.latent:  # the placeholder: a tensor with a shape and no data
            latents = torch.empty(
                (count * len(prompts), self.model.latent_channels, height // factor, width // factor), device="meta"
            )
        else:
            image = _PLACEHOLDER_IMAGE
        return replace(
            request,
            prompts=prompts,
            negative_prompts=negatives,
            guidance_scales=scales,
            num_images_per_prompt=count,
            seed=seed,
            height=height,
            width=width,
            steps=hires.steps or request.steps,
            scheduler=hires.sampler or request.scheduler,
            strength=hires.strength,
            image=image,
            init_latents=latents,
            hires=None,
            tokens={},
            second_pass=None,
        )

    def check(self, request: GenerationRequest) -> None:
        """Raise ValueError unless this pipeline's engines can run `request` (with hires: both passes)."""
        request = self.tokenized(request)
        if request.hires is not None:
            height, width = request.hires.geometry(
                request.height, request.width, self.manifest.ranges.latent_factor
            ).size
            try:
                self.manifest.ranges.check_size(height, width)
            except ValueError as exc:
                raise ValueError(f"hires: the second pass's {exc}") from None
            if request.second_pass is not None:
                self.check(request.second_pass)
        if request.init_latents is not None:
            factor = self.manifest.ranges.latent_factor
            shape = (request.num_images, self.model.latent_channels, request.height // factor, request.width // factor)
            if tuple(request.init_latents.shape) != shape:
                raise ValueError(f"init_latents have shape {tuple(request.init_latents.shape)}, not {shape}")
        request.check_against(self.manifest.ranges, self.max_images)
        stages = self.stages(request)
        if len(stages) > 1 and request.mode == "inpaint":
            raise ValueError("inpainting runs on the base alone: leave out refiner_switch_at")
        self.family.check_request(request, self.model)
        if request.loras:
            self._request_loras(request.loras)  # every name resolves to a file
            if self._lora is None:
                self._lora = self._lora_switch()  # the backend can switch LoRAs (ONNX Runtime cannot)
        if self.manifest.inpainting and request.mode != "inpaint":
            raise ValueError(
                "this model's UNet is an inpainting UNet (latents + mask + masked image): give image and mask_image"
            )
        for index, stage in enumerate(stages):
            if stage.model is not self.model:
                request.check_against(stage.model.manifest.ranges, self.max_images)
            stage.model.conditioner.check(request)
            scheduler = make_scheduler(request.scheduler, stage.model.scheduler_config)
            scheduler.set_timesteps(request.steps)
            window = stage_timesteps(
                scheduler, request.steps, request.strength if index == 0 else None, stage.start, stage.end
            )
            if len(window) == 0:
                raise ValueError(
                    f"refiner_switch_at {request.refiner_switch_at} leaves the "
                    f"{'base' if index == 0 else 'refiner'} no step of {request.steps}; move it or add steps"
                )

    def batch_key(self, request: GenerationRequest) -> tuple:
        """Requests with equal keys can share every engine call without changing any of their images.

        Everything the whole batch shares is in it: mode, size, steps, sampler, eta, strength, the
        refiner switch, and each stage's conditioner's share (CLIP skip, the prompt chunk count).
        """
        request = self.tokenized(request)
        return (
            request.mode,
            request.height,
            request.width,
            request.steps,
            canonical_sampler(request.scheduler),
            request.eta,
            request.strength,
            request.refiner_switch_at,
            request.loras,  # one LoRA set per batch: it changes the weights every image runs on
            request.init_latents is not None,
            *(stage.model.conditioner.batch_key(request) for stage in self.stages(request)),
            self._hires_key(request),
        )

    def _hires_key(self, request: GenerationRequest) -> tuple | None:
        """What a hires batch shares: the upscale and, when it runs, the second pass's own batch key."""
        hires = request.hires
        if hires is None:
            return None
        geometry = hires.geometry(request.height, request.width, self.manifest.ranges.latent_factor)
        second = None if request.second_pass is None else self.batch_key(request.second_pass)
        return (hires.upscaler, geometry, hires.strength, second)

    def run(
        self,
        request: GenerationRequest,
        progress: bool = False,
        callback: StepCallback | None = None,
        callback_steps: int = 1,
    ) -> GenerationResult:
        """Run a validated request."""
        return self.run_batch([request], progress=progress, callback=callback, callback_steps=callback_steps)[0]

    def run_batch(
        self,
        requests: Sequence[GenerationRequest],
        progress: bool = False,
        callback: StepCallback | None = None,
        callback_steps: int = 1,
        stop: Callable[[], bool] | None = None,
    ) -> list[GenerationResult]:
        """Run validated requests with equal `batch_key`s together: one text-encoder call and one UNet call per step.

        Each image keeps its own prompt, negative prompt, guidance scale, seed and input image, so
        every request gets exactly the images it gets alone (up to float rounding). Each result
        carries the timings of the whole batch. `stop()` is asked after every step: when it says True the
        batch stops there and returns the images it has (the web UI's interrupt), skipping any later pass.
        """
        if isinstance(callback_steps, bool) or not isinstance(callback_steps, int) or callback_steps < 1:
            raise ValueError(f"callback_steps {callback_steps!r} is not a positive integer")
        if not requests:
            raise ValueError("run_batch needs at least one request")
        batch = self.prepare(requests)
        batch.stop = stop
        latents = self.sample(batch, progress, callback, callback_steps)
        if batch.first.hires is None or batch.stopped:
            return self.finish(batch, latents)
        return self._hires_pass(batch, latents, progress, callback, callback_steps)

    def _hires_pass(
        self,
        batch: _Batch,
        latents: torch.Tensor,
        progress: bool,
        callback: StepCallback | None,
        callback_steps: int,
    ) -> list[GenerationResult]:
        """The hires fix: upscale the first pass's latents (or its decoded images), then image-to-image each.

        Each image's second pass is its own request (its upscaled input, its prompt, its seed: fresh generators,
        as the web UI draws the second pass's noise); requests that can share a batch run as one.
        """
        first = batch.first
        hires = first.hires
        assert hires is not None  # run_batch checks
        factor = self.manifest.ranges.latent_factor
        geometry = hires.geometry(first.height, first.width, factor)
        if hires.latent:
            sources: list = list(upscale_latents(latents, hires, geometry, factor).split(1))
        else:
            sources = [upscale_image(image, hires, geometry, factor) for image in self._decode(batch, latents)]
        if hires.strength == 0:  # upscale only
            images = self._decode(batch, torch.cat(sources)) if hires.latent else sources
        else:
            passes, at = [], 0
            for r in batch.requests:
                # tokenized here, once: the batch key and run_batch read the same tokens
                passes += [self.tokenized(self._second_pass(r, i, sources[at + i])) for i in range(r.num_images)]
                at += r.num_images
            groups: dict[tuple, list[int]] = {}
            for i, p in enumerate(passes):
                groups.setdefault(self.batch_key(p), []).append(i)
            images = [None] * len(passes)
            for members in groups.values():
                results = self.run_batch([passes[i] for i in members], progress, callback, callback_steps, batch.stop)
                for i, result in zip(members, results, strict=True):
                    images[i] = result.images[0]
                batch.later.append(results[0].timings)
        extra = infotext_fields(hires, first.steps)
        return self._results(batch, images, extra=extra, strength=hires.strength)

    def prepare(self, requests: Sequence[GenerationRequest]) -> _Batch:
        """Tokens, one batch key, the guidance rows, and every image's seed and generator."""
        requests = [self.tokenized(r) for r in requests]
        if len(requests) > 1 and len({self.batch_key(r) for r in requests}) > 1:  # one request: nothing to compare
            raise ValueError("requests in one batch must have equal batch_key()s (size, steps, sampler, ...)")
        if requests[0].loras or self._fused:  # this batch's LoRAs fused in (the base model's), the last batch's out
            self._switch([*self._fixed_loras, *self._request_loras(requests[0].loras)])
        scales = [g for r in requests for g in r.per_image(r.guidance_scales)]
        seeds = [s for r in requests for s in r.seeds]
        clock = StageClock(sync=self._sync, device=self.device)  # CUDA events on a GPU: no stall per stage
        return _Batch(
            requests, ClassifierFreeGuidance(scales, self.device), seeds, generators(seeds), clock, time.perf_counter()
        )

    def sample(self, batch: _Batch, progress: bool, callback: StepCallback | None, callback_steps: int) -> torch.Tensor:
        """Every stage in turn: its conditioning, its scheduler's window of timesteps, the denoising loop."""
        first, clock = batch.first, batch.clock
        latents = inpainting = None
        for index, stage in enumerate(self.stages(first)):
            model = stage.model
            with clock.stage("text_encoder"):
                conditioning = model.conditioner.prepare(batch.requests, batch.cfg, batch.gens)
            scheduler = make_scheduler(first.scheduler, model.scheduler_config, seeds=batch.seeds)
            scheduler.set_timesteps(first.steps, device=self.device)
            timesteps = stage_timesteps(
                scheduler, first.steps, first.strength if index == 0 else None, stage.start, stage.end
            )
            if latents is None:
                latents, inpainting = self.initial_latents(model, batch, scheduler, timesteps)
            with clock.stage("denoise"):
                latents = self.denoise(
                    model, scheduler, timesteps, latents, conditioning, batch, inpainting, progress,
                    callback, callback_steps,
                )  # fmt: skip
            if batch.stopped:
                break
        return latents

    def finish(self, batch: _Batch, latents: torch.Tensor) -> list[GenerationResult]:
        """Decode with the last stage's VAE, convert to images, and write each image's infotext."""
        return self._results(batch, self._decode(batch, latents))

    def _decode(self, batch: _Batch, latents: torch.Tensor) -> list[Image.Image]:
        """Latents -> 8-bit images with the last stage's VAE decoder."""
        last = self.stages(batch.first)[-1].model
        with batch.clock.stage("vae_decode"):
            latents = latents / last.manifest.vae_scaling_factor
            images = call_in_chunks(last.engines[last.family.vae_decoder], {"latent": latents})["images"]
        return to_pil(images)

    def _results(
        self,
        batch: _Batch,
        pil: Sequence[Image.Image],
        extra: tuple[tuple[str, str], ...] = (),
        strength: float | None = None,
    ) -> list[GenerationResult]:
        """Each request's images with the batch's timings and each image's infotext (`extra`: more entries)."""
        first, clock = batch.first, batch.clock
        stages = self.stages(first)
        last = stages[-1].model
        s = clock.seconds
        timings = Timings(
            text_encoder=s.get("text_encoder", 0.0),
            unet=s.get("unet", 0.0),
            scheduler=s.get("denoise", 0.0) - s.get("unet", 0.0),
            vae_decode=s.get("vae_decode", 0.0),
            total=time.perf_counter() - batch.start,
            steps=batch.steps,
            unet_calls=clock.calls.get("unet", 0),
            vae_encode=s.get("vae_encode", 0.0),
        )
        for more in batch.later:  # stage by stage; the total already spans them
            timings = replace(
                timings,
                **{k: getattr(timings, k) + getattr(more, k) for k in _ADDED_TIMINGS},
            )
        label = sampler_label(first.scheduler, self.scheduler_config)
        prompts = [p for r in batch.requests for p in r.per_image(r.prompts)]
        negatives = [n for r in batch.requests for n in r.per_image(r.negative_prompts)]
        scales = [g for r in batch.requests for g in r.per_image(r.guidance_scales)]
        vae = last.manifest.vae or {}  # the VAE that decoded, as the web UI names it: "VAE: file, VAE hash: ..."
        refiner = None
        if len(stages) > 1:  # the web UI's "Refiner: name [hash]"
            refiner = f"{last.name} [{last.manifest.source_sha256[:10]}]"
        parameters = [
            Parameters(
                prompt=prompts[i],
                negative_prompt=negatives[i],
                steps=first.steps,
                sampler=label,
                guidance_scale=scales[i],
                seed=seed,
                width=first.width,
                height=first.height,
                model_hash=self.manifest.source_sha256[:10],
                model=self.model_name,
                clip_skip=first.clip_skip,
                denoising_strength=first.strength if strength is None else strength,
                refiner=refiner,
                refiner_switch_at=first.refiner_switch_at,
                vae=vae.get("name"),
                vae_hash=vae["sha256"][:10] if "sha256" in vae else None,
                extra=extra,
            ).infotext()
            for i, seed in enumerate(batch.seeds)
        ]
        results, at = [], 0
        for r in batch.requests:
            rows = slice(at, at + r.num_images)
            at += r.num_images
            results.append(
                GenerationResult(
                    images=list(pil[rows]), seeds=r.seeds, parameters=parameters[rows], timings=timings, request=r
                )
            )
        return results

    def initial_latents(
        self, model: Model, batch: _Batch, scheduler: Any, timesteps: torch.Tensor
    ) -> tuple[torch.Tensor, Inpainting | None]:
        """Latents (N, C, h, w) to start denoising from, and the inpainting state when inpainting.

        Random numbers are drawn from each image's generator in diffusers' order: the VAE sample of
        the input image, then the initial noise, then (inpainting) the VAE sample of the masked image.
        """
        requests, gens, clock = batch.requests, batch.gens, batch.clock
        first = batch.first  # size, mode and strength are shared
        factor, n = model.manifest.ranges.latent_factor, len(gens)
        shape = (model.latent_channels, first.height // factor, first.width // factor)
        if first.mode in ("txt2img", "variation"):  # a variation's image conditions the UNet, not its latents
            return initial_noise(gens, shape, self.device) * scheduler.init_noise_sigma, None
        scaling = model.manifest.vae_scaling_factor
        start_timestep = timesteps[:1].repeat(n)
        if first.init_latents is not None:  # the hires fix's second pass: latents in, as diffusers' img2img takes them
            image_latents = torch.cat([r.init_latents for r in requests]).to(self.device)
            return scheduler.add_noise(image_latents, initial_noise(gens, shape, self.device), start_timestep), None
        images = [preprocess_image(r.image, r.height, r.width, factor).to(self.device) for r in requests]
        if first.mode == "img2img":
            with clock.stage("vae_encode"):
                image_latents = sample_vae_latents(self._encode_per_image(model, requests, images), gens, scaling)
            noise = initial_noise(gens, shape, self.device)
            return scheduler.add_noise(image_latents, noise, start_timestep), None

        masks = [preprocess_mask(r.mask_image, r.height, r.width, factor).to(self.device) for r in requests]
        full_strength = first.strength == 1.0
        nine_channels = model.manifest.inpainting
        image_latents = masked_image_latents = None
        with clock.stage("vae_encode"):
            if not nine_channels or not full_strength:
                image_latents = sample_vae_latents(self._encode_per_image(model, requests, images), gens, scaling)
            noise = initial_noise(gens, shape, self.device)
            if nine_channels:
                masked = [image * (mask < 0.5) for image, mask in zip(images, masks, strict=True)]
                masked_image_latents = sample_vae_latents(
                    self._encode_per_image(model, requests, masked), gens, scaling
                )
            else:
                # diffusers encodes and samples the masked image even for a 4-channel UNet, which never
                # uses it; draw the same numbers so later per-step noise (ancestral samplers) matches
                initial_noise(gens, shape, self.device)
        if full_strength:
            latents = noise * scheduler.init_noise_sigma
        else:
            latents = scheduler.add_noise(image_latents, noise, start_timestep)
        mask_rows = [latent_mask(m, shape[1], shape[2], r.num_images) for m, r in zip(masks, requests, strict=True)]
        inpainting = Inpainting(
            mask=torch.cat(mask_rows),
            masked_image_latents=masked_image_latents,
            image_latents=None if nine_channels else image_latents,
            noise=noise,
        )
        return latents, inpainting

    def _encode_per_image(
        self, model: Model, requests: Sequence[GenerationRequest], images: list[torch.Tensor]
    ) -> torch.Tensor:
        """Latent Gaussian parameters (N, 2C, h, w): each request's image encoded once, one row per image."""
        encoder = model.engines[model.family.vae_encoder]
        rows = [
            call_in_chunks(encoder, {"images": image})["latent_parameters"].expand(r.num_images, -1, -1, -1)
            for r, image in zip(requests, images, strict=True)
        ]
        return torch.cat(rows)

    def denoise(
        self,
        model: Model,
        scheduler: Any,
        timesteps: torch.Tensor,
        latents: torch.Tensor,
        conditioning: Conditioning,
        batch: _Batch,
        inpainting: Inpainting | None = None,
        progress: bool = False,
        callback: StepCallback | None = None,
        callback_steps: int = 1,
    ) -> torch.Tensor:
        """The sampling loop: one batched-CFG UNet call per timestep, then the scheduler's step.

        `batch.steps` counts the steps run; the callback's step index goes on across stages.
        """
        unet, cfg, clock = model.denoiser, batch.cfg, batch.clock
        order = scheduler.order
        step_kwargs = _step_kwargs(scheduler, batch.gens, batch.first.eta)
        current: Conditioning | None = None
        for i, t in enumerate(tqdm(timesteps, desc="denoise", unit="step", disable=not progress)):
            step = conditioning.at(batch.unet_calls)  # prompt editing switches it; expanded again only then
            if step is not current:
                current, conditioned = step, cfg.expand(step.cond, step.uncond)
            batch.unet_calls += 1
            sample = scheduler.scale_model_input(latents, t)
            if inpainting is not None:
                sample = inpainting.unet_input(sample)
            timestep = t.to(torch.float32).expand(sample.shape[0]).contiguous()
            feeds = {**cfg.expand({"sample": sample, "timestep": timestep}), **conditioned}
            with clock.stage("unet"):
                noise = call_in_chunks(unet, feeds)["noise_pred"]
            latents = scheduler.step(cfg.combine(noise), t, latents, **step_kwargs, return_dict=False)[0]
            if inpainting is not None:
                latents = inpainting.blend(latents, scheduler, timesteps[i + 1] if i + 1 < len(timesteps) else None)
            if (i + 1) % order == 0:
                if callback is not None and batch.steps % callback_steps == 0:
                    callback(batch.steps, t, latents)
                batch.steps += 1
                if batch.stop is not None and i + 1 < len(timesteps) and batch.stop():
                    batch.stopped = True
                    break
        return latents

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def _inner_module(wrapper: Any) -> Any:
    """The diffusers/transformers module a torch backend component wraps (what a LoRA adapts)."""
    return wrapper.unet if hasattr(wrapper, "unet") else wrapper.text_encoder


def _texts(name: str, value: object) -> tuple[str, ...]:
    """One string or a sequence of strings as a tuple; ValueError naming the field otherwise."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Sequence):
        return tuple(value)
    raise ValueError(f"{name} {excerpt(value)} is not a string or a list of strings")


def _step_kwargs(scheduler: Any, gens: list[torch.Generator], eta: float) -> dict[str, Any]:
    """eta and generator for schedulers whose step takes them, as diffusers' prepare_extra_step_kwargs."""
    accepted = inspect.signature(scheduler.step).parameters
    kwargs: dict[str, Any] = {}
    if "eta" in accepted:
        kwargs["eta"] = eta
    if "generator" in accepted:
        kwargs["generator"] = gens
    return kwargs
