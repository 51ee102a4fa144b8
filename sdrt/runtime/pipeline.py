"""The text-to-image pipeline: prompts -> text states -> denoising loop with batched CFG -> VAE -> images."""

from __future__ import annotations

import inspect
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from sdrt.components import TEXT_ENCODER, UNET, VAE_DECODER, latent_factor
from sdrt.engines import Engine, call_in_chunks, check_device, load_engines
from sdrt.files import read_json_object
from sdrt.manifest import MANIFEST_NAME, SCHEDULER_DIR, TOKENIZER_DIR, Manifest, read_manifest
from sdrt.model_dir import ModelDir
from sdrt.runtime.guidance import ClassifierFreeGuidance
from sdrt.runtime.images import Parameters, to_pil
from sdrt.runtime.latents import generators, initial_noise, random_seed
from sdrt.runtime.prompts import encode_texts, load_tokenizer
from sdrt.runtime.request import GenerationRequest
from sdrt.runtime.schedulers import make_scheduler, sampler_label
from sdrt.runtime.timing import StageClock, Timings
from sdrt.spec import ShapeRanges

log = logging.getLogger(__name__)

DEFAULT_MAX_IMAGES = 64


@dataclass(frozen=True)
class GenerationResult:
    """Images of one request, with the seeds that reproduce them and where the time went."""

    images: list[Image.Image]  # one per image, prompt-major
    seeds: list[int]  # seed of each image
    parameters: list[str]  # web UI infotext of each image (the PNG `parameters` chunk)
    timings: Timings  # seconds per stage
    request: GenerationRequest  # the validated request


class Pipeline:
    """Stable Diffusion text-to-image on any backend's engines."""

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
        self.manifest = manifest
        self.tokenizer = tokenizer
        self.scheduler_config = dict(scheduler_config)
        make_scheduler(None, self.scheduler_config)  # a bad config fails here, not at the first generation
        self.model_name = model_name
        self.max_images = max_images
        self.device = self.engines[UNET].device

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
        return cls(engines, manifest, tokenizer, scheduler_config, model_name=root.resolve().name)

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
        progress: bool = False,
    ) -> GenerationResult:
        """Generate images for one prompt or a list of prompts (a batch).

        negative_prompt and guidance_scale take one value for all prompts or one per prompt; prompts
        with different guidance scales still share every UNet call.

        height/width default to the size the artifact is tuned for (512 for a default SD 1.x export).
        Image i uses seed + i; with no seed a random one is drawn and reported in the result.
        """
        prompts = _texts("prompt", prompt)
        negatives = ("",) * len(prompts) if negative_prompt is None else _texts("negative_prompt", negative_prompt)
        if len(negatives) == 1:
            negatives *= len(prompts)
        scales = tuple(guidance_scale) if isinstance(guidance_scale, Sequence) else (guidance_scale,)
        if len(scales) == 1:
            scales *= len(prompts)
        request = GenerationRequest(
            prompts=prompts,
            negative_prompts=negatives,
            height=self.manifest.ranges.opt_size if height is None else height,
            width=self.manifest.ranges.opt_size if width is None else width,
            steps=num_inference_steps,
            guidance_scales=scales,
            seed=random_seed() if seed is None else seed,
            num_images_per_prompt=num_images_per_prompt,
            scheduler=scheduler,
            eta=eta,
        )
        request.check_against(self.manifest.ranges, self.max_images)
        return self.run(request, progress=progress)

    def run(self, request: GenerationRequest, progress: bool = False) -> GenerationResult:
        """Run a validated request."""
        start = time.perf_counter()
        clock = StageClock(sync=self._sync)
        prompts, negatives = request.per_image(request.prompts), request.per_image(request.negative_prompts)
        scales = request.per_image(request.guidance_scales)
        cfg = ClassifierFreeGuidance(scales, self.device)

        with clock.stage("text_encoder"):
            # one text-encoder batch in the UNet's order: negatives of guided samples, then all prompts
            texts = [negatives[i] for i in cfg.guided.tolist()] + prompts
            text_states = encode_texts(self.tokenizer, self.engines[TEXT_ENCODER], texts)

        scheduler = make_scheduler(request.scheduler, self.scheduler_config, seeds=request.seeds)
        gens = generators(request.seeds)
        latents = self.denoise(scheduler, text_states, cfg, request, gens, clock, progress)

        with clock.stage("vae_decode"):
            latents = latents / self.manifest.vae_scaling_factor
            images = call_in_chunks(self.engines[VAE_DECODER], {"latent": latents})["images"]
        pil = to_pil(images)
        total = time.perf_counter() - start
        s = clock.seconds
        timings = Timings(
            text_encoder=s.get("text_encoder", 0.0),
            unet=s.get("unet", 0.0),
            scheduler=s.get("denoise", 0.0) - s.get("unet", 0.0),
            vae_decode=s.get("vae_decode", 0.0),
            total=total,
            steps=request.steps,
        )
        label = sampler_label(request.scheduler, self.scheduler_config)
        parameters = [
            Parameters(
                prompt=prompts[i],
                negative_prompt=negatives[i],
                steps=request.steps,
                sampler=label,
                guidance_scale=scales[i],
                seed=seed,
                width=request.width,
                height=request.height,
                model_hash=self.manifest.source_sha256[:10],
                model=self.model_name,
            ).infotext()
            for i, seed in enumerate(request.seeds)
        ]
        return GenerationResult(
            images=pil, seeds=request.seeds, parameters=parameters, timings=timings, request=request
        )

    def denoise(
        self,
        scheduler: Any,
        text_states: torch.Tensor,
        cfg: ClassifierFreeGuidance,
        request: GenerationRequest,
        gens: list[torch.Generator],
        clock: StageClock,
        progress: bool = False,
    ) -> torch.Tensor:
        """The sampling loop: (N, C, h, w) latents from noise, one batched-CFG UNet call per step."""
        unet = self.engines[UNET]
        factor = self.manifest.ranges.latent_factor
        channels = unet.spec.attributes["out_channels"]
        with clock.stage("denoise"):
            scheduler.set_timesteps(request.steps, device=self.device)
            shape = (channels, request.height // factor, request.width // factor)
            latents = initial_noise(gens, shape, self.device) * scheduler.init_noise_sigma
            step_kwargs = _step_kwargs(scheduler, gens, request.eta)
            for t in tqdm(scheduler.timesteps, desc="denoise", unit="step", disable=not progress):
                sample = cfg.expand(scheduler.scale_model_input(latents, t))
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
        return latents

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


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
