"""The runner: the loaded models and their weight state, and one pass of a batch through them.

A pass is: the LoRAs the batch names fused in, one generator per image (continued from an earlier pass when it
has states), the model's conditioning for every row, the start latents the plan says (noise, an encoded image,
an inpainting state, given latents), the denoiser built from wrappers around the UNet engine, and the loop.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from sdrt.conditioning.guidance import CONCAT, ClassifierFreeGuidance, Conditioning
from sdrt.engines import call_in_chunks
from sdrt.runtime.control_images import hint_tensor
from sdrt.runtime.control_residuals import ControlNetEngine, ControlNetResiduals, Use, residual_weights
from sdrt.runtime.controlnets import ControlNetLibrary
from sdrt.runtime.denoiser import ConcatChannels, Guided, RowDenoiser, UNetCall
from sdrt.runtime.image_inputs import preprocess_image, preprocess_mask
from sdrt.runtime.images import to_pil
from sdrt.runtime.init_latents import Inpainting, latent_mask
from sdrt.runtime.latents import generators, initial_noise, sample_vae_latents
from sdrt.runtime.loras import LoraLibrary
from sdrt.runtime.model import Model
from sdrt.runtime.plan import CONTINUE, IMAGE, LATENTS, NOISE, Plan
from sdrt.runtime.request import GenerationRequest
from sdrt.runtime.sampling import AfterStep, Progress, denoise, step_kwargs
from sdrt.runtime.timing import StageClock
from sdrt.runtime.weights import LoraWeights
from sdrt.schedulers import make_scheduler
from sdrt.upscalers.library import UpscalerLibrary


@dataclass
class PassOutput:
    """What one pass of a batch left: the latents of every image, its generators and clock, how far it got."""

    requests: list[GenerationRequest]
    model: Model  # whose UNet denoised (and whose VAE decodes)
    latents: torch.Tensor  # (N, C, h, w), scaled
    generators: list[torch.Generator]  # one per image, as the pass left them (a refiner pass draws on from them)
    clock: StageClock
    started: float  # perf_counter when the pass began
    progress: Progress
    calls: int  # UNet calls so far, counting earlier passes' (prompt-editing schedules count on)

    @property
    def plan(self) -> Plan:
        return self.requests[0].plan


class Runner:
    """Loaded models ("base", and "refiner" when one is loaded) with the LoRAs the base holds; runs passes."""

    def __init__(
        self,
        models: dict[str, Model],
        loras: LoraLibrary | None = None,
        model_dir: str | os.PathLike | None = None,
        upscalers: UpscalerLibrary | None = None,
        controlnets: ControlNetLibrary | None = None,
    ) -> None:
        self.models = models
        self.upscalers = upscalers  # the GAN upscalers a hires fix may name
        self.base = models["base"]
        self.device = self.base.device
        self.loras = loras or LoraLibrary()  # the LoRA files prompts may name
        self.controlnets = controlnets or ControlNetLibrary(self.base, options=self.base.options)
        self.weights = LoraWeights(self.base, model_dir)  # the LoRAs the base model's engines hold
        self.fixed_loras: list[tuple[Path, float]] = []  # set_lora's, fused under every request's own

    def request_loras(self, tags: Sequence[tuple[str, float]]) -> list[tuple[Path, float]]:
        """The files of a request's <lora:name:weight> tags; ValueError naming one that is not there."""
        return [(self.loras.resolve(name), weight) for name, weight in tags]

    def run(self, requests: Sequence[GenerationRequest], progress: Progress) -> PassOutput:
        """One pass of `requests` (equal plan keys): one text-encoder call, one UNet call per step for all."""
        requests = list(requests)
        first, plan = requests[0], requests[0].plan
        model = self.models[plan.stage]
        if plan.stage == "base" and (first.loras or self.weights.held):  # this batch's LoRAs in, the last one's out
            self.weights.switch([*self.fixed_loras, *self.request_loras(first.loras)])
        started = time.perf_counter()
        seeds = [s for r in requests for s in r.seeds]
        gens = generators(seeds)
        states = [s for r in requests for s in (r.generator_states or ())]
        if states:
            for g, state in zip(gens, states, strict=True):
                g.set_state(state)
        cfg = ClassifierFreeGuidance([g for r in requests for g in r.per_image(r.guidance_scales)], self.device)
        clock = StageClock(sync=self._sync, device=self.device)  # CUDA events on a GPU: no stall per stage
        with clock.stage("text_encoder"):
            conditioning = model.conditioner.prepare(requests, cfg, gens)
        scheduler = make_scheduler(first.scheduler, model.scheduler_config, seeds=seeds)
        scheduler.set_timesteps(first.steps, device=self.device)
        timesteps = plan.window(scheduler, first)
        latents, conditioning, after = self.start(
            model, plan, requests, gens, clock, scheduler, timesteps, conditioning
        )
        unet: RowDenoiser = ConcatChannels(UNetCall(model.engines_for(first.tiling)[model.family.denoiser], clock))
        nets = self.control(requests)
        if nets:  # ControlNets add their residuals inside the UNet, each run once per step for its rows
            unet = ControlNetResiduals(unet, nets, clock)
        denoiser = Guided(unet, cfg, conditioning, first.calls_before)
        progress.steps = first.steps_before
        with clock.stage("denoise"):
            latents = denoise(
                denoiser, scheduler, timesteps, latents, step_kwargs(scheduler, gens, first.eta), progress, after
            )
        return PassOutput(requests, model, latents, gens, clock, started, progress, denoiser.calls)

    def control(self, requests: Sequence[GenerationRequest]) -> list[tuple[ControlNetEngine, list[Use]]]:
        """The batch's ControlNets, each with its uses: one per unit and image, its map at the image's size."""
        nets: dict[Path, tuple[ControlNetEngine, list[Use]]] = {}
        first_image = 0
        for r in requests:
            for unit in r.control:
                if r.hires is not None and unit.in_pass(hires_pass=False) is None:
                    continue  # a unit for the hires fix's second pass only
                loaded = self.controlnets.get(unit.model)
                run = loaded.run
                hint = hint_tensor(unit.hint, r.height, r.width, unit.resize_mode).to(self.device)
                if unit.weights is not None:  # the extension's advanced weighting, in place of scale and mode
                    weights = torch.tensor(unit.weights, dtype=torch.float32)
                else:
                    weights = residual_weights(len(run.residuals), unit.scale, unit.mode, r.guess_mode, run.global_pool)
                conditional_only = r.guess_mode or unit.mode == "control" or run.global_pool
                uses = nets.setdefault(loaded.path, (run, []))[1]
                uses += [
                    Use(first_image + k, hint, weights, unit.start, unit.end, conditional_only)
                    for k in range(r.num_images)
                ]
            first_image += r.num_images
        return list(nets.values())

    def start(
        self,
        model: Model,
        plan: Plan,
        requests: Sequence[GenerationRequest],
        gens: list[torch.Generator],
        clock: StageClock,
        scheduler: Any,
        timesteps: torch.Tensor,
        conditioning: Conditioning,
    ) -> tuple[torch.Tensor, Conditioning, list[AfterStep]]:
        """Latents (N, C, h, w) to start from, the conditioning with any CONCAT inputs, and after-step hooks.

        Random numbers are drawn from each image's generator in diffusers' order: the VAE sample of the input
        image, then the initial noise, then (inpainting) the VAE sample of the masked image.
        """
        first = requests[0]  # size, mode and strength are shared
        factor, n = model.manifest.ranges.latent_factor, len(gens)
        shape = (model.latent_channels, first.height // factor, first.width // factor)
        if plan.start == NOISE:
            return initial_noise(gens, shape, self.device) * scheduler.init_noise_sigma, conditioning, []
        if plan.start == CONTINUE:  # the refiner after the base: the latents as the base left them
            return torch.cat([r.init_latents for r in requests]).to(self.device), conditioning, []
        scaling = model.manifest.vae_scaling_factor
        start_timestep = timesteps[:1].repeat(n)
        if plan.start == LATENTS:  # the hires fix's second pass: latents in, as diffusers' img2img takes them
            image_latents = torch.cat([r.init_latents for r in requests]).to(self.device)
            noise = initial_noise(gens, shape, self.device)
            return scheduler.add_noise(image_latents, noise, start_timestep), conditioning, []
        images = [preprocess_image(r.image, r.height, r.width, factor).to(self.device) for r in requests]
        if plan.start == IMAGE:
            with clock.stage("vae_encode"):
                image_latents = sample_vae_latents(self._encode_per_image(model, requests, images), gens, scaling)
            noise = initial_noise(gens, shape, self.device)
            return scheduler.add_noise(image_latents, noise, start_timestep), conditioning, []
        return self._inpaint(model, requests, images, gens, clock, scheduler, timesteps, conditioning, shape)

    def _inpaint(self, model, requests, images, gens, clock, scheduler, timesteps, conditioning, shape):
        """Inpainting's start: a 9-channel UNet gets mask and masked-image latents as CONCAT inputs; a 4-channel
        one has the known region blended back in after each step (diffusers' StableDiffusionInpaintPipeline)."""
        first, factor = requests[0], model.manifest.ranges.latent_factor
        scaling = model.manifest.vae_scaling_factor
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
            latents = scheduler.add_noise(image_latents, noise, timesteps[:1].repeat(len(gens)))
        mask_rows = [latent_mask(m, shape[1], shape[2], r.num_images) for m, r in zip(masks, requests, strict=True)]
        mask = torch.cat(mask_rows)
        if nine_channels:
            inputs = {"mask": mask, "masked_image_latents": masked_image_latents}
            return latents, conditioning.with_inputs(inputs, {}, kind=CONCAT), []
        inpainting = Inpainting(mask=mask, image_latents=image_latents, noise=noise)

        def blend(latents: torch.Tensor, i: int) -> torch.Tensor:
            return inpainting.blend(latents, scheduler, timesteps[i + 1] if i + 1 < len(timesteps) else None)

        return latents, conditioning, [blend]

    def _encode_per_image(
        self, model: Model, requests: Sequence[GenerationRequest], images: list[torch.Tensor]
    ) -> torch.Tensor:
        """Latent Gaussian parameters (N, 2C, h, w): each request's image encoded once, one row per image."""
        encoder = model.engines_for(requests[0].tiling)[model.family.vae_encoder]
        rows = [
            call_in_chunks(encoder, {"images": image})["latent_parameters"].expand(r.num_images, -1, -1, -1)
            for r, image in zip(requests, images, strict=True)
        ]
        return torch.cat(rows)

    def decode(self, model: Model, latents: torch.Tensor, clock: StageClock, tiling: bool = False) -> list[Image.Image]:
        """Latents -> 8-bit images with a model's VAE decoder (its circular-padding twin for seamless tiling)."""
        with clock.stage("vae_decode"):
            latents = latents / model.manifest.vae_scaling_factor
            decoder = model.engines_for(tiling)[model.family.vae_decoder]
            images = call_in_chunks(decoder, {"latent": latents})["images"]
        return to_pil(images)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


StopCheck = Callable[[], bool]
