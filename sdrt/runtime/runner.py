"""The runner: the loaded models and their weight state, and one pass of a batch through them.

A pass is: the LoRAs the batch names fused in, one generator per image (continued from an earlier pass when it
has states), the model's conditioning for every row, the start latents the plan says (noise, an encoded image,
an inpainting state, given latents), the denoiser built from wrappers around the UNet engine, and the loop.
"""

from __future__ import annotations

import logging
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
from sdrt.lora import LoraUse
from sdrt.runtime.control_images import hint_tensor
from sdrt.runtime.control_residuals import ControlNetEngine, ControlNetResiduals, Use, residual_weights
from sdrt.runtime.controlnets import ControlNetLibrary
from sdrt.runtime.deep_cache import DeepCacheUNet
from sdrt.runtime.denoiser import ConcatChannels, Guided, RowDenoiser, UNetCall
from sdrt.runtime.image_inputs import preprocess_image, preprocess_mask
from sdrt.runtime.images import to_pil
from sdrt.runtime.init_latents import Inpainting, latent_mask
from sdrt.runtime.latents import generators, initial_noise, sample_vae_latents
from sdrt.runtime.loras import HypernetworkLibrary, LoraLibrary
from sdrt.runtime.model import Model
from sdrt.runtime.plan import CONTINUE, IMAGE, LATENTS, NOISE, REFINER, Plan
from sdrt.runtime.request import GenerationRequest
from sdrt.runtime.results import network_fields
from sdrt.runtime.sampling import AfterStep, Progress, denoise, step_kwargs
from sdrt.runtime.timing import StageClock
from sdrt.runtime.weights import NetworkWeights, can_skip
from sdrt.schedulers import make_scheduler
from sdrt.upscalers.library import UpscalerLibrary

log = logging.getLogger(__name__)


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
    """Loaded models ("base", and "refiner" when one is loaded) with the networks each holds; runs passes."""

    def __init__(
        self,
        models: dict[str, Model],
        loras: LoraLibrary | None = None,
        model_dir: str | os.PathLike | None = None,
        hypernetworks: HypernetworkLibrary | None = None,
        refiner_model_dir: str | os.PathLike | None = None,
        upscalers: UpscalerLibrary | None = None,
        controlnets: ControlNetLibrary | None = None,
    ) -> None:
        self.models = models
        self.upscalers = upscalers  # the GAN upscalers a hires fix may name
        self.base = models["base"]
        self.device = self.base.device
        self.loras = loras or LoraLibrary()  # the LoRA files prompts may name
        self.hypernetworks = hypernetworks or HypernetworkLibrary()  # the hypernetwork files prompts may name
        self.controlnets = controlnets or ControlNetLibrary(self.base, options=self.base.options)
        dirs = {"base": model_dir, REFINER: refiner_model_dir}
        # the networks each model's engines hold
        self.weights = {stage: NetworkWeights(model, dirs.get(stage)) for stage, model in models.items()}
        self.fixed_loras: list[LoraUse] = []  # set_lora's, fused into the base under every request's own

    def request_loras(self, tags: Sequence[tuple[str, float, float]]) -> list[LoraUse]:
        """The files of a request's <lora:name:te:unet> tags; ValueError naming one that is not there."""
        return [LoraUse(self.loras.resolve(name), te, unet) for name, te, unet in tags]

    def request_hypernetworks(self, tags: Sequence[tuple[str, float]]) -> list[tuple[Path, float]]:
        """The files of a request's <hypernet:name:multiplier> tags, in order; ValueError naming a missing one."""
        return [(self.hypernetworks.resolve(name), multiplier) for name, multiplier in tags]

    def network_fields(self, request: GenerationRequest) -> tuple[tuple[str, str], ...]:
        """A request's LoRAs and hypernetworks as the web UI's infotext entries, with their files' short hashes."""
        loras, chain = [], []
        try:
            for name, *_ in request.loras:
                loras.append((name, self.loras.short_hash(self.loras.resolve(name))))
            for name, multiplier in request.hypernetworks:
                chain.append((name, self.hypernetworks.short_hash(self.hypernetworks.resolve(name)), multiplier))
        except (OSError, ValueError) as exc:  # a file gone since its pass ran: the infotext goes without hashes
            log.info("no network hashes for the infotext: %s", exc)
            return ()
        return network_fields(loras, chain)

    def switch_networks(self, request: GenerationRequest) -> None:
        """The networks a batch (of requests like `request`) names, in the engines of the model its pass runs on.

        On the base, a network that fits nothing there is let pass when the request goes on to the refiner and the
        refiner takes it; on the refiner, the request's networks apply where they fit and are skipped elsewhere.
        """
        stage = request.plan.stage
        weights = self.weights[stage]
        loras = [*(self.fixed_loras if stage == "base" else ()), *self.request_loras(request.loras)]
        chain = self.request_hypernetworks(request.hypernetworks)
        if stage == "base":
            others = [self.weights[REFINER]] if request.plan.then == REFINER and REFINER in self.weights else []
            lora_ok, chain_ok = can_skip(others, "lora"), can_skip(others, "hypernetwork")
        else:
            lora_ok = chain_ok = lambda path: True  # noqa: E731 (the base took what the refiner does not)
        try:
            if loras or weights.held:
                weights.switch(loras, lora_ok)
            if chain or weights.held_hypernetworks:
                weights.switch_hypernetworks(chain, chain_ok)
        except Exception:
            weights.reset()  # a failed switch leaves the base model: no LoRA fused, no hypernetwork running
            raise

    def run(self, requests: Sequence[GenerationRequest], progress: Progress) -> PassOutput:
        """One pass of `requests` (equal plan keys): one text-encoder call, one UNet call per step for all."""
        requests = list(requests)
        first, plan = requests[0], requests[0].plan
        model = self.models[plan.stage]
        self.switch_networks(first)  # this batch's networks in, the last one's out
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
        call: RowDenoiser = UNetCall(model.engines_for(first.tiling)[model.family.denoiser], clock)
        if first.deep_cache is not None:  # full steps as the DeepCache helper counts them, from the pass's first
            full, shallow = model.deep_cache_engines(first.deep_cache.branch)
            call = DeepCacheUNet(full, shallow, first.deep_cache.full_steps(scheduler.timesteps, timesteps), clock)
        unet: RowDenoiser = ConcatChannels(call)
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
