"""What a benchmark runs: one `Scenario` per (backend, size, batch, steps), and the `BenchConfig` that spans them."""

from __future__ import annotations

import math
import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sdrt.runtime.deep_cache import DeepCache

# sdrt's backends a benchmark knows of; one that this sdrt lacks is listed as skipped, never faked
SDRT_BACKENDS = ("onnxruntime", "torch", "tensorrt", "openvino")
# diffusers on the same weights: eager (fp32 on the CPU, fp16 + SDPA on a GPU), and with torch.compile (GPU only)
BASELINES = ("diffusers", "diffusers-compile")
DEVICES = ("cpu", "cuda")
DTYPES = ("float32", "float16")
# variation: unCLIP, the input image conditions; upscale: the SD x4 upscaler, a low-res image of a quarter of the
# scenario's (output) size in
MODES = ("txt2img", "img2img", "variation", "upscale")
FAMILIES = ("sd1", "sd2", "sdxl", "sdxl_refiner", "unclip", "upscaler_x4")
UPSCALE = 4  # the x4 upscaler's factor: output pixels per low-res pixel, each side
SIZE_STEP = 8  # every SD family's VAE works in 8-pixel cells

PROMPT = "a photo of an astronaut riding a horse on the moon, highly detailed"
NEGATIVE_PROMPT = "blurry, low quality"


@dataclass(frozen=True)
class Scenario:
    """One timed configuration: a backend (or baseline) generating `batch` images of one size."""

    model: str  # label of the weights (the model or artifact directory's name)
    family: str  # the model family: "sd1", "sd2", "sdxl", ...
    backend: str  # an sdrt backend (SDRT_BACKENDS) or a baseline (BASELINES)
    device: str  # "cpu" or "cuda"
    dtype: str  # weights and activations: "float32" or "float16"
    width: int  # pixels, a multiple of 8
    height: int  # pixels, a multiple of 8
    batch: int  # images per generation (one prompt, num_images_per_prompt=batch)
    steps: int  # denoising steps asked for (img2img runs strength x steps of them)
    scheduler: str = "dpmpp_2m"  # sdrt sampler name, used by sdrt and the baselines alike
    guidance_scale: float = 7.5  # > 1: classifier-free guidance, so the UNet sees 2 x batch rows
    mode: str = "txt2img"  # "txt2img", "img2img" (adds the VAE encoder) or "variation" (unCLIP's image encoder)
    strength: float | None = None  # img2img only: share of the schedule run, in (0, 1]
    refiner_switch_at: float | None = None  # base + refiner: share of the steps the base runs, in (0, 1)
    controlnets: int = 0  # ControlNet units per image, each a different ControlNet (0: none)
    deep_cache: DeepCache | None = None  # sdrt only: DeepCache step caching (None: exact, every step the whole UNet)

    def __post_init__(self) -> None:
        if self.deep_cache is not None:
            object.__setattr__(self, "deep_cache", _deep_cache(self.deep_cache))
            if self.backend in BASELINES:
                raise ValueError(f"deep_cache is sdrt's: the {self.backend} baseline runs exact")
        _check_choice("family", self.family, FAMILIES)
        _check_int("controlnets", self.controlnets, minimum=0)
        _check_switch(self.refiner_switch_at)
        _check_choice("backend", self.backend, SDRT_BACKENDS + BASELINES)
        _check_choice("device", self.device, DEVICES)
        _check_choice("dtype", self.dtype, DTYPES)
        _check_choice("mode", self.mode, MODES)
        for name in ("width", "height"):
            value = getattr(self, name)
            _check_int(name, value, minimum=SIZE_STEP)
            if value % SIZE_STEP:
                raise ValueError(f"{name} {value} is not a multiple of {SIZE_STEP}")
        if (self.mode == "upscale") != (self.family == "upscaler_x4"):
            raise ValueError(f"mode {self.mode} does not go with family {self.family}: the x4 upscaler runs upscale")
        if self.mode == "upscale" and (self.width % (UPSCALE * SIZE_STEP) or self.height % (UPSCALE * SIZE_STEP)):
            raise ValueError(
                f"upscale size {self.size} is not a multiple of {UPSCALE * SIZE_STEP}: the low-res image is a quarter "
                f"of it, in {SIZE_STEP}-pixel cells"
            )
        _check_int("batch", self.batch, minimum=1)
        _check_int("steps", self.steps, minimum=1)
        g = self.guidance_scale
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g) or g < 0:
            raise ValueError(f"guidance_scale {g!r} is not a finite number >= 0")
        if self.mode == "img2img":
            s = self.strength
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 < s <= 1:
                raise ValueError(f"strength {s!r} is outside (0, 1]; img2img needs one")
        elif self.strength is not None:
            raise ValueError(f"strength {self.strength!r} is only for img2img (mode is {self.mode})")

    @property
    def input_size(self) -> tuple[int, int]:
        """(width, height) of the input image: the scenario's, or with upscale the low-res image's."""
        factor = UPSCALE if self.mode == "upscale" else 1
        return self.width // factor, self.height // factor

    @property
    def is_baseline(self) -> bool:
        return self.backend in BASELINES

    @property
    def contender(self) -> str:
        """Display name: "sdrt-onnxruntime", "sdrt-torch+deepcache-3:0", "diffusers", ..."""
        name = self.backend if self.is_baseline else f"sdrt-{self.backend}"
        return name if self.deep_cache is None else f"{name}+deepcache-{self.deep_cache.label()}"

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"

    @property
    def group(self) -> tuple:
        """What contenders share to be compared: everything but backend, dtype and DeepCache (exact and cached runs of
        one scenario side by side)."""
        return (
            self.model, self.width, self.height, self.batch, self.steps, self.mode, self.refiner_switch_at,
            self.controlnets,
        )  # fmt: skip

    def to_json(self) -> dict:
        fields = {k: getattr(self, k) for k in self.__dataclass_fields__} | {"contender": self.contender}
        dc = self.deep_cache
        return fields | {"deep_cache": None if dc is None else {"interval": dc.interval, "branch": dc.branch}}


@dataclass(frozen=True)
class BenchConfig:
    """One `sdrt bench` run: the weights, the contenders and the grid of sizes, batches and steps."""

    path: Path  # an sdrt artifact (manifest.json) or a diffusers model directory (model_index.json)
    model: Path | None = None  # with an artifact: the model directory it was exported from (torch, baselines)
    label: str | None = None  # the model's name in tables (default: the directory's name)
    backends: tuple[str, ...] = SDRT_BACKENDS  # sdrt backends to time (unavailable ones are listed as skipped)
    baselines: tuple[str, ...] = BASELINES  # baselines to time (GPU-only ones are skipped on the CPU)
    sizes: tuple[tuple[int, int], ...] | None = None  # (width, height) pairs; None: the artifact's tuned size
    batches: tuple[int, ...] = (1,)  # images per generation; clipped to the artifact's max_batch
    steps: int = 30  # denoising steps
    runs: int = 5  # timed runs per scenario, after warm-up
    warmup: int = 1  # untimed runs per contender first
    scheduler: str = "dpmpp_2m"  # sampler for every contender
    guidance_scale: float = 7.5  # classifier-free guidance scale
    mode: str = "txt2img"  # "txt2img" or "img2img"
    strength: float = 0.8  # img2img's strength
    refiner: Path | None = None  # an SDXL refiner (artifact or model directory, the same kind as `path`)
    refiner_model: Path | None = None  # with a refiner artifact: its model directory (torch backend, baselines)
    refiner_switch_at: float | None = None  # with a refiner: share of the steps the base runs
    device: str = "auto"  # "cpu", "cuda[:N]", or "auto" (cuda when there is one)
    # ControlNets (their artifacts, for the engine backends; their diffusers directories, for torch and the
    # baselines) and how many of them to use per image, one scenario each (0: without ControlNet)
    controlnets: tuple[Path, ...] = ()
    controlnet_models: tuple[Path, ...] = ()
    control_counts: tuple[int, ...] = (0,)
    # DeepCache settings timed beside exact on every sdrt backend, each a contender of its own (a backend that
    # cannot run one lists it as skipped, with why)
    deep_caches: tuple[DeepCache, ...] = ()
    cold_start: bool = True  # measure load-to-first-image and engine builds in fresh processes
    # pause before every run: thread pools that spin-wait after a run (ONNX Runtime's, OpenMP's) would
    # otherwise take the CPU from the next contender (measured: 5 ms -> 100 ms on a 2-core machine)
    settle_seconds: float = 0.3

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        object.__setattr__(self, "controlnets", tuple(Path(p) for p in self.controlnets))
        object.__setattr__(self, "controlnet_models", tuple(Path(p) for p in self.controlnet_models))
        for name in ("model", "refiner", "refiner_model"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))
        _check_switch(self.refiner_switch_at)
        if (self.refiner is None) != (self.refiner_switch_at is None):
            raise ValueError("a refiner and refiner_switch_at go together: give both (--refiner, --refiner-switch-at)")
        if self.refiner_model is not None and self.refiner is None:
            raise ValueError("refiner_model goes with a refiner artifact: give --refiner too")
        for name, values, known in (("backend", self.backends, SDRT_BACKENDS), ("baseline", self.baselines, BASELINES)):
            for value in values:
                _check_choice(name, value, known)
            if len(set(values)) != len(values):
                raise ValueError(f"{name}s {list(values)} repeat a name")
        if not self.backends and not self.baselines:
            raise ValueError("nothing to time: give at least one backend or baseline")
        if self.sizes is not None:
            if not self.sizes:
                raise ValueError("sizes is empty: give at least one WIDTHxHEIGHT")
            for width, height in self.sizes:
                for name, value in (("width", width), ("height", height)):
                    _check_int(name, value, minimum=SIZE_STEP)
                    if value % SIZE_STEP:
                        raise ValueError(f"{name} {value} is not a multiple of {SIZE_STEP}")
        if not self.batches:
            raise ValueError("batches is empty: give at least one batch size")
        for batch in self.batches:
            _check_int("batch", batch, minimum=1)
        _check_int("steps", self.steps, minimum=1)
        _check_int("runs", self.runs, minimum=1)
        _check_int("warmup", self.warmup, minimum=0)
        _check_choice("mode", self.mode, MODES)
        if not 0 < self.strength <= 1:
            raise ValueError(f"strength {self.strength!r} is outside (0, 1]")
        if not 0 <= self.settle_seconds <= 60:
            raise ValueError(f"settle_seconds {self.settle_seconds!r} is outside 0..60")
        nets = max(len(self.controlnets), len(self.controlnet_models))
        if self.controlnets and self.controlnet_models and len(self.controlnets) != len(self.controlnet_models):
            raise ValueError("controlnets and controlnet_models go in pairs: give as many of each")
        for count in self.control_counts:
            _check_int("controlnets per image", count, minimum=0)
            if count > nets:
                raise ValueError(f"{count} ControlNets per image, but {nets} are given (--controlnet)")
        object.__setattr__(self, "deep_caches", tuple(_deep_cache(d) for d in self.deep_caches))
        if len(set(self.deep_caches)) != len(self.deep_caches):
            raise ValueError(f"deep_caches {[d.label() for d in self.deep_caches]} repeat a setting")
        if self.deep_caches and not self.backends:
            raise ValueError("deep_caches need an sdrt backend: the diffusers baselines run exact only")
        if self.device != "auto" and self.device.split(":")[0] not in DEVICES:
            raise ValueError(f"device {self.device!r} is not auto, cpu or cuda[:N]")

    def command(self) -> str:
        """The `sdrt bench` command line that runs this configuration."""
        args = ["sdrt", "bench", str(self.path)]
        if self.model is not None:
            args += ["--model", str(self.model)]
        if self.label is not None:
            args += ["--label", self.label]
        args += ["--backend", ",".join(self.backends) or "none"]
        if not self.baselines:
            args += ["--baseline", "none"]
        elif "diffusers-compile" not in self.baselines:
            args += ["--no-compile"]
        if self.sizes is not None:
            args += ["--sizes", ",".join(f"{w}x{h}" for w, h in self.sizes)]
        args += ["--batch", ",".join(map(str, self.batches)), "--steps", str(self.steps)]
        args += ["--runs", str(self.runs), "--warmup", str(self.warmup), "--scheduler", self.scheduler]
        args += ["--guidance-scale", f"{self.guidance_scale:g}"]
        if self.mode != "txt2img":
            args += ["--mode", self.mode]
        if self.mode == "img2img":  # a variation's image conditions: it has no strength
            args += ["--strength", f"{self.strength:g}"]
        if self.refiner is not None:
            args += ["--refiner", str(self.refiner), "--refiner-switch-at", f"{self.refiner_switch_at:g}"]
            if self.refiner_model is not None:
                args += ["--refiner-model", str(self.refiner_model)]
        if self.controlnets:
            args += ["--controlnet", ",".join(map(str, self.controlnets))]
        if self.controlnet_models:
            args += ["--controlnet-model", ",".join(map(str, self.controlnet_models))]
        if self.control_counts != (0,):
            args += ["--controlnets", ",".join(map(str, self.control_counts))]
        if self.deep_caches:
            args += ["--deep-cache", ",".join(d.label() for d in self.deep_caches)]
        args += ["--device", self.device] + ([] if self.cold_start else ["--no-cold-start"])
        return " ".join(shlex.quote(a) for a in args)


def parse_size(text: str) -> tuple[int, int]:
    """Parse WIDTHxHEIGHT: "512x768" -> (512, 768), in pixels; ValueError saying what is wrong."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"size {text!r} is not WIDTHxHEIGHT, e.g. 512x512")
    return int(parts[0]), int(parts[1])


def parse_ints(name: str, text: str) -> tuple[int, ...]:
    """Parse "1,2,4" -> (1, 2, 4); ValueError naming `name` otherwise."""
    try:
        return tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError as exc:
        raise ValueError(f"{name} {text!r} is not a comma-separated list of integers") from exc


def parse_deep_caches(texts: list[str] | tuple[str, ...]) -> tuple[DeepCache, ...]:
    """--deep-cache values, each one or a comma list of INTERVAL[:BRANCH]: ("3,5", "3:1") -> 3:0, 5:0, 3:1."""
    from sdrt.runtime.deep_cache import parse_cli

    return tuple(parse_cli(part.strip()) for text in texts for part in text.split(",") if part.strip())


def model_label(path: str | os.PathLike) -> str:
    return Path(path).resolve().name


def _deep_cache(value: object) -> DeepCache:
    """A DeepCache, or one from a mapping of its fields (a scenario read back from JSON); ValueError otherwise."""
    from sdrt.runtime.deep_cache import DeepCache

    if isinstance(value, Mapping):
        try:
            return DeepCache(**value)
        except TypeError as exc:
            raise ValueError(f"deep_cache {dict(value)!r} is not interval and branch: {exc}") from None
    if not isinstance(value, DeepCache):
        raise ValueError(f"deep_cache {value!r} is not a DeepCache")
    return value


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} {value!r} is not an integer")
    if value < minimum:
        raise ValueError(f"{name} {value} must be at least {minimum}")


def _check_switch(value: object) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1):
        raise ValueError(f"refiner_switch_at {value!r} is outside 0 < F < 1")


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} {value!r} is not one of {', '.join(choices)}")
