"""Loading and timing one contender: sdrt on a backend, or diffusers on the same weights.

Both are timed the same way: each network call (text encoders, UNet, VAE) is a stage of one
`StageClock` (host clock on the CPU, CUDA events on a GPU); the denoising loop runs from the start of
the first UNet call to the end of the last step; end to end is a synchronized host clock.
"""

from __future__ import annotations

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
from sdrt.runtime.timing import StageClock

LOOP = "denoise"
# sdrt component -> stage it is timed as
_SDRT_STAGES = {
    "text_encoder": "text_encoder",
    "unet": "unet",
    "vae_decoder": "vae_decode",
    "vae_encoder": "vae_encode",
}


@dataclass(frozen=True)
class Sample:
    """Seconds of one timed run."""

    total: float  # end to end, synchronized host clock
    text_encoder: float  # text encoder calls (both encoders for SDXL)
    unet: float  # all UNet calls
    unet_calls: int  # UNet calls made
    denoise: float  # start of the first UNet call to the end of the last denoising step
    steps: int  # denoising steps run
    vae_decode: float  # VAE decoder calls
    vae_encode: float = 0.0  # VAE encoder calls (img2img)

    @property
    def loop_overhead(self) -> float:
        """Scheduler steps, guidance and everything else in the loop that is not a UNet call."""
        return max(0.0, self.denoise - self.unet)

    @property
    def other(self) -> float:
        """Outside every stage: tokenization, set-up, latents, image conversion."""
        return max(0.0, self.total - self.text_encoder - self.vae_encode - self.denoise - self.vae_decode)

    def measures(self) -> dict[str, float]:
        """The per-run figures reported: seconds, per call or per step where named so."""
        return {
            "text_encoder": self.text_encoder,
            "vae_encode": self.vae_encode,
            "unet": self.unet,
            "unet_per_call": self.unet / self.unet_calls if self.unet_calls else 0.0,
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
    """Opens the denoising-loop stage at the first UNet call of a run and closes it once, at the loop's end."""

    def __init__(self, clock: StageClock) -> None:
        self.clock = clock
        self.state = "before"

    def reset(self) -> None:
        self.state = "before"

    def begin(self) -> None:
        if self.state == "before":
            self.clock.start(LOOP)
            self.state = "open"

    def end(self) -> None:
        if self.state == "open":
            self.clock.stop(LOOP)
            self.state = "closed"


class TimedEngine:
    """An sdrt engine whose calls are a stage of `clock`; speaks the engine protocol, so the pipeline is unchanged."""

    def __init__(self, engine: Any, clock: StageClock, stage: str, before: Callable[[], None] | None = None) -> None:
        self.engine = engine
        self.spec = engine.spec
        self.ranges = engine.ranges
        self.device = engine.device
        self.clock, self.stage, self.before = clock, stage, before

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
        self.pipe = Pipeline.load(spec.path, backend=spec.backend, device=spec.device, ranges=ranges)
        self.device = torch.device(spec.device)
        self.clock = StageClock(device=self.device)
        self.loop = LoopBracket(self.clock)
        before = {"unet": self.loop.begin, "vae_decoder": self.loop.end}
        for name, stage in _SDRT_STAGES.items():
            if name in self.pipe.engines:
                self.pipe.engines[name] = TimedEngine(self.pipe.engines[name], self.clock, stage, before.get(name))
        # the prompt encoders hold their text-encoder engines from load: time those calls too
        for encoder in self.pipe.model.encoders.values():
            timed = self.pipe.engines.get(encoder.engine.spec.name)
            if isinstance(timed, TimedEngine) and timed.engine is encoder.engine:
                encoder.engine = timed

    def run(self, scenario: Scenario, seed: int) -> Sample:
        self.clock.reset()
        self.loop.reset()
        img2img = scenario.mode == "img2img"
        start = _synced_time(self.device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # random weights may give NaN pixels
            result = self.pipe.generate(
                PROMPT,
                negative_prompt=NEGATIVE_PROMPT,
                height=scenario.height,
                width=scenario.width,
                num_inference_steps=scenario.steps,
                guidance_scale=scenario.guidance_scale,
                seed=seed,
                num_images_per_prompt=scenario.batch,
                scheduler=scenario.scheduler,
                image=init_image(scenario.width, scenario.height) if img2img else None,
                strength=scenario.strength,
            )
        total = _synced_time(self.device) - start
        return _sample(self.clock, total, result.timings.steps)


class DiffusersRunner:
    """diffusers' own pipeline on the same weights: fp32 on the CPU; fp16 with SDPA on a GPU, optionally compiled."""

    def __init__(self, spec: ContenderSpec) -> None:
        import diffusers
        from diffusers.models.attention_processor import AttnProcessor2_0

        sdxl = spec.family == "sdxl"
        self.device = torch.device(spec.device)
        self.dtype = torch.float16 if spec.dtype == "float16" else torch.float32
        options: dict[str, Any] = {"local_files_only": True, "dtype": self.dtype}
        if not sdxl:
            options |= {"safety_checker": None, "requires_safety_checker": False}
        self.classes = {mode: getattr(diffusers, xl if sdxl else sd) for mode, (sd, xl) in _PIPELINES.items()}
        base = self.classes["txt2img"].from_pretrained(spec.path, **options).to(self.device)
        base.set_progress_bar_config(disable=True)
        # scaled-dot-product attention, stated rather than left to diffusers' default
        base.unet.set_attn_processor(AttnProcessor2_0())
        base.vae.set_attn_processor(AttnProcessor2_0())
        if spec.backend == "diffusers-compile":
            # the recipe of diffusers' own speed-up guide for the UNet, which holds nearly all the time
            base.unet.to(memory_format=torch.channels_last)
            base.unet = torch.compile(base.unet, mode="reduce-overhead", fullgraph=True)
        self.pipes = {"txt2img": base}
        self.scheduler_config = dict(base.scheduler.config)
        self.clock = StageClock(device=self.device)
        self.loop = LoopBracket(self.clock)
        encoders = [base.text_encoder] + ([base.text_encoder_2] if sdxl else [])
        for encoder in encoders:
            _time_module(encoder, self.clock, "text_encoder")
        _time_module(base.unet, self.clock, "unet", before=self.loop.begin)
        _time_method(base.vae, "decode", self.clock, "vae_decode", before=self.loop.end)
        _time_method(base.vae, "encode", self.clock, "vae_encode")

    def run(self, scenario: Scenario, seed: int) -> Sample:
        from sdrt.runtime.schedulers import make_scheduler

        self.clock.reset()
        self.loop.reset()
        pipe = self._pipe(scenario.mode)
        pipe.scheduler = make_scheduler(scenario.scheduler, self.scheduler_config)  # fresh, as sdrt makes one
        kwargs: dict[str, Any] = {
            "prompt": PROMPT,
            "negative_prompt": NEGATIVE_PROMPT,
            "num_inference_steps": scenario.steps,
            "guidance_scale": scenario.guidance_scale,
            "num_images_per_prompt": scenario.batch,
            # each image's noise from its own CPU generator, exactly as sdrt draws it
            "generator": [torch.Generator("cpu").manual_seed(seed + i) for i in range(scenario.batch)],
            "callback_on_step_end": self._on_step_end,
            "output_type": "pil",
        }
        if scenario.mode == "img2img":
            kwargs |= {"image": init_image(scenario.width, scenario.height), "strength": scenario.strength}
        else:
            kwargs |= {"height": scenario.height, "width": scenario.width}
        start = _synced_time(self.device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # random fp16 weights may give NaN pixels
            pipe(**kwargs)
        total = _synced_time(self.device) - start
        return _sample(self.clock, total, pipe.num_timesteps)

    def _pipe(self, mode: str) -> Any:
        """The pipeline for `mode`; img2img shares the text-to-image pipeline's (timed) modules."""
        if mode not in self.pipes:
            pipe = self.classes[mode].from_pipe(self.pipes["txt2img"])
            pipe.set_progress_bar_config(disable=True)
            self.pipes[mode] = pipe
        return self.pipes[mode]

    def _on_step_end(self, pipe: Any, step: int, timestep: Any, tensors: dict) -> dict:
        if step == pipe.num_timesteps - 1:
            self.loop.end()
        return {}


# mode -> (SD 1.x/2.x pipeline class, SDXL pipeline class)
_PIPELINES = {
    "txt2img": ("StableDiffusionPipeline", "StableDiffusionXLPipeline"),
    "img2img": ("StableDiffusionImg2ImgPipeline", "StableDiffusionXLImg2ImgPipeline"),
}


def load_runner(spec: ContenderSpec) -> Runner:
    return DiffusersRunner(spec) if spec.is_baseline else SdrtRunner(spec)


def init_image(width: int, height: int) -> Image.Image:
    """A deterministic colour gradient, the img2img input of every contender."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _synced_time(device: torch.device) -> float:
    sync(device)
    return time.perf_counter()


def _sample(clock: StageClock, total: float, steps: int) -> Sample:
    seconds, calls = clock.seconds, clock.calls
    return Sample(
        total=total,
        text_encoder=seconds.get("text_encoder", 0.0),
        unet=seconds.get("unet", 0.0),
        unet_calls=calls.get("unet", 0),
        denoise=seconds.get(LOOP, 0.0),
        steps=steps,
        vae_decode=seconds.get("vae_decode", 0.0),
        vae_encode=seconds.get("vae_encode", 0.0),
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
