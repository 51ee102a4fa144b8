"""Loading and timing one contender: sdrt on a backend, or diffusers on the same weights.

Both are timed the same way: each network call (text encoders, UNet, VAE) is a stage of one
`StageClock` (host clock on the CPU, CUDA events on a GPU); the denoising loop runs from the start of
the first UNet call to the end of the last step; end to end is a synchronized host clock.
"""

from __future__ import annotations

import inspect
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from sdrt.bench.scenario import NEGATIVE_PROMPT, PROMPT, Scenario
from sdrt.bench.weights import ContenderSpec
from sdrt.runtime.control import Control
from sdrt.runtime.timing import UNET_SHALLOW, StageClock

LOOP = "denoise"
# sdrt component -> stage it is timed as
# network role -> the stage its engine calls are timed in
_SDRT_STAGES = {
    "text_encoder": "text_encoder",
    "image_encoder": "text_encoder",  # unCLIP's image embedding: the conditioning stage, as diffusers' is timed
    "denoiser": "unet",
    "vae_decoder": "vae_decode",
    "vae_encoder": "vae_encode",
}
SHALLOW = UNET_SHALLOW  # DeepCache's shallow UNet calls: a stage apart from the full ones ("unet")


@dataclass(frozen=True)
class Sample:
    """Seconds of one timed run."""

    total: float  # end to end, synchronized host clock
    text_encoder: float  # text encoder calls (both encoders for SDXL)
    unet: float  # all UNet calls (DeepCache's shallow ones included)
    unet_calls: int  # UNet calls made
    denoise: float  # start of the first UNet call to the end of the last denoising step
    steps: int  # denoising steps run
    vae_decode: float  # VAE decoder calls
    vae_encode: float = 0.0  # VAE encoder calls (img2img)
    controlnet: float = 0.0  # ControlNet calls, every net of the run
    unet_shallow: float = 0.0  # DeepCache's shallow UNet calls (a part of `unet`)
    unet_shallow_calls: int = 0  # of `unet_calls`, those that ran only DeepCache's shallow branch

    @property
    def unet_full_calls(self) -> int:
        """UNet calls that ran the whole UNet: all of them without DeepCache, its full steps with it."""
        return self.unet_calls - self.unet_shallow_calls

    @property
    def loop_overhead(self) -> float:
        """Scheduler steps, guidance and everything else in the loop that is not a UNet or ControlNet call."""
        return max(0.0, self.denoise - self.unet - self.controlnet)

    @property
    def other(self) -> float:
        """Outside every stage: tokenization, set-up, latents, image conversion."""
        return max(0.0, self.total - self.text_encoder - self.vae_encode - self.denoise - self.vae_decode)

    def measures(self) -> dict[str, float]:
        """The per-run figures reported: seconds, per call or per step where named so."""
        return {
            "text_encoder": self.text_encoder,
            "vae_encode": self.vae_encode,
            "controlnet": self.controlnet,
            "unet": self.unet,
            "unet_per_call": self.unet / self.unet_calls if self.unet_calls else 0.0,
            "unet_full_per_call": (self.unet - self.unet_shallow) / self.unet_full_calls
            if self.unet_full_calls
            else 0.0,
            "unet_shallow_per_call": self.unet_shallow / self.unet_shallow_calls if self.unet_shallow_calls else 0.0,
            "scheduler_per_step": self.loop_overhead / self.steps if self.steps else 0.0,
            "vae_decode": self.vae_decode,
            "other": self.other,
            "total": self.total,
        }

    def stages(self) -> dict[str, float]:
        """The run split into parts that add up to `total`."""
        return {
            "text_encoder": self.text_encoder,
            "vae_encode": self.vae_encode,
            "controlnet": self.controlnet,
            "unet": self.unet,
            "scheduler": self.loop_overhead,
            "vae_decode": self.vae_decode,
            "other": self.other,
        }

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class Runner(Protocol):
    def run(self, scenario: Scenario, seed: int) -> Sample: ...


class LoopBracket:
    """Opens the denoising-loop stage at a stage's first UNet call and closes it at that loop's end.

    A base + refiner run has two loops with the refiner's text encoding between them: the bracket opens and
    closes once per loop, and the stage adds both up.
    """

    def __init__(self, clock: StageClock) -> None:
        self.clock = clock

    def reset(self) -> None:
        pass  # the clock's reset closes everything

    def begin(self) -> None:
        if not self.clock.is_open(LOOP):
            self.clock.start(LOOP)

    def end(self) -> None:
        if self.clock.is_open(LOOP):
            self.clock.stop(LOOP)


class TimedEngine:
    """An sdrt engine whose calls are a stage of `clock`; speaks the engine protocol, so the pipeline is unchanged."""

    def __init__(self, engine: Any, clock: StageClock, stage: str, before: Callable[[], None] | None = None) -> None:
        self.engine = engine
        self.spec = engine.spec
        self.ranges = engine.ranges
        self.device = engine.device
        self.clock, self.stage, self.before = clock, stage, before
        if hasattr(engine, "sibling"):  # networks made on this one's module (DeepCache's) are timed too
            self.sibling = self._sibling

    def _sibling(self, module: Any, spec: Any) -> TimedEngine:
        return TimedEngine(self.engine.sibling(module, spec), self.clock, _stage(spec), self.before)

    def __call__(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.before is not None:
            self.before()
        with self.clock.stage(self.stage):
            return self.engine(feeds)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)  # anything else a backend's engine offers (e.g. the torch module)


class SdrtRunner:
    """sdrt's Pipeline on one backend, its engine calls timed."""

    def __init__(self, spec: ContenderSpec) -> None:
        from sdrt import Pipeline
        from sdrt.spec import ShapeRanges

        ranges = None if spec.ranges is None else ShapeRanges.from_json(spec.ranges)
        self.pipe = Pipeline.load(
            spec.path, backend=spec.backend, device=spec.device, ranges=ranges, refiner=spec.refiner
        )
        self.controlnets = spec.controlnets
        self.device = torch.device(spec.device)
        self.clock = StageClock(device=self.device)
        self.loop = LoopBracket(self.clock)
        # a text encoder closes a loop too: the refiner encodes its prompt between the base's loop and its own
        before = {"denoiser": self.loop.begin, "vae_decoder": self.loop.end, "text_encoder": self.loop.end}
        for model in self.pipe.models:
            for name, engine in list(model.engines.items()):
                role = engine.spec.role
                model.engines[name] = TimedEngine(engine, self.clock, _stage(engine.spec), before.get(role))
            if model.load_deep_cache is not None:  # an artifact's DeepCache graphs, loaded on first use: timed too
                model.load_deep_cache = self._timed_loader(model.load_deep_cache, before["denoiser"])
        for path in self.controlnets:  # loaded now (not in the first timed run), their calls timed
            self.pipe.controlnets.wrap(path, lambda e: TimedEngine(e, self.clock, "controlnet", self.loop.begin))

    def _timed_loader(
        self, load: Callable[[int], Mapping[str, Any]], before: Callable[[], None]
    ) -> Callable[[int], dict[str, TimedEngine]]:
        def timed(branch: int) -> dict[str, TimedEngine]:
            return {name: TimedEngine(e, self.clock, _stage(e.spec), before) for name, e in load(branch).items()}

        return timed

    def params(self, scenario: Scenario, seed: int) -> dict[str, Any]:
        """The keywords of `Pipeline.generate` that run `scenario`."""
        image = init_image(*scenario.input_size) if scenario.mode in ("img2img", "variation", "upscale") else None
        return {
            "negative_prompt": NEGATIVE_PROMPT,
            "height": scenario.height,
            "width": scenario.width,
            "num_inference_steps": scenario.steps,
            "guidance_scale": scenario.guidance_scale,
            "seed": seed,
            "num_images_per_prompt": scenario.batch,
            "scheduler": scenario.scheduler,
            "image": image,
            "strength": scenario.strength,
            "refiner_switch_at": scenario.refiner_switch_at,
            "control": [
                Control(path, image=control_map(scenario.width, scenario.height, i))
                for i, path in enumerate(self.controlnets[: scenario.controlnets])
            ],
            "deep_cache": scenario.deep_cache,
        }

    def refusal(self, scenario: Scenario) -> str | None:
        """Why this pipeline cannot run `scenario` (e.g. DeepCache on an artifact without its networks), or None."""
        try:
            self.pipe.check(self.pipe.request(PROMPT, **self.params(scenario, seed=0)))
        except ValueError as exc:
            return str(exc)
        return None

    def run(self, scenario: Scenario, seed: int) -> Sample:
        self.clock.reset()
        self.loop.reset()
        params = self.params(scenario, seed)
        start = _synced_time(self.device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # random weights may give NaN pixels
            result = self.pipe.generate(PROMPT, **params)
        total = _synced_time(self.device) - start
        sample = _sample(self.clock, total, result.timings.steps)
        if sample.unet_shallow_calls < result.timings.unet_shallow_calls:
            raise RuntimeError(
                f"the pipeline made {result.timings.unet_shallow_calls} DeepCache shallow UNet calls and the bench "
                f"timed {sample.unet_shallow_calls}: this backend's DeepCache networks escape the bench's clock "
                "(sdrt.bench.runners.TimedEngine)"
            )
        return sample


class DiffusersRunner:
    """diffusers' own pipeline on the same weights: fp32 on the CPU; fp16 with SDPA on a GPU, optionally compiled."""

    def __init__(self, spec: ContenderSpec) -> None:
        import diffusers
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.device = torch.device(spec.device)
        self.dtype = torch.float16 if spec.dtype == "float16" else torch.float32
        options: dict[str, Any] = {"local_files_only": True, "dtype": self.dtype}
        if spec.family in ("sd1", "sd2"):
            options |= {"safety_checker": None, "requires_safety_checker": False}
        self.classes = {mode: getattr(diffusers, name) for mode, name in _PIPELINES[spec.family].items()}
        self.clock = StageClock(device=self.device)
        self.loop = LoopBracket(self.clock)
        self.base_mode = next(iter(self.classes))  # the family's first pipeline loads the weights
        compile = spec.backend == "diffusers-compile"
        base = self._load(self.classes[self.base_mode], spec.path, options, compile)
        self.pipes = {self.base_mode: base, (self.base_mode, 0): base}
        self.scheduler_config = dict(base.scheduler.config)
        self.refiner = None  # diffusers' ensemble recipe: the refiner's img2img pipeline from denoising_start
        if spec.refiner is not None:
            refiner_class = getattr(diffusers, _PIPELINES["sdxl_refiner"]["img2img"])
            self.refiner = self._load(refiner_class, spec.refiner, options, compile)
        self.controlnets = []  # diffusers' ControlNets, their calls timed (a MultiControlNet calls each)
        for path in spec.controlnets:
            net = diffusers.ControlNetModel.from_pretrained(path, **options).to(self.device)
            net.set_attn_processor(AttnProcessor2_0())
            _time_module(net, self.clock, "controlnet", before=self.loop.begin)
            self.controlnets.append(net)
        self.family = spec.family

    def _load(self, cls: Any, path: str, options: dict[str, Any], compile: bool) -> Any:
        """A pipeline with SDPA attention (optionally a compiled UNet), its networks timed on the clock."""
        from diffusers.models.attention_processor import AttnProcessor2_0

        pipe = cls.from_pretrained(path, **options).to(self.device)
        pipe.set_progress_bar_config(disable=True)
        # scaled-dot-product attention, stated rather than left to diffusers' default
        pipe.unet.set_attn_processor(AttnProcessor2_0())
        pipe.vae.set_attn_processor(AttnProcessor2_0())
        if compile:
            # the recipe of diffusers' own speed-up guide for the UNet, which holds nearly all the time
            pipe.unet.to(memory_format=torch.channels_last)
            pipe.unet = torch.compile(pipe.unet, mode="reduce-overhead", fullgraph=True)
        encoders = ("text_encoder", "text_encoder_2", "image_encoder")  # conditioning, timed as one stage
        for encoder in (getattr(pipe, name, None) for name in encoders):
            if encoder is not None:  # an encoder closes a loop: the refiner encodes between the two loops
                _time_module(encoder, self.clock, "text_encoder", before=self.loop.end)
        _time_module(pipe.unet, self.clock, "unet", before=self.loop.begin)
        _time_method(pipe.vae, "decode", self.clock, "vae_decode", before=self.loop.end)
        _time_method(pipe.vae, "encode", self.clock, "vae_encode")
        return pipe

    def run(self, scenario: Scenario, seed: int) -> Sample:
        from sdrt.schedulers import make_scheduler

        self.clock.reset()
        self.loop.reset()
        pipe = self._pipe(scenario.mode, scenario.controlnets)
        pipe.scheduler = make_scheduler(scenario.scheduler, self.scheduler_config)  # fresh, as sdrt makes one
        kwargs: dict[str, Any] = {
            "prompt": PROMPT,
            "negative_prompt": NEGATIVE_PROMPT,
            "num_inference_steps": scenario.steps,
            "guidance_scale": scenario.guidance_scale,
            "num_images_per_prompt": scenario.batch,
            # each image's noise from its own CPU generator, exactly as sdrt draws it
            "generator": [torch.Generator("cpu").manual_seed(seed + i) for i in range(scenario.batch)],
            "output_type": "pil",
        }
        if "callback_on_step_end" in inspect.signature(pipe.__call__).parameters:
            kwargs["callback_on_step_end"] = self._on_step_end  # else the VAE decode closes the loop's bracket
        if scenario.mode == "img2img":
            kwargs |= {"image": init_image(scenario.width, scenario.height), "strength": scenario.strength}
        elif scenario.mode == "upscale":  # the low-res image sets the size; noise_level at both sides' default, 20
            kwargs |= {"image": init_image(*scenario.input_size)}
        else:
            kwargs |= {"height": scenario.height, "width": scenario.width}
        if scenario.mode == "variation":  # unCLIP: the image conditions, the latents start from noise
            kwargs |= {"image": init_image(scenario.width, scenario.height)}
        if scenario.controlnets:
            maps = [control_map(scenario.width, scenario.height, i) for i in range(scenario.controlnets)]
            key = "control_image" if scenario.mode == "img2img" else "image"
            kwargs |= {key: maps[0] if len(maps) == 1 else maps}
            # diffusers' img2img ControlNet pipeline defaults to 0.8: every contender runs at 1
            kwargs |= {"controlnet_conditioning_scale": 1.0 if len(maps) == 1 else [1.0] * len(maps)}
        switch = scenario.refiner_switch_at
        if switch is not None:
            kwargs |= {"denoising_end": switch, "output_type": "latent"}
            self.refiner.scheduler = make_scheduler(scenario.scheduler, self.refiner.scheduler.config)
        start = _synced_time(self.device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # random fp16 weights may give NaN pixels
            latents = pipe(**kwargs).images
            # the steps its loop ran (unCLIP's pipeline keeps no count: its scheduler's timesteps are all it runs)
            steps = getattr(pipe, "num_timesteps", None) or len(pipe.scheduler.timesteps) // pipe.scheduler.order
            if switch is not None:
                refined = {k: v for k, v in kwargs.items() if k not in ("height", "width", "strength", "denoising_end")}
                self.refiner(**refined | {"image": latents, "denoising_start": switch, "output_type": "pil"})
                steps += self.refiner.num_timesteps
        total = _synced_time(self.device) - start
        return _sample(self.clock, total, steps)

    def _pipe(self, mode: str, controlnets: int = 0) -> Any:
        """The pipeline for `mode` (with the first `controlnets` ControlNets); every one shares the base's (timed)
        modules."""
        import diffusers

        if mode not in self.classes:
            raise ValueError(f"diffusers has no {mode} pipeline for this model; it runs {', '.join(self.classes)}")
        key = (mode, controlnets)
        if key not in self.pipes:
            base = self.pipes[self.base_mode]
            if controlnets:
                name = _CONTROLNET_PIPELINES[self.family][mode]
                nets = self.controlnets[:controlnets]
                pipe = getattr(diffusers, name).from_pipe(base, controlnet=nets[0] if len(nets) == 1 else nets)
            else:
                pipe = base if mode == self.base_mode else self.classes[mode].from_pipe(base)
            pipe.set_progress_bar_config(disable=True)
            self.pipes[key] = pipe
        return self.pipes[key]

    def _on_step_end(self, pipe: Any, step: int, timestep: Any, tensors: dict) -> dict:
        if step == pipe.num_timesteps - 1:
            self.loop.end()
        return {}


# family -> mode -> the diffusers pipeline class that runs it (the first loads the weights)
_SD = {"txt2img": "StableDiffusionPipeline", "img2img": "StableDiffusionImg2ImgPipeline"}
_PIPELINES = {
    "sd1": _SD,
    "sd2": _SD,
    "sdxl": {"txt2img": "StableDiffusionXLPipeline", "img2img": "StableDiffusionXLImg2ImgPipeline"},
    "sdxl_refiner": {"img2img": "StableDiffusionXLImg2ImgPipeline"},
    "unclip": {"variation": "StableUnCLIPImg2ImgPipeline"},
    "upscaler_x4": {"upscale": "StableDiffusionUpscalePipeline"},
}


_SD_CONTROLNET = {"txt2img": "StableDiffusionControlNetPipeline", "img2img": "StableDiffusionControlNetImg2ImgPipeline"}
_CONTROLNET_PIPELINES = {
    "sd1": _SD_CONTROLNET,
    "sd2": _SD_CONTROLNET,
    "sdxl": {"txt2img": "StableDiffusionXLControlNetPipeline", "img2img": "StableDiffusionXLControlNetImg2ImgPipeline"},
}


def load_runner(spec: ContenderSpec) -> Runner:
    return DiffusersRunner(spec) if spec.is_baseline else SdrtRunner(spec)


def init_image(width: int, height: int) -> Image.Image:
    """A deterministic colour gradient, the img2img input of every contender."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def control_map(width: int, height: int, index: int = 0) -> Image.Image:
    """A deterministic edge-like map, a ControlNet's conditioning image for every contender (one per index)."""
    y, x = np.mgrid[0:height, 0:width]
    lines = ((x + 3 * index) % 23 < 2) | ((y + 5 * index) % 31 < 2) | (np.abs(x - y - 7 * index) % 41 < 2)
    return Image.fromarray((lines * 255).astype(np.uint8)).convert("RGB")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _synced_time(device: torch.device) -> float:
    sync(device)
    return time.perf_counter()


def _per(seconds: float, calls: int) -> float:
    return seconds / calls if calls else 0.0


def _stage(spec: Any) -> str:
    """The stage an sdrt network's calls are timed in: by its role, DeepCache's shallow UNet apart."""
    if spec.attributes.get("deep_cache_part") == "shallow":
        return SHALLOW
    return _SDRT_STAGES[spec.role]


def _sample(clock: StageClock, total: float, steps: int) -> Sample:
    seconds, calls = clock.seconds, clock.calls
    return Sample(
        total=total,
        text_encoder=seconds.get("text_encoder", 0.0),
        unet=seconds.get("unet", 0.0) + seconds.get(SHALLOW, 0.0),
        unet_calls=calls.get("unet", 0) + calls.get(SHALLOW, 0),
        denoise=seconds.get(LOOP, 0.0),
        steps=steps,
        vae_decode=seconds.get("vae_decode", 0.0),
        vae_encode=seconds.get("vae_encode", 0.0),
        controlnet=seconds.get("controlnet", 0.0),
        unet_shallow=seconds.get(SHALLOW, 0.0),
        unet_shallow_calls=calls.get(SHALLOW, 0),
    )


def _time_module(module: torch.nn.Module, clock: StageClock, stage: str, before: Callable[[], None] | None = None):
    """Time every call of `module` as `stage`, with forward hooks (outside any torch.compile graph)."""

    def pre(mod, args):
        if before is not None:
            before()
        clock.start(stage)

    def post(mod, args, output):
        clock.stop(stage)

    module.register_forward_pre_hook(pre)
    module.register_forward_hook(post)


def _time_method(obj: Any, name: str, clock: StageClock, stage: str, before: Callable[[], None] | None = None):
    """Time every call of `obj.name` (e.g. vae.decode, which is not a forward) as `stage`."""
    inner = getattr(obj, name)

    def timed(*args, **kwargs):
        if before is not None:
            before()
        with clock.stage(stage):
            return inner(*args, **kwargs)

    setattr(obj, name, timed)
