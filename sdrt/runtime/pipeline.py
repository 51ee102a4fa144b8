"""The pipeline: requests in, images out, for any model family on any backend's engines.

A thin facade over the parts that do the work: the request's parameters (declared once, `sdrt.runtime.params`
and each feature's and family's), its plan (`plan`: model, start, window, what follows, batch key, computed once
when it is checked), the runner (`runner`: loaded models, their LoRA weights, one pass of a batch through the
conditioning, the start latents and the sampling loop) and the workflow (`workflow`: a refiner hand-off or a
hires fix as later passes that are requests of their own).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from sdrt.conditioning.embeddings import EmbeddingLibrary
from sdrt.conditioning.lora_prompts import strip_loras
from sdrt.conditioning.prompts import PromptTokens
from sdrt.engines import Engine
from sdrt.engines.base import ModuleEngine
from sdrt.excerpt import excerpt
from sdrt.manifest import Manifest
from sdrt.params import ParamSet
from sdrt.runtime.control import Control
from sdrt.runtime.controlnets import ControlNetLibrary
from sdrt.runtime.deep_cache import DeepCache
from sdrt.runtime.hires import Hires
from sdrt.runtime.image_inputs import open_image, size_from_image
from sdrt.runtime.latents import random_seed
from sdrt.runtime.loras import HypernetworkLibrary, LoraLibrary
from sdrt.runtime.model import Model
from sdrt.runtime.params import all_params, pipeline_params
from sdrt.runtime.plan import REFINER, make_plan
from sdrt.runtime.request import GenerationRequest
from sdrt.runtime.results import GenerationResult
from sdrt.runtime.runner import Runner
from sdrt.runtime.sampling import Progress, StepCallback
from sdrt.runtime.workflow import Continuation, Outcome, Workflow, second_pass
from sdrt.spec import ShapeRanges
from sdrt.upscalers.library import UpscalerLibrary

log = logging.getLogger(__name__)

DEFAULT_MAX_IMAGES = 64

__all__ = ["DEFAULT_MAX_IMAGES", "Continuation", "GenerationResult", "Outcome", "Pipeline", "StepCallback"]


class Pipeline:
    """Text-to-image, image-to-image, inpainting and variations on any backend's engines, for any model family.

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
        hypernetworks: HypernetworkLibrary | None = None,
        refiner_model_dir: str | os.PathLike | None = None,
        upscalers: UpscalerLibrary | None = None,
        controlnet_dir: str | os.PathLike | None = None,
        annotator_dir: str | os.PathLike | None = None,
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
        models = {"base": model, **({REFINER: refiner} if refiner is not None else {})}
        self.annotator_dir = annotator_dir  # annotator models' weights (depth, openpose, ...) for ControlNet modules
        controlnets = ControlNetLibrary(model, controlnet_dir, model.options)
        self.runner = Runner(models, loras, model_dir, hypernetworks, refiner_model_dir, upscalers, controlnets)
        self.workflow = Workflow(self.runner, self._prepared)
        self.params: ParamSet = pipeline_params([m.family for m in models.values()])

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
        hypernetwork_dir: str | os.PathLike | None = None,
        refiner_model_dir: str | os.PathLike | None = None,
        upscalers: UpscalerLibrary | None = None,
        vae_tiling: str = "auto",
        controlnet_dir: str | os.PathLike | None = None,
        annotator_dir: str | os.PathLike | None = None,
        **options: Any,
    ) -> Pipeline:
        """Load an artifact (from `sdrt export`) or, for the torch backend, a diffusers model directory.

        `refiner` is a refiner artifact (or model directory) loaded the same way. `ranges` sets the shapes
        a model directory accepts (an artifact's come from its manifest). `embeddings_dir` holds
        textual-inversion embeddings, used where a prompt names one (nothing is re-exported or rebuilt);
        `lora_dir` LoRA and LyCORIS files a prompt names as `<lora:name:weight>` (or `<lora:name:te:unet>`),
        fused for that request only (torch backend, or tensorrt engines built with --refit, which also need
        `model_dir`: the model the artifact was exported from; `refiner_model_dir` the refiner's);
        `hypernetwork_dir` hypernetwork files a prompt names as `<hypernet:name:multiplier>`, run for that
        request only (torch backend). `upscalers` are the GAN upscalers a hires fix may name
        (`sdrt.upscalers.library`; on a backend other than torch, made by `sdrt.export.upscalers.open_library`).
        `vae_tiling` says when the VAE decodes and encodes in tiles (`sdrt.runtime.vae_tiles`): "auto" (images over
        a megapixel, or beyond the VAE's profile), "on" (anything over one tile, as diffusers'
        `vae.enable_tiling()`) or "off". `controlnet_dir` holds ControlNet artifacts requests may name
        (`control=[Control(NAME, ...)]`), loaded on first use with this backend and its options; `annotator_dir`
        the annotator models' weights ControlNet modules such as depth need (never downloaded). Backend options
        (e.g. `optimization="all"` for onnxruntime) pass through to the backend.
        """
        embeddings = None if embeddings_dir is None else EmbeddingLibrary.load(embeddings_dir)
        model = Model.load(path, backend, device, ranges, embeddings=embeddings, vae_tiling=vae_tiling, **options)
        refiner_model = None
        if refiner is not None:
            refiner_model = Model.load(
                refiner, backend, device, ranges, embeddings=embeddings, vae_tiling=vae_tiling, **options
            )
        loras = None if lora_dir is None else LoraLibrary.load(lora_dir)
        hypernetworks = None if hypernetwork_dir is None else HypernetworkLibrary.load(hypernetwork_dir)
        return cls(
            model, refiner_model, loras=loras, model_dir=model_dir, hypernetworks=hypernetworks,
            refiner_model_dir=refiner_model_dir, upscalers=upscalers, controlnet_dir=controlnet_dir,
            annotator_dir=annotator_dir,
        )  # fmt: skip

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
        return list(self.runner.models.values())

    @property
    def loras(self) -> LoraLibrary:
        return self.runner.loras

    @property
    def hypernetworks(self) -> HypernetworkLibrary:
        return self.runner.hypernetworks

    def refresh_loras(self) -> LoraLibrary:
        """Read the LoRA directory again: new files can be named from the next request on."""
        self.runner.loras = self.runner.loras.reloaded()
        return self.runner.loras

    def refresh_hypernetworks(self) -> HypernetworkLibrary:
        """Read the hypernetwork directory again: new files can be named from the next request on."""
        self.runner.hypernetworks = self.runner.hypernetworks.reloaded()
        return self.runner.hypernetworks

    def refresh_embeddings(self) -> None:
        """Read the embeddings directory again, for every model: new files are matched from the next request on."""
        library = self.model.embeddings.reloaded()
        for model in self.models:
            model.use_embeddings(library)

    @property
    def upscalers(self) -> UpscalerLibrary | None:
        """The GAN upscalers of the pipeline's upscaler directory (None without one)."""
        return self.runner.upscalers

    @property
    def controlnets(self) -> ControlNetLibrary:
        return self.runner.controlnets

    @property
    def clip_skip_max(self) -> int:
        """Largest clip_skip every text encoder of the base model allows."""
        return min(e.clip_skip_max for e in self.model.encoders.values())

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
        from sdrt.lora import as_lora_set

        weights = self.runner.weights["base"]
        if model_dir is not None:
            weights.model_dir = model_dir
        fixed = as_lora_set(lora, scale)
        weights.switch(fixed)
        self.runner.fixed_loras = fixed

    def generate(
        self,
        prompt: str | Sequence[str] = "",
        *,
        callback: StepCallback | None = None,
        callback_steps: int = 1,
        progress: bool = False,
        **params: Any,
    ) -> GenerationResult:
        """Generate images for one prompt or a list of prompts (a batch).

        Takes the parameters of `Pipeline.params` as keywords (the runtime's, its features' and its model
        families'; `sdrt.runtime.params` lists the core): negative_prompt, height, width, num_inference_steps,
        guidance_scale, seed, num_images_per_prompt, scheduler, eta, clip_skip, image, mask_image, strength,
        refiner_switch_at, hires, and e.g. noise_level and image_embeds on unCLIP, aesthetic_score on an SDXL
        refiner. Prompts use the web UI's syntax (`(word:1.3)`, `[word]`, `BREAK`, prompt editing) and may
        be longer than 75 tokens; negative_prompt and guidance_scale take one value for all prompts or one per
        prompt (prompts with different scales still share every UNet call). clip_skip counts as diffusers does
        (1 = the web UI's "CLIP skip 2"). Steps and guidance default to the family's (30 and 7.5; SDXL 30 and
        5.0; unCLIP 20 and 10).

        With `image`: image-to-image (strength default 0.8, SDXL 0.3); with `image` and `mask_image`:
        inpainting (strength default 1.0; white mask pixels are repainted); on an unCLIP model the image (or its
        `image_embeds`) conditions the model and the result is a variation of it. Images are resized to height x
        width, which default to the image's size rounded down to a multiple of 8; without an image they default
        to the size the artifact is tuned for. Image i uses seed + i; with no seed a random one is drawn and
        reported in the result. `callback(step, timestep, latents)` runs after every `callback_steps`-th step.
        With a refiner loaded, `refiner_switch_at=F` hands the latents to the refiner after the share F of the
        schedule. `hires=Hires(scale=2.0)` is the web UI's hires fix: the images are upscaled and denoised
        again at the larger size (image-to-image at the hires strength).
        """
        request = self.request(prompt, **params)
        return self.run(request, progress=progress, callback=callback, callback_steps=callback_steps)

    def request(self, prompt: str | Sequence[str] = "", **params: Any) -> GenerationRequest:
        """The checked, tokenized and planned request `generate` would run, defaults filled in.

        TypeError for a keyword that is no parameter; ValueError naming a bad value.
        """
        self._check_names(params)
        values = {p.name: p.default for p in self.params if p.name != "prompt"}
        values.update(params)
        family = self.family
        prompts = _texts("prompt", prompt)
        negative = values["negative_prompt"]
        negatives = ("",) * len(prompts) if negative is None else _texts("negative_prompt", negative)
        if len(negatives) == 1:
            negatives *= len(prompts)
        guidance = values["guidance_scale"]
        if guidance is None:
            guidance = family.default_guidance
        scales = tuple(guidance) if isinstance(guidance, Sequence) and not isinstance(guidance, str) else (guidance,)
        if len(scales) == 1:
            scales *= len(prompts)
        image = None if values["image"] is None else open_image(values["image"], "image")
        mask = None if values["mask_image"] is None else open_image(values["mask_image"], "mask_image")
        strength = values["strength"]
        default_height = default_width = self.manifest.ranges.opt_size
        if image is not None and not family.image_conditioned:
            default_height, default_width = size_from_image(image, self.manifest.ranges.latent_factor)
            r = self.manifest.ranges
            if any(values[k] is None and not r.min_size <= v <= r.max_size for k, v in
                   (("height", default_height), ("width", default_width))):  # fmt: skip
                raise ValueError(
                    f"the input image is {image.width}x{image.height}, outside the artifact's range {r.min_size}.."
                    f"{r.max_size} px: give width and height (sdrt generate --width/--height) to resize it, or "
                    "re-export with --min-size/--max-size to cover it"
                )
            if strength is None:
                strength = 1.0 if mask is not None else family.default_strength
        elif image is not None and family.image_scale:  # the x4 upscaler: four times the image's size
            size = size_from_image(image, self.manifest.ranges.latent_factor)
            default_height, default_width = (family.image_scale * side for side in size)
        hires = self.params["hires"].build(values["hires"])
        if hires is not None and not isinstance(hires, Hires):
            raise ValueError(f"hires {excerpt(hires)} is not a Hires or a mapping of its fields")
        deep_cache = self.params["deep_cache"].build(values["deep_cache"])
        if deep_cache is not None and not isinstance(deep_cache, DeepCache):
            raise ValueError(f"deep_cache {excerpt(deep_cache)} is not a DeepCache or a mapping of its fields")
        seed = values["seed"]
        seed = random_seed() if seed is None else seed
        control = self._control(values["control"], seed, values["height"], values["width"], image)
        options = {p.name: values[p.name] for m in self.models for p in m.family.params}
        for m in self.models:
            for param in m.family.params:
                options[param.name] = param.check(options[param.name])
        height, width, steps, clip_skip = (values[k] for k in ("height", "width", "num_inference_steps", "clip_skip"))
        request = GenerationRequest(
            prompts=prompts,
            negative_prompts=negatives,
            height=default_height if height is None else height,
            width=default_width if width is None else width,
            steps=family.default_steps if steps is None else steps,
            guidance_scales=scales,
            seed=seed,
            num_images_per_prompt=values["num_images_per_prompt"],
            scheduler=values["scheduler"],
            eta=values["eta"],
            clip_skip=0 if clip_skip is None else clip_skip,
            image=image,
            mask_image=mask,
            strength=strength,
            image_conditions=family.image_conditioned,
            refiner_switch_at=values["refiner_switch_at"],
            hires=hires,
            tiling=bool(self.params["tiling"].check(values["tiling"])),
            control=control,
            guess_mode=values["guess_mode"],
            deep_cache=deep_cache,
            options=options,
        )
        request = self.tokenized(request)
        self.check(request)
        return request

    def _control(self, units: Any, seed: int, height: int | None, width: int | None, image: Any) -> tuple[Control, ...]:
        """The request's ControlNet units, their images read and preprocessed; each ControlNet loaded and checked."""
        units = self.params["control"].build(units)
        if not units:
            return ()
        if height is None or width is None:  # the output's size, as the request's defaults will make it
            factor = self.manifest.ranges.latent_factor
            size = size_from_image(image, factor) if image is not None and not self.family.image_conditioned else None
            default = size or (self.manifest.ranges.opt_size, self.manifest.ranges.opt_size)
            height, width = height or default[0], width or default[1]
        opened = []
        for i, unit in enumerate(units):
            try:
                if not isinstance(unit, Control):
                    raise ValueError(f"{excerpt(unit)} is not a Control unit (sdrt.Control)")
                unit = unit.opened(height, width, seed, self.annotator_dir)
                loaded = self.controlnets.get(unit.model)  # loads it once and checks it fits the base model
                count = len(loaded.run.residuals)
                if unit.weights is not None and len(unit.weights) != count:
                    raise ValueError(
                        f"control weights has {len(unit.weights)} numbers; ControlNet {loaded.name} has {count} "
                        "residuals (down blocks, then the mid block), one number each"
                    )
                unit = replace(unit, label=f"{loaded.name} [{loaded.short_hash}]")
            except ValueError as exc:
                raise ValueError(f"control[{i}]: {exc}") from exc
            opened.append(unit)
        return tuple(opened)

    def _check_names(self, params: dict[str, Any]) -> None:
        """TypeError for a keyword no pipeline takes; ValueError for one another family's pipeline takes."""
        everything = all_params()
        everything.unknown(params, "generate()")
        for name in params:
            if name not in self.params:
                owner = everything[name].owner
                raise ValueError(
                    f"{name} is a parameter of {owner} models; this pipeline runs a {self.family.description}"
                )

    def tokenized(self, request: GenerationRequest) -> GenerationRequest:
        """`request` carrying its tokens for every tokenizer of this pipeline's models (tokenized once), its plan,
        and the pass that follows it (hires, refiner) as the checks and the batcher see it."""
        encoders = {k: e for m in self.models for k, e in m.tokenizer_keys().items()}
        missing = {k: e for k, e in encoders.items() if k not in request.tokens}
        if missing:
            tokens = dict(request.tokens)
            # the text encoders read the prompts without their <lora:...> tags
            prompts = [strip_loras(p) for p in request.prompts]
            negatives = [strip_loras(n) for n in request.negative_prompts]
            for key, encoder in missing.items():
                tokens[key] = PromptTokens(
                    encoder.tokenize(prompts, request.steps), encoder.tokenize(negatives, request.steps)
                )
            request = replace(request, tokens=tokens)
        if request.plan is None:
            request = replace(request, plan=make_plan(request, self.runner.models))
        if request.next_pass is None and request.plan.then is not None and request.plan.then != "upscale":
            request = replace(request, next_pass=self.tokenized(self._next_pass(request)))
        return request

    def _prepared(self, request: GenerationRequest) -> GenerationRequest:
        """A pass request the workflow made, tokenized and planned (checked before its first pass ran)."""
        return self.tokenized(request)

    def _next_pass(self, request: GenerationRequest) -> GenerationRequest:
        """The pass after `request`'s, with placeholder inputs of the right shape (for checks)."""
        factor = self.manifest.ranges.latent_factor
        if request.plan.then == REFINER:
            shape = (request.num_images, self.model.latent_channels, request.height // factor, request.width // factor)
            return replace(
                request,
                stage=REFINER,
                denoising_start=request.refiner_switch_at,
                refiner_switch_at=None,
                image=None,
                mask_image=None,
                strength=None,
                control=(),
                init_latents=torch.empty(shape, device="meta"),
                next_pass=None,
                plan=None,
            )
        return second_pass(request, factor, latent_channels=self.model.latent_channels)

    def check(self, request: GenerationRequest) -> None:
        """Raise ValueError unless this pipeline's engines can run `request` (and the passes that follow it)."""
        request = self.tokenized(request)
        model = self.runner.models[request.plan.stage]
        if request.hires is not None:
            height, width = request.hires.geometry(
                request.height, request.width, self.manifest.ranges.latent_factor
            ).size
            try:
                self.manifest.ranges.check_size(height, width)
            except ValueError as exc:
                raise ValueError(f"hires: the second pass's {exc}") from None
            request.hires.check_upscaler(self.upscalers)
        if request.init_latents is not None:
            factor = model.manifest.ranges.latent_factor
            shape = (request.num_images, model.latent_channels, request.height // factor, request.width // factor)
            if tuple(request.init_latents.shape) != shape:
                raise ValueError(f"init_latents have shape {tuple(request.init_latents.shape)}, not {shape}")
        model.manifest.ranges.check_size(request.height, request.width)
        if request.num_images > self.max_images:
            raise ValueError(
                f"batch of {request.num_images} images ({len(request.prompts)} prompts x "
                f"{request.num_images_per_prompt}) is over the pipeline's maximum of {self.max_images} per request"
            )
        model.family.check_request(request)
        if request.deep_cache is not None:
            if request.tiling:
                raise ValueError("deep_cache with tiling is not supported yet: give one or the other")
            try:
                full, _ = model.deep_cache_engines(request.deep_cache.branch)  # made once; ValueError: branch it lacks
            except ValueError as exc:
                raise ValueError(f"deep_cache: {exc}") from None
            if request.loras and not isinstance(full, ModuleEngine):  # a refit reaches the UNet engine alone
                raise ValueError(
                    f"deep_cache with LoRAs named in the request runs on the torch backend only (the {model.backend} "
                    "backend's DeepCache engines keep the exported weights); fuse them at export (sdrt export "
                    "--lora) or leave deep_cache off"
                )
        if request.tiling:
            model.check_tiling()
        if request.loras:
            self.runner.request_loras(request.loras)  # every name resolves to a file
            self.runner.weights[request.plan.stage].check()  # the backend can switch LoRAs (ONNX Runtime cannot)
        if request.hypernetworks:
            self.runner.request_hypernetworks(request.hypernetworks)
            self.runner.weights[request.plan.stage].unet_module()  # the backend runs hypernetworks (torch only)
        if model.manifest.inpainting and request.mode != "inpaint":
            raise ValueError(
                "this model's UNet is an inpainting UNet (latents + mask + masked image): give image and mask_image"
            )
        model.conditioner.check(request)
        if request.next_pass is not None:
            self.check(request.next_pass)

    def batch_key(self, request: GenerationRequest) -> tuple:
        """Requests with equal keys can share every engine call of their pass without changing any of their images.

        Everything the whole batch shares is in it (the plan's key): model and start, size, steps, sampler, eta,
        strength, the pass's share of the schedule, the LoRA set, and its conditioner's share (CLIP skip, the
        prompt chunk count). A hires request's first pass is a plain text-to-image pass: it batches with those.
        """
        return self.tokenized(request).plan.key

    def run(
        self,
        request: GenerationRequest,
        progress: bool = False,
        callback: StepCallback | None = None,
        callback_steps: int = 1,
    ) -> GenerationResult:
        """Run a validated request, every pass of it."""
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

        Each image keeps its own prompt, negative prompt, guidance scale, seed and input image, so every request
        gets exactly the images it gets alone (up to float rounding). Later passes (refiner, hires) run here too,
        grouped by their own keys. Each result carries the timings of the batches it ran in. `stop()` is asked
        after every step: when it says True the pass stops there and returns the images it has (the web UI's
        interrupt), skipping any later pass.
        """
        make = self._progress(progress, callback, callback_steps, stop)
        return self.workflow.run_all(self._batch(requests), make)

    def run_pass(
        self,
        requests: Sequence[GenerationRequest],
        callback: StepCallback | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> list[Outcome]:
        """One pass of validated requests with equal keys: each request's result, or the `Continuation` of its
        later pass (requests a server queues like any other, and what finishes the result from theirs)."""
        return self.workflow.run_pass(self._batch(requests), self._progress(False, callback, 1, stop)())

    def _batch(self, requests: Sequence[GenerationRequest]) -> list[GenerationRequest]:
        if not requests:
            raise ValueError("run_batch needs at least one request")
        requests = [self.tokenized(r) for r in requests]
        if len(requests) > 1 and len({r.plan.key for r in requests}) > 1:  # one request: nothing to compare
            raise ValueError("requests in one batch must have equal batch_key()s (size, steps, sampler, ...)")
        return requests

    @staticmethod
    def _progress(
        bar: bool, callback: StepCallback | None, callback_steps: int, stop: Callable[[], bool] | None
    ) -> Callable[[], Progress]:
        if isinstance(callback_steps, bool) or not isinstance(callback_steps, int) or callback_steps < 1:
            raise ValueError(f"callback_steps {callback_steps!r} is not a positive integer")
        return lambda: Progress(callback=callback, callback_steps=callback_steps, stop=stop, bar=bar)


def _texts(name: str, value: object) -> tuple[str, ...]:
    """One string or a sequence of strings as a tuple; ValueError naming the field otherwise."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Sequence):
        return tuple(value)
    raise ValueError(f"{name} {excerpt(value)} is not a string or a list of strings")
