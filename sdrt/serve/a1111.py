"""The AUTOMATIC1111 web UI's API (/sdapi/v1/...): its field names, defaults and response shape.

Fields are those of the web UI's `StableDiffusionProcessingTxt2Img` / `...Img2Img` and its API models, with
their defaults (steps 50, cfg_scale 7, 512x512, sampler Euler, seed -1 = random). A field the web UI
has and sdrt does not implement is accepted at its default; a value that would change the image in a
way sdrt cannot honour (hires fix, face restoration, variation seeds, scripts, ...) is refused with a
422 naming the field, never silently ignored. Unknown fields are ignored, as the web UI ignores them.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from fastapi import APIRouter, Request
from PIL import Image, ImageOps
from pydantic import BaseModel, ConfigDict, model_validator
from starlette.concurrency import run_in_threadpool

from sdrt import __version__
from sdrt.runtime.model import Model
from sdrt.runtime.pipeline import Pipeline
from sdrt.runtime.schedulers import SAMPLERS, canonical_sampler, sampler_choices
from sdrt.serve.batcher import Completed
from sdrt.serve.codec import decode_image, encode_all
from sdrt.serve.errors import InputError
from sdrt.serve.generation import build_request

router = APIRouter(prefix="/sdapi/v1")

_NAMES = {
    "prompt": "prompt",
    "negative_prompt": "negative_prompt",
    "num_inference_steps": "steps",
    "guidance_scale": "cfg_scale",
    "num_images_per_prompt": "batch_size",
    "scheduler": "sampler_name",
    "clip_skip": "override_settings.CLIP_stop_at_last_layers",
    "image": "init_images",
    "mask_image": "mask",
    "strength": "denoising_strength",
    "refiner_switch_at": "refiner_switch_at",
}

# Web UI 1.9+ splits "DPM++ 2M Karras" into sampler "DPM++ 2M" and scheduler "Karras"; sdrt's labels are
# the older combined ones, so a scheduler only adds " Karras" or keeps the label as it is.
_SCHEDULERS = {"automatic": "", "uniform": "", "karras": " Karras"}

# Samplers whose noise the web UI scales by eta (default 1); sdrt runs them at eta 1 only.
_ETA_ONE = {"euler_a", "dpm2_a", "dpmpp_sde_karras", "dpmpp_2m_sde_karras"}

# override_settings sdrt reads (CLIP_stop_at_last_layers) or that keep their meaning at these values
_OVERRIDES = {
    "sd_vae": ("Automatic", "None", None),
    "eta_noise_seed_delta": (0, None),
    "samples_format": ("png", None),
    "enable_pnginfo": (True, None),
}


class _Common(BaseModel):
    """Fields txt2img and img2img share; null means "the default", as in the web UI."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] = []
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str | None = None
    sampler_index: str = "Euler"
    scheduler: str | None = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: float | None = None
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] = {}
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool = False
    firstpass_image: str | None = None
    comments: dict | None = None
    script_name: str | None = None
    script_args: list = []
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict = {}
    force_task_id: str | None = None
    infotext: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data: Any) -> Any:
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data


class Txt2ImgBody(_Common):
    enable_hr: bool = False
    denoising_strength: float | None = None  # the hires pass's; unused without enable_hr
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scale: float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""


class Img2ImgBody(_Common):
    init_images: list[str] | None = None
    resize_mode: int = 0
    denoising_strength: float = 0.75
    image_cfg_scale: float | None = None  # instruct-pix2pix models only
    mask: str | None = None
    # sdrt inpaints as diffusers does: the whole image, the mask binarized at 0.5. These web UI refinements
    # of the mask and the crop are accepted and have no effect.
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_blur: int | None = None
    mask_round: bool = True
    inpainting_fill: int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: float | None = None
    latent_mask: str | None = None
    include_init_images: bool = False


def _refuse(field: str, value: Any, why: str) -> InputError:
    return InputError(field, f"{field} {value!r} is not supported by sdrt: {why}")


def _check_supported(body: _Common) -> None:
    """422 for every field whose value would change the image in a way sdrt cannot honour."""
    checks: list[tuple[str, bool, str]] = [
        ("styles", not body.styles, "no prompt styles are stored on this server; put their text in the prompt"),
        ("subseed_strength", body.subseed_strength == 0, "variation seeds are not implemented"),
        ("seed_resize_from_h", body.seed_resize_from_h <= 0, "seed resizing is not implemented"),
        ("seed_resize_from_w", body.seed_resize_from_w <= 0, "seed resizing is not implemented"),
        ("restore_faces", not body.restore_faces, "face restoration is not available"),
        ("tiling", not body.tiling, "tiling is not implemented"),
        ("s_min_uncond", body.s_min_uncond in (None, 0), "negative guidance minimum sigma is not implemented"),
        ("s_churn", body.s_churn in (None, 0), "sampler churn is not implemented"),
        ("s_tmin", body.s_tmin in (None, 0), "sampler churn is not implemented"),
        ("s_tmax", body.s_tmax in (None, 0) or body.s_tmax == math.inf, "sampler churn is not implemented"),
        ("firstpass_image", body.firstpass_image is None, "hires fix is not implemented"),
        ("script_name", not body.script_name, "web UI scripts are not available"),
        ("alwayson_scripts", not body.alwayson_scripts, "web UI scripts are not available"),
        ("infotext", not body.infotext, "settings are not read from infotext; send them as fields"),
    ]
    if isinstance(body, Txt2ImgBody):
        checks.append(("enable_hr", not body.enable_hr, "hires fix is not implemented"))
        checks.append(("firstphase_width", body.firstphase_width == 0, "hires fix is not implemented"))
        checks.append(("firstphase_height", body.firstphase_height == 0, "hires fix is not implemented"))
    if isinstance(body, Img2ImgBody):
        checks.append(("resize_mode", body.resize_mode == 0, "only resize mode 0 (just resize) is implemented"))
        checks.append(("initial_noise_multiplier", body.initial_noise_multiplier in (None, 1), "not implemented"))
        checks.append(("latent_mask", body.latent_mask is None, "a separate latent mask is not implemented"))
    for field, ok, why in checks:
        if not ok:
            raise _refuse(field, getattr(body, field), why)


def _sampler(body: _Common) -> str:
    """sdrt's sampler name for sampler_name (or sampler_index) and scheduler."""
    label = body.sampler_name or body.sampler_index
    field = "sampler_name" if body.sampler_name else "sampler_index"
    suffix = _SCHEDULERS.get((body.scheduler or "automatic").casefold())
    if suffix is None:
        raise InputError(
            "scheduler", f"scheduler {body.scheduler!r} is not supported; known: Automatic, Uniform, Karras"
        )
    if suffix and not label.casefold().endswith(suffix.casefold()):
        label += suffix
    try:
        return str(canonical_sampler(label))
    except ValueError as exc:
        raise InputError(field, f"{field}: {exc}") from exc


def _refiner_switch(body: _Common, pipe: Pipeline) -> float | None:
    """The share of steps the base runs before the refiner (the web UI's meaning), or None for the base alone."""
    if body.refiner_checkpoint in (None, "", "None", "none"):
        return None
    if pipe.refiner is None:
        raise _refuse(
            "refiner_checkpoint", body.refiner_checkpoint, "this server runs no refiner (start it with --refiner)"
        )
    if body.refiner_checkpoint not in _model_names(pipe, pipe.refiner):
        raise InputError(
            "refiner_checkpoint",
            f"refiner_checkpoint {body.refiner_checkpoint!r} is not the refiner this server runs "
            f"({_title(pipe, pipe.refiner)!r})",
        )
    if body.refiner_switch_at is None:
        raise InputError("refiner_switch_at", "refiner_switch_at is required with refiner_checkpoint: 0 < F < 1")
    return body.refiner_switch_at


def _clip_skip(body: _Common, pipe: Pipeline) -> int:
    """diffusers' clip_skip from the web UI's CLIP_stop_at_last_layers (N means clip_skip N - 1)."""
    settings = dict(body.override_settings)
    model = settings.pop("sd_model_checkpoint", None)
    if model is not None and model not in _model_names(pipe):
        raise InputError(
            "override_settings.sd_model_checkpoint",
            f"override_settings.sd_model_checkpoint {model!r} is not the model this server runs ({_title(pipe)!r})",
        )
    settings.pop("sd_checkpoint_hash", None)
    stop_at = settings.pop("CLIP_stop_at_last_layers", 1)
    for key, value in settings.items():
        allowed = _OVERRIDES.get(key)
        if allowed is None or value not in allowed:
            known = ", ".join(["CLIP_stop_at_last_layers", "sd_model_checkpoint", *_OVERRIDES])
            raise InputError(
                f"override_settings.{key}",
                f"override_settings.{key} {value!r} is not supported by sdrt; it reads {known} (at their defaults)",
            )
    if isinstance(stop_at, bool) or not isinstance(stop_at, int) or not 1 <= stop_at <= pipe.clip_skip_max + 1:
        raise InputError(
            "override_settings.CLIP_stop_at_last_layers",
            f"override_settings.CLIP_stop_at_last_layers {stop_at!r} is outside 1..{pipe.clip_skip_max + 1}",
        )
    return stop_at - 1


def _eta(body: _Common, sampler: str) -> float:
    """DDIM's eta; ancestral and SDE samplers run at the web UI's default noise (eta 1, s_noise 1) only."""
    if sampler == "ddim":
        return 0.0 if body.eta is None else body.eta
    if sampler in _ETA_ONE:
        label = SAMPLERS[sampler].label
        for field in ("eta", "s_noise"):
            if getattr(body, field) not in (None, 1):
                raise _refuse(field, getattr(body, field), f"sdrt runs {label} at {field} 1")
    return 0.0  # no effect on the other samplers (s_noise only scales churn, which is 0)


def _title(pipe: Pipeline, model: Model | None = None) -> str:
    """The web UI's checkpoint title, "name [hash]", of the base model (or of `model`)."""
    model = model or pipe.model
    return f"{model.name} [{model.manifest.source_sha256[:10]}]"


def _model_names(pipe: Pipeline, model: Model | None = None) -> set[str]:
    """What clients may call the base model (or `model`): title, name, name with a file suffix, short or full hash."""
    model = model or pipe.model
    name, sha = model.name, model.manifest.source_sha256
    return {_title(pipe, model), name, f"{name}.safetensors", f"{name}.ckpt", sha[:10], sha}


def _binary_mask(mask: Image.Image, invert: bool) -> Image.Image:
    """The web UI's mask reading: an RGBA mask with transparency uses its alpha channel, else its gray values."""
    if mask.mode == "RGBA" and mask.getextrema()[-1] != (255, 255):
        mask = mask.split()[-1]
    mask = mask.convert("L")
    return ImageOps.invert(mask) if invert else mask


def _info(
    body: _Common, pipe: Pipeline, completed: Completed, sampler: str, clip_skip: int, strength: float | None
) -> str:
    """The web UI's `info`: a JSON string with the seeds, prompts and infotexts (Processed.js())."""
    result = completed.result
    n = len(result.images)
    return json.dumps(
        {
            "prompt": body.prompt,
            "all_prompts": [body.prompt] * n,
            "negative_prompt": body.negative_prompt,
            "all_negative_prompts": [body.negative_prompt] * n,
            "seed": result.seeds[0],
            "all_seeds": result.seeds,
            "subseed": -1,
            "all_subseeds": [-1] * n,
            "subseed_strength": 0,
            "width": result.request.width,
            "height": result.request.height,
            "sampler_name": SAMPLERS[sampler].label,
            "cfg_scale": body.cfg_scale,
            "steps": body.steps,
            "batch_size": body.batch_size,
            "restore_faces": False,
            "face_restoration_model": None,
            "sd_model_name": pipe.model_name,
            "sd_model_hash": pipe.manifest.source_sha256[:10],
            "sd_vae_name": None,
            "sd_vae_hash": None,
            "seed_resize_from_w": -1,
            "seed_resize_from_h": -1,
            "denoising_strength": strength,
            "extra_generation_params": {},
            "index_of_first_image": 0,
            "infotexts": result.parameters,
            "styles": [],
            "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
            "clip_skip": clip_skip + 1,
            "is_using_inpainting_conditioning": bool(pipe.manifest.inpainting and result.request.mode == "inpaint"),
            "version": f"sdrt {__version__}",
        }
    )


async def _generate(body: _Common, http: Request, api: str) -> dict:
    state = http.app.state.sdrt
    pipe = state.require_pipeline()
    _check_supported(body)
    for field in ("batch_size", "n_iter"):
        if getattr(body, field) < 1:
            raise InputError(field, f"{field} {getattr(body, field)} must be at least 1")
    sampler = _sampler(body)
    eta = _eta(body, sampler)
    clip_skip = _clip_skip(body, pipe)
    refiner_switch_at = _refiner_switch(body, pipe)
    img2img = isinstance(body, Img2ImgBody)
    variations = pipe.family.image_conditioned  # unCLIP: img2img makes variations of init_images[0]
    if variations and not img2img:
        raise InputError(
            "prompt",
            f"this server runs a {pipe.family.description}, which makes variations of an image: "
            "use /sdapi/v1/img2img with init_images",
            status=400,
        )
    strength = body.denoising_strength if img2img and not variations else None
    if img2img and not body.init_images:
        raise InputError("init_images", "init_images is required: give one base64 image")
    if img2img and len(body.init_images) != 1:
        raise InputError("init_images", f"init_images has {len(body.init_images)} images; sdrt takes one per request")

    def build(pipe: Pipeline):
        image = mask = None
        if img2img:
            image = decode_image(body.init_images[0], "init_images")
            if body.mask is not None:
                mask = _binary_mask(decode_image(body.mask, "mask", mode=None), bool(body.inpainting_mask_invert))
        return build_request(
            pipe,
            state.config,
            prompts=[body.prompt],
            negative_prompts=[body.negative_prompt],
            height=body.height,
            width=body.width,
            steps=body.steps,
            guidance_scales=[body.cfg_scale],
            seed=None if body.seed == -1 else body.seed,
            num_images_per_prompt=body.batch_size * body.n_iter,
            scheduler=sampler,
            eta=eta,
            clip_skip=clip_skip,
            image=image,
            mask_image=mask,
            strength=strength,
            refiner_switch_at=refiner_switch_at,
            names=_NAMES,
        )

    completed = await state.generate(http, api, build)
    images = await run_in_threadpool(encode_all, completed.result) if body.send_images else []
    parameters = body.model_dump()
    if img2img and not body.include_init_images:
        parameters.update(init_images=None, mask=None)
    return {
        "images": images,
        "parameters": parameters,
        "info": _info(body, pipe, completed, sampler, clip_skip, strength),
    }


@router.post("/txt2img")
async def txt2img(body: Txt2ImgBody, http: Request) -> dict:
    return await _generate(body, http, "a1111_txt2img")


@router.post("/img2img")
async def img2img(body: Img2ImgBody, http: Request) -> dict:
    return await _generate(body, http, "a1111_img2img")


@router.get("/samplers")
async def samplers() -> list[dict]:
    return [{"name": label, "aliases": [name], "options": {}} for name, label in sampler_choices()]


@router.get("/schedulers")
async def schedulers() -> list[dict]:
    return [
        {"name": name, "label": name.capitalize(), "aliases": None, "default_rho": -1, "need_inner_model": False}
        for name in _SCHEDULERS
    ]


@router.get("/sd-models")
async def sd_models(http: Request) -> list[dict]:
    pipe = http.app.state.sdrt.require_pipeline()
    return [
        {
            "title": _title(pipe, model),
            "model_name": model.name,
            "hash": model.manifest.source_sha256[:10],
            "sha256": model.manifest.source_sha256,
            "filename": model.name,  # the artifact directory's name; the server's paths stay private
            "config": None,
        }
        for model in pipe.models  # the base, then its refiner (a refiner_checkpoint)
    ]


@router.get("/options")
async def get_options(http: Request) -> dict:
    pipe = http.app.state.sdrt.require_pipeline()
    return {
        "sd_model_checkpoint": _title(pipe),
        "sd_checkpoint_hash": pipe.manifest.source_sha256,
        "CLIP_stop_at_last_layers": 1,
        "sd_vae": "Automatic",
        "samples_format": "png",
        "enable_pnginfo": True,
        "eta_ddim": 0.0,
        "eta_ancestral": 1.0,
        "eta_noise_seed_delta": 0,
    }


@router.post("/options")
async def set_options(options: dict[str, Any], http: Request) -> None:
    """Settings are per request in sdrt (override_settings); only selecting the model it runs is accepted."""
    pipe = http.app.state.sdrt.require_pipeline()
    for key, value in options.items():
        if key == "sd_model_checkpoint" and value in _model_names(pipe):
            continue
        raise InputError(
            key,
            f"{key} {value!r} cannot be set on this server: options are shared by every client; send settings "
            "per request in override_settings (the only model is " + repr(_title(pipe)) + ")",
        )
