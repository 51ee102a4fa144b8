"""The pipeline: prompts -> text states -> start latents -> denoising loop with batched CFG -> VAE -> images."""

from __future__ import annotations

import inspect
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from sdrt.components import TEXT_ENCODER, UNET, VAE_DECODER, VAE_ENCODER, latent_factor
from sdrt.engines import Engine, call_in_chunks, check_device, load_engines
from sdrt.files import read_json_object
from sdrt.manifest import MANIFEST_NAME, SCHEDULER_DIR, TOKENIZER_DIR, Manifest, read_manifest
from sdrt.model_dir import ModelDir
from sdrt.runtime.guidance import ClassifierFreeGuidance
from sdrt.runtime.image_inputs import ImageInput, open_image, preprocess_image, preprocess_mask, size_from_image
from sdrt.runtime.images import Parameters, to_pil
from sdrt.runtime.init_latents import Inpainting, latent_mask, strength_timesteps
from sdrt.runtime.latents import generators, initial_noise, random_seed, sample_vae_latents
from sdrt.runtime.prompts import chunk_count, encode_prompts, load_tokenizer, tokenize_prompts
from sdrt.runtime.request import GenerationRequest
from sdrt.runtime.schedulers import canonical_sampler, make_scheduler, sampler_label
from sdrt.runtime.timing import StageClock, Timings
from sdrt.runtime.vae_guard import VaeDecoderGuard
from sdrt.spec import ShapeRanges

log = logging.getLogger(__name__)

DEFAULT_MAX_IMAGES = 64

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


class Pipeline:
    """Stable Diffusion text-to-image, image-to-image and inpainting on any backend's engines."""

    def __init__(
        self,
        engines: Mapping[str, Engine],
        manifest: Manifest,
        tokenizer: Any,
        scheduler_config: Mapping[str, Any],
        model_name: str = "model",
        max_images: int = DEFAULT_MAX_IMAGES,
    ) -> None:
        self.engines = dict(engines)
        decoder = self.engines[VAE_DECODER]
        if not isinstance(decoder, VaeDecoderGuard):  # NaN/Inf from an fp16 decoder: decode again in float32
            self.engines[VAE_DECODER] = VaeDecoderGuard(decoder, fallback=getattr(decoder, "float32_copy", None))
        self.manifest = manifest
        self.tokenizer = tokenizer
        self.scheduler_config = dict(scheduler_config)
        make_scheduler(None, self.scheduler_config)  # a bad config fails here, not at the first generation
        self.model_name = model_name
        self.max_images = max_images
        self.device = self.engines[UNET].device
        self.path: Path | None = None  # where the pipeline was loaded from (set by `load`)
        self.backend: str | None = None  # the backend name (set by `load`)
        self._lora: Any = None  # what switches LoRAs for this backend, made on first use

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        backend: str = "onnxruntime",
        device: str = "cpu",
        ranges: ShapeRanges | None = None,
        **options: Any,
    ) -> Pipeline:
        """Load an artifact (from `sdrt export`) or, for the torch backend, a diffusers model directory.

        `ranges` sets the shapes a model directory accepts (an artifact's come from its manifest).
        Backend options (e.g. `optimization="all"` for onnxruntime) pass through to the backend.
        """
        root = Path(path)
        check_device(device)
        if (root / MANIFEST_NAME).is_file():
            manifest = read_manifest(root)
        elif (root / "model_index.json").is_file():
            model = ModelDir.open(root)
            factor = latent_factor(model.configs["vae"])
            manifest = Manifest.for_model(
                model, ranges or ShapeRanges(max_batch=8, min_size=64, max_size=4096, latent_factor=factor)
            )
        else:
            raise ValueError(
                f"{root} is neither an sdrt artifact (no {MANIFEST_NAME}) nor a diffusers model directory "
                "(no model_index.json)"
            )
        tokenizer = load_tokenizer(root / TOKENIZER_DIR)
        scheduler_config = read_json_object(root / SCHEDULER_DIR / "scheduler_config.json")
        engines = load_engines(root, manifest, backend, device, **options)
        pipe = cls(engines, manifest, tokenizer, scheduler_config, model_name=root.resolve().name)
        pipe.path, pipe.backend = root, backend
        return pipe

    def set_lora(
        self, lora: str | os.PathLike | None, scale: float = 1.0, model_dir: str | os.PathLike | None = None
    ) -> None:
        """Fuse a LoRA (safetensors, kohya or diffusers format) into the text encoder and UNet; None removes it.

        Switching is exact: A, then B, then A again gives A's weights bit for bit. The torch backend
        fuses into its modules. The tensorrt backend refits engines built with `--refit`, which needs
        the model directory the artifact was exported from (`model_dir`). ONNX Runtime engines have
        their weights baked in: fuse the LoRA into the model and export that instead.
        """
        if self._lora is None:
            self._lora = self._lora_switch(model_dir)
        self._lora(lora, scale)

    def _lora_switch(self, model_dir: str | os.PathLike | None) -> Callable[[Any, float], Any]:
        if self.backend == "torch":
            from sdrt.export.lora import LoraFuser

            # the torch backend's engines hold the diffusers modules the exporter would trace
            fuser = LoraFuser(self.engines[TEXT_ENCODER].module.text_encoder, self.engines[UNET].module.unet)
            return fuser.set
        if self.backend == "tensorrt":
            from sdrt.engines.refit import LoraRefitter

            if model_dir is None:
                raise ValueError("set_lora on the tensorrt backend needs model_dir: the model the artifact came from")
            refitter = LoraRefitter(self.path, self.manifest, model_dir)
            return lambda lora, scale: refitter.apply(self.engines, lora, scale)
        raise ValueError(
            f"LoRA switching needs the torch backend or the tensorrt backend built with --refit, not {self.backend}; "
            "ONNX Runtime engines have their weights baked in"
        )

    @property
    def clip_skip_max(self) -> int:
        """Largest clip_skip the text encoder allows (its layer count minus one)."""
        return int(self.engines[TEXT_ENCODER].spec.attributes["num_layers"]) - 1

    def generate(
        self,
        prompt: str | Sequence[str],
        negative_prompt: str | Sequence[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 30,
        guidance_scale: float | Sequence[float] = 7.5,
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
    ) -> GenerationResult:
        """Generate images for one prompt or a list of prompts (a batch).

        Prompts use the web UI's emphasis syntax (`(word:1.3)`, `[word]`, `BREAK`) and may be longer
        than 75 tokens. negative_prompt and guidance_scale take one value for all prompts or one per
        prompt; prompts with different guidance scales still share every UNet call. clip_skip counts
        as diffusers does (1 = the web UI's "CLIP skip 2") and applies to negative prompts too.

        With `image`: image-to-image (strength default 0.8); with `image` and `mask_image`: inpainting
        (strength default 1.0; white mask pixels are repainted). Images are resized to height x width,
        which default to the image's size rounded down to a multiple of 8; without an image they
        default to the size the artifact is tuned for. Image i uses seed + i; with no seed a random one
        is drawn and reported in the result. `callback(step, timestep, latents)` runs after every
        `callback_steps`-th step.
        """
        request = self.request(
            prompt, negative_prompt, height, width, num_inference_steps, guidance_scale, seed,
            num_images_per_prompt, scheduler, eta, clip_skip, image, mask_image, strength,
        )  # fmt: skip
        return self.run(request, progress=progress, callback=callback, callback_steps=callback_steps)

    def request(
        self,
        prompt: str | Sequence[str],
        negative_prompt: str | Sequence[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 30,
        guidance_scale: float | Sequence[float] = 7.5,
        seed: int | None = None,
        num_images_per_prompt: int = 1,
        scheduler: str | None = None,
        eta: float = 0.0,
        clip_skip: int | None = None,
        image: ImageInput | None = None,
        mask_image: ImageInput | None = None,
        strength: float | None = None,
    ) -> GenerationRequest:
        """The checked request `generate` would run, with its defaults filled in; ValueError naming a bad field."""
        prompts = _texts("prompt", prompt)
        negatives = ("",) * len(prompts) if negative_prompt is None else _texts("negative_prompt", negative_prompt)
        if len(negatives) == 1:
            negatives *= len(prompts)
        scales = tuple(guidance_scale) if isinstance(guidance_scale, Sequence) else (guidance_scale,)
        if len(scales) == 1:
            scales *= len(prompts)
        init_image = None if image is None else open_image(image, "image")
        mask = None if mask_image is None else open_image(mask_image, "mask_image")
        default_height = default_width = self.manifest.ranges.opt_size
        if init_image is not None:
            default_height, default_width = size_from_image(init_image, self.manifest.ranges.latent_factor)
            if strength is None:
                strength = 1.0 if mask is not None else 0.8
        request = GenerationRequest(
            prompts=prompts,
            negative_prompts=negatives,
            height=default_height if height is None else height,
            width=default_width if width is None else width,
            steps=num_inference_steps,
            guidance_scales=scales,
            seed=random_seed() if seed is None else seed,
            num_images_per_prompt=num_images_per_prompt,
            scheduler=scheduler,
            eta=eta,
            clip_skip=0 if clip_skip is None else clip_skip,
            image=init_image,
            mask_image=mask,
            strength=strength,
        )
        self.check(request)
        return request

    def check(self, request: GenerationRequest) -> None:
        """Raise ValueError unless this pipeline's engines can run `request`."""
        request.check_against(self.manifest.ranges, self.max_images)
        if request.clip_skip > self.clip_skip_max:
            raise ValueError(
                f"clip_skip {request.clip_skip} is outside 0..{self.clip_skip_max} "
                f"(the text encoder has {self.clip_skip_max + 1} layers)"
            )
        if self.manifest.inpainting and request.mode != "inpaint":
            raise ValueError(
                "this model's UNet is an inpainting UNet (latents + mask + masked image): give image and mask_image"
            )
        ranges = self.engines[TEXT_ENCODER].ranges
        for field, texts in (("negative_prompt", request.negative_prompts), ("prompt", request.prompts)):
            tokenize_prompts(self.tokenizer, texts, ranges.text_length, ranges.max_text_chunks, field=field)

    def batch_key(self, request: GenerationRequest) -> tuple:
        """Requests with equal keys can share every engine call without changing any of their images.

        Everything the whole batch shares is in it: mode, size, steps, sampler, eta, strength, CLIP
        skip, and the prompt chunk count (a batch pads every prompt to its longest one's chunks).
        """
        engine = self.engines[TEXT_ENCODER]
        chunks = chunk_count(self.tokenizer, _encoded_texts(request), engine.ranges.text_length)
        return (
            request.mode,
            request.height,
            request.width,
            request.steps,
            canonical_sampler(request.scheduler),
            request.eta,
            request.strength,
            request.clip_skip,
            chunks,
        )

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
    ) -> list[GenerationResult]:
        """Run validated requests with equal `batch_key`s together: one text-encoder call and one UNet call per step.

        Each image keeps its own prompt, negative prompt, guidance scale, seed and input image, so
        every request gets exactly the images it gets alone (up to float rounding). Each result
        carries the timings of the whole batch.
        """
        if isinstance(callback_steps, bool) or not isinstance(callback_steps, int) or callback_steps < 1:
            raise ValueError(f"callback_steps {callback_steps!r} is not a positive integer")
        if not requests:
            raise ValueError("run_batch needs at least one request")
        if len(requests) > 1 and len({self.batch_key(r) for r in requests}) > 1:  # one request: nothing to compare
            raise ValueError("requests in one batch must have equal batch_key()s (size, steps, sampler, ...)")
        start = time.perf_counter()
        clock = StageClock(sync=self._sync, device=self.device)  # CUDA events on a GPU: no stall per stage
        first = requests[0]  # the settings all requests share
        prompts = [p for r in requests for p in r.per_image(r.prompts)]
        negatives = [n for r in requests for n in r.per_image(r.negative_prompts)]
        scales = [g for r in requests for g in r.per_image(r.guidance_scales)]
        seeds = [s for r in requests for s in r.seeds]
        cfg = ClassifierFreeGuidance(scales, self.device)

        with clock.stage("text_encoder"):
            # one text-encoder batch in the UNet's order: negatives of guided samples, then all prompts
            texts = [negatives[i] for i in cfg.guided.tolist()] + prompts
            text_states = encode_prompts(self.tokenizer, self.engines[TEXT_ENCODER], texts, first.clip_skip)

        scheduler = make_scheduler(first.scheduler, self.scheduler_config, seeds=seeds)
        scheduler.set_timesteps(first.steps, device=self.device)
        timesteps = strength_timesteps(scheduler, first.steps, first.strength)
        gens = generators(seeds)
        latents, inpainting = self.initial_latents(requests, scheduler, timesteps, gens, clock)
        step_kwargs = _step_kwargs(scheduler, gens, first.eta)
        with clock.stage("denoise"):
            latents = self.denoise(
                scheduler, timesteps, latents, text_states, cfg, step_kwargs, clock, inpainting, progress,
                callback, callback_steps,
            )  # fmt: skip

        with clock.stage("vae_decode"):
            latents = latents / self.manifest.vae_scaling_factor
            images = call_in_chunks(self.engines[VAE_DECODER], {"latent": latents})["images"]
        pil = to_pil(images)
        s = clock.seconds
        timings = Timings(
            text_encoder=s.get("text_encoder", 0.0),
            unet=s.get("unet", 0.0),
            scheduler=s.get("denoise", 0.0) - s.get("unet", 0.0),
            vae_decode=s.get("vae_decode", 0.0),
            total=time.perf_counter() - start,
            steps=first.steps_run,
            vae_encode=s.get("vae_encode", 0.0),
        )
        label = sampler_label(first.scheduler, self.scheduler_config)
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
                denoising_strength=first.strength,
            ).infotext()
            for i, seed in enumerate(seeds)
        ]
        results, at = [], 0
        for r in requests:
            rows = slice(at, at + r.num_images)
            at += r.num_images
            results.append(
                GenerationResult(
                    images=pil[rows], seeds=r.seeds, parameters=parameters[rows], timings=timings, request=r
                )
            )
        return results

    def initial_latents(
        self,
        requests: Sequence[GenerationRequest],
        scheduler: Any,
        timesteps: torch.Tensor,
        gens: list[torch.Generator],
        clock: StageClock,
    ) -> tuple[torch.Tensor, Inpainting | None]:
        """Latents (N, C, h, w) to start denoising from, and the inpainting state when inpainting.

        Random numbers are drawn from each image's generator in diffusers' order: the VAE sample of
        the input image, then the initial noise, then (inpainting) the VAE sample of the masked image.
        """
        first = requests[0]  # size, mode and strength are shared
        factor, n = self.manifest.ranges.latent_factor, len(gens)
        channels = self.engines[VAE_DECODER].spec.attributes["latent_channels"]
        shape = (channels, first.height // factor, first.width // factor)
        if first.mode == "txt2img":
            return initial_noise(gens, shape, self.device) * scheduler.init_noise_sigma, None
        scaling = self.manifest.vae_scaling_factor
        images = [preprocess_image(r.image, r.height, r.width, factor).to(self.device) for r in requests]
        start_timestep = timesteps[:1].repeat(n)
        if first.mode == "img2img":
            with clock.stage("vae_encode"):
                image_latents = sample_vae_latents(self._encode_per_image(requests, images), gens, scaling)
            noise = initial_noise(gens, shape, self.device)
            return scheduler.add_noise(image_latents, noise, start_timestep), None

        masks = [preprocess_mask(r.mask_image, r.height, r.width, factor).to(self.device) for r in requests]
        full_strength = first.strength == 1.0
        nine_channels = self.manifest.inpainting
        image_latents = masked_image_latents = None
        with clock.stage("vae_encode"):
            if not nine_channels or not full_strength:
                image_latents = sample_vae_latents(self._encode_per_image(requests, images), gens, scaling)
            noise = initial_noise(gens, shape, self.device)
            if nine_channels:
                masked = [image * (mask < 0.5) for image, mask in zip(images, masks, strict=True)]
                masked_image_latents = sample_vae_latents(self._encode_per_image(requests, masked), gens, scaling)
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

    def _encode_per_image(self, requests: Sequence[GenerationRequest], images: list[torch.Tensor]) -> torch.Tensor:
        """Latent Gaussian parameters (N, 2C, h, w): each request's image encoded once, one row per image."""
        rows = [self._encode(image).expand(r.num_images, -1, -1, -1) for r, image in zip(requests, images, strict=True)]
        return torch.cat(rows)

    def denoise(
        self,
        scheduler: Any,
        timesteps: torch.Tensor,
        latents: torch.Tensor,
        text_states: torch.Tensor,
        cfg: ClassifierFreeGuidance,
        step_kwargs: Mapping[str, Any],
        clock: StageClock,
        inpainting: Inpainting | None = None,
        progress: bool = False,
        callback: StepCallback | None = None,
        callback_steps: int = 1,
    ) -> torch.Tensor:
        """The sampling loop: one batched-CFG UNet call per timestep, then the scheduler's step."""
        unet = self.engines[UNET]
        order = scheduler.order
        for i, t in enumerate(tqdm(timesteps, desc="denoise", unit="step", disable=not progress)):
            sample = scheduler.scale_model_input(latents, t)
            if inpainting is not None:
                sample = inpainting.unet_input(sample)
            sample = cfg.expand(sample)
            with clock.stage("unet"):
                noise = call_in_chunks(
                    unet,
                    {
                        "sample": sample,
                        "timestep": t.to(torch.float32).expand(sample.shape[0]).contiguous(),
                        "encoder_hidden_states": text_states,
                    },
                )["noise_pred"]
            latents = scheduler.step(cfg.combine(noise), t, latents, **step_kwargs, return_dict=False)[0]
            if inpainting is not None:
                latents = inpainting.blend(latents, scheduler, timesteps[i + 1] if i + 1 < len(timesteps) else None)
            if callback is not None and (i + 1) % order == 0 and (i // order) % callback_steps == 0:
                callback(i // order, t, latents)
        return latents

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        """VAE encoder: images (N, 3, H, W) in [-1, 1] -> latent Gaussian parameters (N, 2C, h, w)."""
        return call_in_chunks(self.engines[VAE_ENCODER], {"images": images})["latent_parameters"]

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def _encoded_texts(request: GenerationRequest) -> list[str]:
    """The texts a request sends to the text encoder: negatives of guided prompts, and the prompts."""
    negatives = [n for n, g in zip(request.negative_prompts, request.guidance_scales, strict=True) if g > 1.0]
    return [*negatives, *request.prompts]


def _texts(name: str, value: object) -> tuple[str, ...]:
    """One string or a sequence of strings as a tuple; ValueError naming the field otherwise."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Sequence):
        return tuple(value)
    raise ValueError(f"{name} {value!r} is not a string or a list of strings")


def _step_kwargs(scheduler: Any, gens: list[torch.Generator], eta: float) -> dict[str, Any]:
    """eta and generator for schedulers whose step takes them, as diffusers' prepare_extra_step_kwargs."""
    accepted = inspect.signature(scheduler.step).parameters
    kwargs: dict[str, Any] = {}
    if "eta" in accepted:
        kwargs["eta"] = eta
    if "generator" in accepted:
        kwargs["generator"] = gens
    return kwargs
