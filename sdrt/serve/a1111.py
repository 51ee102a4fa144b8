"""The AUTOMATIC1111 web UI's API (/sdapi/v1/...): its field names, defaults and response shape.

Fields are those of the web UI's `StableDiffusionProcessingTxt2Img` / `...Img2Img` and its API models, with
their defaults (steps 50, cfg_scale 7, 512x512, sampler Euler, seed -1 = random). A field the web UI
has and sdrt does not implement is accepted at its default; a value that would change the image in a
way sdrt cannot honour (face restoration, variation seeds, scripts other than "SD upscale", ...) is refused
with a 422 naming the field, never silently ignored. Hires fix (`enable_hr`) runs the runtime's `Hires`,
`tiling` seamless tiling (an artifact exported with --tiling).
Unknown fields are ignored, as the web UI ignores them.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Hashable, Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from PIL import Image, ImageOps
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from starlette.concurrency import run_in_threadpool

from sdrt import __version__
from sdrt.excerpt import excerpt
from sdrt.runtime.control_images import fitted
from sdrt.runtime.hires import Hires
from sdrt.runtime.latents import random_seed
from sdrt.runtime.params import all_params
from sdrt.runtime.pipeline import GenerationResult, Pipeline
from sdrt.runtime.request import GenerationRequest
from sdrt.schedulers import SAMPLERS, canonical_sampler
from sdrt.serve import a1111_sd_upscale, a1111_settings
from sdrt.serve.a1111_settings import model_names, title
from sdrt.serve.codec import decode_image, encode_all, png_base64
from sdrt.serve.config import ServeConfig
from sdrt.serve.controlnet_api import script_units
from sdrt.serve.errors import InputError, from_runtime
from sdrt.serve.fields import Float, Int
from sdrt.serve.generation import build_request
from sdrt.serve.styles import PromptStyle, apply_styles

router = APIRouter(prefix="/sdapi/v1")


def _webui_names() -> dict[str, str]:
    """sdrt's parameter names -> this API's fields (declared with each parameter), for error messages."""
    names = {}
    for param in all_params():
        if param.webui:
            names[param.name] = param.webui
        for field in param.fields:
            if field.webui:
                names[f"{param.name}.{field.name}"] = field.webui
    return names


_NAMES = _webui_names()

# Web UI 1.9+ splits "DPM++ 2M Karras" into sampler "DPM++ 2M" and scheduler "Karras"; sdrt's labels are
# the older combined ones, so a scheduler only adds " Karras" or keeps the label as it is.
_SCHEDULERS = {"automatic": "", "uniform": "", "karras": " Karras"}

# Samplers whose noise the web UI scales by eta (default 1); at eta 0 an ancestral sampler adds no noise and is
# the sampler it comes from, which sdrt then runs (and names so in the infotext).
_ETA_ONE = {"euler_a", "dpm2_a", "dpmpp_sde_karras", "dpmpp_2m_sde_karras"}
_WITHOUT_NOISE = {"euler_a": "euler", "dpm2_a": "dpm2"}

HIRES_STRENGTH = 0.7  # the web UI's denoising strength of the hires pass when a request gives none
MAX_NESTING = 32  # deepest nesting of lists and objects in a free-form field (script_args, comments, ...)


def _shallow(value: Any) -> Any:
    depth = _depth(value)
    if depth > MAX_NESTING:
        raise ValueError(f"nests lists and objects {depth} levels deep; at most {MAX_NESTING}")
    return value


def _depth(value: Any, limit: int = MAX_NESTING + 1) -> int:
    """Nesting depth of lists and dicts in `value`, counted up to `limit` (iteratively: no recursion to exhaust)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            depth += 1
            deepest = max(deepest, depth)
            if depth >= limit:
                return depth
            stack.extend((child, depth) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


class _Common(BaseModel):
    """Fields txt2img and img2img share; null means "the default", as in the web UI."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = Field("", description="the web UI's prompt syntax: emphasis, [from:to:when] editing, [a|b]")
    negative_prompt: str = ""
    styles: list[str] = Field([], description="names of the server's prompt styles (`sdrt serve --styles`)")
    seed: Int = Field(-1, description="-1: random; another negative seed is its 64-bit two's complement, as torch's")
    subseed: Int = -1
    subseed_strength: Float = 0.0
    seed_resize_from_h: Int = -1
    seed_resize_from_w: Int = -1
    sampler_name: str | None = None
    sampler_index: str = "Euler"
    scheduler: str | None = None
    batch_size: Int = Field(1, description="images per batch; batch_size x n_iter is at most --max-images")
    n_iter: Int = Field(1, description="batches; batch_size x n_iter is at most --max-images")
    steps: Int = Field(50, description="denoising steps, 1..--max-steps (150)")
    cfg_scale: Float = 7.0
    # the web UI's default is 512x512; sdrt's is the size the artifact is tuned for (512 for SD 1.5, 1024 for SDXL,
    # 128 for the demo), which every artifact runs, and img2img's the input image's
    width: Int | None = Field(None, description="pixels, a multiple of 8 (default: the artifact's tuned size)")
    height: Int | None = Field(None, description="pixels, a multiple of 8 (default: the artifact's tuned size)")
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: Float | None = None
    s_min_uncond: Float | None = None
    s_churn: Float | None = None
    s_tmax: float | None = None
    s_tmin: Float | None = None
    s_noise: Float | None = None
    override_settings: Annotated[dict[str, Any], AfterValidator(_shallow)] = {}
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: Float | None = None
    disable_extra_networks: bool = False
    firstpass_image: str | None = None
    comments: Annotated[dict | None, AfterValidator(_shallow)] = None
    script_name: str | None = None
    script_args: Annotated[list, AfterValidator(_shallow)] = []
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: Annotated[dict, AfterValidator(_shallow)] = {}
    force_task_id: str | None = None
    infotext: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data: Any) -> Any:
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data


class Txt2ImgBody(_Common):
    enable_hr: bool = False
    denoising_strength: Float | None = None  # the hires pass's; unused without enable_hr
    firstphase_width: Int = 0
    firstphase_height: Int = 0
    hr_scale: Float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: Int = 0
    hr_resize_x: Int = 0
    hr_resize_y: Int = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""


class Img2ImgBody(_Common):
    init_images: list[str] | None = Field(
        None, description="base64 images (a data: URL prefix is allowed); several: one per batch item, as the web UI"
    )
    resize_mode: Int = 0
    denoising_strength: Float = 0.75
    image_cfg_scale: Float | None = None  # instruct-pix2pix models only
    mask: str | None = Field(None, description="base64 mask, resized to the init image's size; white is repainted")
    # sdrt inpaints as diffusers does: the whole image, the mask binarized at 0.5. These web UI refinements
    # of the mask and the crop are accepted and have no effect.
    mask_blur_x: Int = 4
    mask_blur_y: Int = 4
    mask_blur: Int | None = None
    mask_round: bool = True
    inpainting_fill: Int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: Int = 0
    inpainting_mask_invert: int = 0  # the web UI's own tests send true/false here: a boolean is read as 1/0
    initial_noise_multiplier: Float | None = None
    latent_mask: str | None = None
    include_init_images: bool = False


def _refuse(field: str, value: Any, why: str) -> InputError:
    return InputError(field, f"{field} {excerpt(value)} is not supported by sdrt: {why}")


def _check_supported(body: _Common) -> None:
    """422 for every field whose value would change the image in a way sdrt cannot honour."""
    checks: list[tuple[str, bool, str]] = [
        ("subseed_strength", body.subseed_strength == 0, "variation seeds are not implemented"),
        ("seed_resize_from_h", body.seed_resize_from_h <= 0, "seed resizing is not implemented"),
        ("seed_resize_from_w", body.seed_resize_from_w <= 0, "seed resizing is not implemented"),
        ("restore_faces", not body.restore_faces, "face restoration is not available (GET /sdapi/v1/face-restorers)"),
        ("s_min_uncond", body.s_min_uncond in (None, 0), "negative guidance minimum sigma is not implemented"),
        ("s_churn", body.s_churn in (None, 0), "sampler churn is not implemented"),
        ("s_tmin", body.s_tmin in (None, 0), "sampler churn is not implemented"),
        ("s_tmax", body.s_tmax in (None, 0) or body.s_tmax == math.inf, "sampler churn is not implemented"),
        ("firstpass_image", body.firstpass_image is None, "a given first-pass image is not implemented"),
        (
            "script_name",
            not body.script_name or (isinstance(body, Img2ImgBody) and a1111_sd_upscale.requested(body)),
            "the one web UI script sdrt runs is img2img's 'SD upscale' (GET /sdapi/v1/scripts)",
        ),
        ("infotext", not body.infotext, "settings are not read from infotext; send them as fields"),
    ]
    if isinstance(body, Txt2ImgBody):
        old_api = "the old hires API's first-pass size; give width/height and hr_scale or hr_resize_x/y"
        checks.append(("firstphase_width", body.firstphase_width == 0, old_api))
        checks.append(("firstphase_height", body.firstphase_height == 0, old_api))
    if isinstance(body, Img2ImgBody):
        checks.append(("resize_mode", body.resize_mode == 0, "only resize mode 0 (just resize) is implemented"))
        checks.append(("initial_noise_multiplier", body.initial_noise_multiplier in (None, 1), "not implemented"))
        checks.append(("latent_mask", body.latent_mask is None, "a separate latent mask is not implemented"))
    for field, ok, why in checks:
        if not ok:
            raise _refuse(field, getattr(body, field), why)


def _sampler(label: str, field: str, scheduler: str | None, scheduler_field: str, eta: float | None) -> str:
    """sdrt's sampler for a web UI sampler label, its 1.9+ scheduler and eta (0 takes an ancestral's noise away)."""
    suffix = _SCHEDULERS.get((scheduler or "automatic").casefold())
    if suffix is None:
        raise InputError(
            scheduler_field,
            f"{scheduler_field} {excerpt(scheduler)} is not supported; known: Automatic, Uniform, Karras",
        )
    try:
        sampler = str(canonical_sampler(label))
    except ValueError as exc:
        raise InputError(field, f"{field}: {exc}") from exc
    if suffix and not label.casefold().endswith(suffix.casefold()):
        try:
            sampler = str(canonical_sampler(label + suffix))
        except ValueError:
            karras = ", ".join(s.label[: -len(suffix)] for s in SAMPLERS.values() if s.label.endswith(suffix))
            raise InputError(
                scheduler_field,
                f"{scheduler_field} {scheduler!r} is not available with {field} {excerpt(label)}; "
                f"samplers with a Karras schedule: {karras}",
            ) from None
    if eta == 0 and sampler in _WITHOUT_NOISE:
        sampler = _WITHOUT_NOISE[sampler]
    return sampler


def _eta(body: _Common, sampler: str) -> float:
    """DDIM's eta; ancestral and SDE samplers run at the web UI's default noise (eta 1, s_noise 1), or 0 (above)."""
    if sampler == "ddim":
        return 0.0 if body.eta is None else body.eta
    if sampler in _ETA_ONE:
        label = SAMPLERS[sampler].label
        for field in ("eta", "s_noise"):
            if getattr(body, field) not in (None, 1):
                raise _refuse(field, getattr(body, field), f"sdrt runs {label} at {field} 1 (or eta 0: without noise)")
    return 0.0  # no effect on the other samplers (s_noise only scales churn, which is 0)


def _refiner_switch(body: _Common, pipe: Pipeline) -> float | None:
    """The share of steps the base runs before the refiner (the web UI's meaning), or None for the base alone."""
    if body.refiner_checkpoint in (None, "", "None", "none"):
        return None
    if pipe.refiner is None:
        raise _refuse(
            "refiner_checkpoint", body.refiner_checkpoint, "this server runs no refiner (start it with --refiner)"
        )
    if body.refiner_checkpoint not in model_names(pipe, pipe.refiner):
        raise InputError(
            "refiner_checkpoint",
            f"refiner_checkpoint {excerpt(body.refiner_checkpoint)} is not the refiner this server runs "
            f"({title(pipe, pipe.refiner)!r})",
        )
    if body.refiner_switch_at is None:
        raise InputError("refiner_switch_at", "refiner_switch_at is required with refiner_checkpoint: 0 < F < 1")
    return body.refiner_switch_at


def _hires(body: Txt2ImgBody, pipe: Pipeline, sampler: str) -> Hires | None:
    """The hires fix a txt2img body asks for (enable_hr), checked; None without it."""
    if not body.enable_hr:
        return None
    if body.hr_checkpoint_name not in (None, "", "Use same checkpoint") and body.hr_checkpoint_name not in model_names(
        pipe
    ):
        raise _refuse("hr_checkpoint_name", body.hr_checkpoint_name, "the second pass runs the model this server runs")
    hr_sampler = None
    if body.hr_sampler_name not in (None, "", "Use same sampler"):
        hr_sampler = _sampler(body.hr_sampler_name, "hr_sampler_name", body.hr_scheduler, "hr_scheduler", body.eta)
    # "None" is the web UI's upscaler that only resizes, with Lanczos
    upscaler = {None: "Latent", "None": "Lanczos"}.get(body.hr_upscaler, body.hr_upscaler)
    try:
        return Hires(
            scale=body.hr_scale,
            width=body.hr_resize_x,
            height=body.hr_resize_y,
            upscaler=str(upscaler),
            steps=body.hr_second_pass_steps or None,
            strength=HIRES_STRENGTH if body.denoising_strength is None else body.denoising_strength,
            prompt=body.hr_prompt or None,
            negative_prompt=body.hr_negative_prompt or None,
            sampler=None if hr_sampler == sampler else hr_sampler,
        )
    except ValueError as exc:
        raise from_runtime(exc, _NAMES) from exc


def _binary_mask(mask: Image.Image, invert: bool) -> Image.Image:
    """The web UI's mask reading: an RGBA mask with transparency uses its alpha channel, else its gray values."""
    if mask.mode == "RGBA" and mask.getextrema()[-1] != (255, 255):
        mask = mask.split()[-1]
    mask = mask.convert("L")
    return ImageOps.invert(mask) if invert else mask


def _styled(body: _Common, styles: Mapping[str, PromptStyle]) -> tuple[str, str]:
    """The prompt and negative prompt with the request's styles merged in."""
    try:
        return apply_styles(styles, body.styles, body.prompt, body.negative_prompt)
    except ValueError as exc:
        raise InputError("styles", str(exc)) from exc


def _seed(body: _Common) -> int | None:
    """None (random) for -1; another negative seed is its 64-bit two's complement, the seed torch makes of it."""
    return None if body.seed == -1 else body.seed % 2**64 if body.seed < 0 else body.seed


def _info(
    body: _Common,
    prompt: str,
    negative_prompt: str,
    pipe: Pipeline,
    results: list[GenerationResult],
    sampler: str,
    clip_skip: int,
    strength: float | None,
) -> str:
    """The web UI's `info`: a JSON string with the seeds, prompts and infotexts (Processed.js())."""
    first = results[0]
    seeds = [s for r in results for s in r.seeds]
    n = len(seeds)
    return json.dumps(
        {
            "prompt": prompt,
            "all_prompts": [prompt] * n,
            "negative_prompt": negative_prompt,
            "all_negative_prompts": [negative_prompt] * n,
            "seed": seeds[0],
            "all_seeds": seeds,
            "subseed": -1,
            "all_subseeds": [-1] * n,
            "subseed_strength": 0,
            "width": first.request.width,
            "height": first.request.height,
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
            "infotexts": [p for r in results for p in r.parameters],
            "styles": body.styles,
            "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
            "clip_skip": clip_skip + 1,
            "is_using_inpainting_conditioning": bool(pipe.manifest.inpainting and first.request.mode == "inpaint"),
            "version": f"sdrt {__version__}",
        },
        ensure_ascii=True,
    )


def _check_counts(body: _Common, config: ServeConfig) -> None:
    """batch_size and n_iter at least 1, and their product within the server's limit, blaming the one over it."""
    for field in ("batch_size", "n_iter"):
        if getattr(body, field) < 1:
            raise InputError(field, f"{field} {getattr(body, field)} must be at least 1")
    limit = config.max_images
    if body.batch_size * body.n_iter > limit:
        field = "batch_size" if body.batch_size > limit else "n_iter"
        raise InputError(
            field,
            f"batch_size {body.batch_size} x n_iter {body.n_iter} is {body.batch_size * body.n_iter} images, "
            f"over this server's limit of {limit} images per request",
        )


async def _generate(body: _Common, http: Request, api: str) -> Response:
    state = http.app.state.sdrt
    _check_supported(body)
    _check_counts(body, state.config)
    img2img = isinstance(body, Img2ImgBody)
    label = body.sampler_name or body.sampler_index
    sampler = _sampler(
        label, "sampler_name" if body.sampler_name else "sampler_index", body.scheduler, "scheduler", body.eta
    )
    eta = _eta(body, sampler)
    model = body.override_settings.get("sd_model_checkpoint")
    served = await state.use(http, model, "override_settings.sd_model_checkpoint")  # loads it if needed
    pipe = served.pipeline
    clip_skip = a1111_settings.clip_skip(body.override_settings, pipe, state.options)
    deep_cache = a1111_settings.deep_cache(body.override_settings)
    refiner_switch_at = _refiner_switch(body, pipe)
    prompt, negative_prompt = _styled(body, {s.name: s for s in state.config.styles})
    variations = pipe.family.image_conditioned  # unCLIP: img2img makes variations of init_images[0]
    if variations and not img2img:
        raise InputError(
            "prompt",
            f"this server runs a {pipe.family.description}, which makes variations of an image: "
            "use /sdapi/v1/img2img with init_images",
            status=400,
        )
    strength = body.denoising_strength if img2img and not variations else None
    init_images = (body.init_images or []) if img2img else []
    if img2img and not init_images:
        raise InputError("init_images", "init_images is required: give one base64 image (or one per batch item)")
    if len(init_images) > max(1, body.batch_size):
        raise InputError(
            "init_images",
            f"init_images has {len(init_images)} images for batch_size {body.batch_size}; give one, or at most "
            "one per batch item",
        )
    seed = _seed(body)
    hires = _hires(body, pipe, sampler) if isinstance(body, Txt2ImgBody) else None
    common = dict(
        prompt=prompt,
        negative_prompt=negative_prompt,
        height=body.height,
        width=body.width,
        num_inference_steps=body.steps,
        guidance_scale=body.cfg_scale,
        scheduler=sampler,
        eta=eta,
        clip_skip=clip_skip,
        strength=strength,
        refiner_switch_at=refiner_switch_at,
        hires=hires,
        tiling=bool(body.tiling),
        deep_cache=deep_cache,
    )
    if isinstance(body, Img2ImgBody) and a1111_sd_upscale.requested(body):  # upscale, then img2img every tile
        if body.alwayson_scripts:
            raise InputError("alwayson_scripts", "the SD upscale script runs without always-on scripts (ControlNet)")
        images, tile_results, infotexts = await a1111_sd_upscale.run(body, http, api, served, common, seed, _NAMES)
        info = json.loads(_info(body, prompt, negative_prompt, pipe, tile_results, sampler, clip_skip, strength))
        parameters = body.model_dump()
        if not body.include_init_images:
            parameters.update(init_images=None, mask=None)
        return ascii_json(
            {"images": images, "parameters": parameters, "info": json.dumps({**info, "infotexts": infotexts})}
        )
    detected_maps: list[bool] = []  # per ControlNet unit: its map goes back after the images
    opened: list[GenerationRequest] = []  # the first request built (its units' maps made)

    def build(pipe: Pipeline) -> list[tuple[GenerationRequest, Hashable]]:
        images: list[Image.Image | None] = [decode_image(b64, "init_images") for b64 in init_images] or [None]
        # the ControlNet extension's units: a unit without an image takes the input image, as the extension does
        units, detected_maps[:] = script_units(body.alwayson_scripts, images[0], state.config.max_control_units)
        mask = None
        if img2img and body.mask is not None:
            raw = decode_image(body.mask, "mask", mode=None)
            mask = _binary_mask(raw, bool(body.inpainting_mask_invert))
        with_units = dict(common, control=units)
        if len(images) == 1:  # one image (or none) for every batch item: one request, seeds seed + i
            image = images[0]
            item_mask = None if image is None or mask is None else _fit(mask, image.size)
            params = dict(
                with_units,
                seed=seed,
                num_images_per_prompt=body.batch_size * body.n_iter,
                image=image,
                mask_image=item_mask,
            )
            built = [build_request(pipe, state.config, params, names=_NAMES)]
            opened[:] = [built[0][0]]
            return built
        # one init image per batch item, as the web UI: item j of iteration k has image j and seed + k * batch + j
        first = seed if seed is not None else random_seed()
        built = []
        for iteration in range(body.n_iter):
            for j, image in enumerate(images):
                item_mask = None if mask is None else _fit(mask, image.size)
                params = dict(
                    with_units, seed=first + iteration * len(images) + j, num_images_per_prompt=1, image=image,
                    mask_image=item_mask,
                )  # fmt: skip
                built.append(build_request(pipe, state.config, params, names=_NAMES))
        opened[:] = [built[0][0]]
        return built

    completed = await state.generate_all(http, api, build, served)
    results = [c.result for c in completed]
    images = []
    if body.send_images:
        for result in results:
            images += await run_in_threadpool(encode_all, result)
        first = opened[0]
        sizes = [(first.height, first.width)]  # the extension returns each unit's map at the output's size,
        if hires is not None:  # with the hires fix at the second pass's size first
            sizes.insert(0, hires.geometry(first.height, first.width, pipe.manifest.ranges.latent_factor).size)
        for unit, send in zip(first.control, detected_maps, strict=True):
            for height, width in sizes if send else ():
                image = fitted(unit.hint, height, width, unit.resize_mode)
                images.append(await run_in_threadpool(png_base64, image, f"ControlNet map: {unit.module}"))
    parameters = body.model_dump()
    if body.width is None or body.height is None:  # the size the defaults gave, as the web UI's info says it
        parameters.update(width=results[0].request.width, height=results[0].request.height)
    if img2img and not body.include_init_images:
        parameters.update(init_images=None, mask=None)
    return ascii_json(
        {
            "images": images,
            "parameters": parameters,
            "info": _info(
                body,
                prompt,
                negative_prompt,
                pipe,
                results,
                sampler,
                clip_skip,
                hires.strength if hires is not None else strength,
            ),
        }
    )


def _fit(mask: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The mask at an init image's size (the web UI resizes the mask to the image it masks)."""
    return mask if mask.size == size else mask.resize(size, Image.Resampling.LANCZOS)


def ascii_json(content: Any) -> Response:
    """A JSON answer with non-ASCII escaped: an echoed lone surrogate (a client's) cannot fail to encode."""
    text = json.dumps(content, ensure_ascii=True, allow_nan=True, separators=(",", ":"))
    return Response(text, media_type="application/json")


@router.post("/txt2img")
async def txt2img(body: Txt2ImgBody, http: Request) -> Response:
    return await _generate(body, http, "a1111_txt2img")


@router.post("/img2img")
async def img2img(body: Img2ImgBody, http: Request) -> Response:
    return await _generate(body, http, "a1111_img2img")
