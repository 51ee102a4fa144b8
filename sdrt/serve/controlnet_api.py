"""The web UI ControlNet extension's API on `sdrt serve`: its units in `alwayson_scripts`, and its /controlnet/ routes.

Units come as the extension's clients send them (`alwayson_scripts: {"controlnet": {"args": [unit, ...]}}`, the
script name in any case), with its field names and legacy aliases: `image` (base64, `{"image", "mask"}`, or
`[image, mask]`; `input_image` the old name), `mask` / `mask_image`, `module`, `model` (with or without its
" [hash]"), `weight`, `resize_mode` and `control_mode` (labels, aliases or numbers), `processor_res`,
`threshold_a/b` (-1: the module's default), `guidance_start`, `guidance_end` (`guidance` the old name),
`pixel_perfect`, `enabled` (false: skipped; absent: on), `save_detected_map`. Each becomes an `sdrt.Control`;
a unit that cannot run is a 4xx naming it and its field before any engine work. Detected maps follow the
images in the answer, as the extension returns them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Body, Request
from PIL import Image
from starlette.concurrency import run_in_threadpool

from sdrt.excerpt import excerpt
from sdrt.runtime.control import CONTROL_MODES, PASSES, RESIZE_MODES, Control
from sdrt.runtime.preprocessors import ALIASES, MODULES, detect, module_named
from sdrt.serve.codec import decode_image, png_base64
from sdrt.serve.errors import InputError

router = APIRouter(prefix="/controlnet")

log = logging.getLogger(__name__)
API_VERSION = 3  # the extension's API version this follows
SCRIPT = "controlnet"  # the alwayson script's name, in any case
_CONTROL_MODES = {**{label: mode for mode, label in CONTROL_MODES.items()}, 0: "balanced", 1: "prompt", 2: "control"}
_RESIZE_MODES = {
    **{label: mode for mode, label in RESIZE_MODES.items()},
    "Inner Fit (Scale to Fit)": "crop",
    "Scale to Fit (Inner Fit)": "crop",
    "Outer Fit (Shrink to Fit)": "fill",
    "Envelope (Outer Fit)": "fill",
    0: "resize",
    1: "crop",
    2: "fill",
    3: "resize",  # "Just Resize (Latent upscale)"
}
_ALIASES = {"input_image": "image", "guidance": "guidance_end", "lowvram": "low_vram", "mask_image": "mask"}
# accepted and without effect here (memory handling, UI state, features of other control models)
_IGNORED = {"low_vram", "is_ui", "input_mode", "batch_images", "output_dir", "loopback", "inpaint_crop_input_image",
            "pulid_mode", "union_control_type", "batch_mask_dir", "animatediff_batch",
            "batch_modifiers", "batch_image_files", "batch_keyframe_idx"}  # fmt: skip


def script_units(
    alwayson: Mapping[str, Any], init_image: Image.Image | None, max_units: int
) -> tuple[list[Control], list[bool]]:
    """The ControlNet units of a request's `alwayson_scripts` (enabled ones), and whether each returns its map.

    Other scripts are refused (422 naming them); a unit without an image takes the img2img input image.
    """
    units: list[Control] = []
    maps: list[bool] = []
    for name, script in alwayson.items():
        field = f"alwayson_scripts.{name}"
        if name.casefold() != SCRIPT:
            raise InputError(field, f"{field}: web UI script {excerpt(name)} is not available (sdrt runs ControlNet)")
        args = script.get("args") if isinstance(script, Mapping) else None
        if not isinstance(args, list):
            raise InputError(f"{field}.args", f"{field}.args must be a list of ControlNet units")
        for i, raw in enumerate(args):
            where = f"{field}.args.{i}"
            unit = _unit(raw, where, init_image)
            if unit is None:
                continue
            units.append(unit[0])
            maps.append(unit[1])
    if len(units) > max_units:
        raise InputError(
            "alwayson_scripts.controlnet.args",
            f"{len(units)} ControlNet units is over this server's limit of {max_units} "
            "(sdrt serve --max-control-units)",
        )
    return units, maps


def _unit(raw: Any, where: str, init_image: Image.Image | None) -> tuple[Control, bool] | None:
    if not isinstance(raw, Mapping):
        raise InputError(where, f"{where} must be an object (a ControlNet unit), not {excerpt(raw)}")
    values = dict(raw)
    for old, new in _ALIASES.items():
        if old in values:
            if new in values and values[new] is not None and old != "mask_image":
                raise InputError(f"{where}.{old}", f"{where}: give {new} or its old name {old}, not both")
            if values.get(new) is None:
                values[new] = values.pop(old)
            else:
                values.pop(old)
    if values.get("enabled") is False:
        return None
    model = values.get("model")
    if model in (None, "", "None", "none"):
        raise InputError(f"{where}.model", f"{where}.model is required: a ControlNet of GET /controlnet/model_list")
    image, mask = _images(values, where)
    if image is None:
        if init_image is None:
            raise InputError(f"{where}.image", f"{where}.image is required (txt2img has no input image to use)")
        image = init_image
    fields = {"model": str(model), "image": image}
    if mask is not None:
        fields["mask"] = mask
    module = values.get("module", "none")
    try:
        fields["module"] = module_named(str(module)).name
    except ValueError as exc:
        raise InputError(f"{where}.module", f"{where}.module: {exc}") from None
    for key, target in (("weight", "scale"), ("guidance_start", "start"), ("guidance_end", "end")):
        if values.get(key) is not None:
            fields[target] = _number(values[key], f"{where}.{key}")
    for key, table in (("control_mode", _CONTROL_MODES), ("resize_mode", _RESIZE_MODES)):
        if values.get(key) is not None:
            choice = values[key]
            if isinstance(choice, bool) or choice not in table:
                known = ", ".join(str(k) for k in table)
                raise InputError(f"{where}.{key}", f"{where}.{key} {excerpt(choice)} is not one of {known}")
            fields["mode" if key == "control_mode" else key] = table[choice]
    resolution = values.get("processor_res")
    if resolution is not None and resolution != -1:
        fields["processor_res"] = int(_number(resolution, f"{where}.processor_res"))
    for key in ("threshold_a", "threshold_b"):
        if values.get(key) is not None and values[key] != -1:
            fields[key] = _number(values[key], f"{where}.{key}")
    if values.get("pixel_perfect") is not None:
        fields["pixel_perfect"] = bool(values["pixel_perfect"])
    if values.get("advanced_weighting") is not None:
        fields["weights"] = values["advanced_weighting"]
    if values.get("hr_option") is not None:
        choice = values["hr_option"]
        table = {**{label: key for key, label in PASSES.items()}, **{i: key for i, key in enumerate(PASSES)}}
        if isinstance(choice, bool) or choice not in table:
            known = ", ".join(str(k) for k in table)
            raise InputError(f"{where}.hr_option", f"{where}.hr_option {excerpt(choice)} is not one of {known}")
        fields["passes"] = table[choice]
    unknown = sorted(set(values) - set(_KNOWN) - _IGNORED)
    if unknown:  # as the extension does: a field it does not know is logged and left out
        log.warning("%s: unknown ControlNet unit fields %s ignored", where, ", ".join(map(excerpt, unknown)))
    try:
        return Control(**fields), bool(values.get("save_detected_map", True))
    except ValueError as exc:
        field = str(exc).split(maxsplit=2)[1] if str(exc).startswith("control ") else None
        renamed = {"scale": "weight", "start": "guidance_start", "end": "guidance_end", "weights": "advanced_weighting"}
        name = renamed.get(field or "", field)
        raise InputError(f"{where}.{name}" if name else where, f"{where}: {exc}") from None


_KNOWN = {"enabled", "model", "module", "image", "mask", "weight", "guidance_start", "guidance_end", "control_mode",
          "resize_mode", "processor_res", "threshold_a", "threshold_b", "pixel_perfect", "save_detected_map",
          "advanced_weighting", "hr_option", "effective_region_mask", "ipadapter_input"}  # fmt: skip


def _images(values: Mapping[str, Any], where: str) -> tuple[Image.Image | None, Image.Image | None]:
    """A unit's image and mask from its `image` (base64, {image, mask}, [image, mask]) and `mask` fields."""
    for feature in ("effective_region_mask", "ipadapter_input"):
        if values.get(feature) is not None:
            raise InputError(f"{where}.{feature}", f"{where}.{feature} is not supported by sdrt")
    image, mask = values.get("image"), values.get("mask")
    if isinstance(image, Mapping):
        image, mask = image.get("image"), image.get("mask", mask)
    elif isinstance(image, (list, tuple)):
        if len(image) != 2:
            raise InputError(f"{where}.image", f"{where}.image as a list is [image, mask]")
        image, mask = image
    decoded = None if image is None else _decode(image, f"{where}.image", "RGB")
    decoded_mask = None if mask is None else _decode(mask, f"{where}.mask", "L")
    return decoded, decoded_mask


def _decode(value: Any, field: str, mode: str) -> Image.Image:
    if not isinstance(value, str):
        raise InputError(field, f"{field} must be a base64 image, not {excerpt(value)}")
    return decode_image(value, field, mode=mode)


def _number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(field, f"{field} {excerpt(value)} is not a number")
    return float(value)


def _library(http: Request):
    return http.app.state.sdrt.require_pipeline().controlnets


@router.get("/version")
async def version() -> dict:
    return {"version": API_VERSION}


@router.get("/model_list")
async def model_list(http: Request, update: bool = True) -> dict:
    """The ControlNets of `sdrt serve --controlnet-dir`, as "name [hash]"."""
    library = _library(http)
    return {"model_list": await run_in_threadpool(library.labels)}


def _detail(name: str) -> dict:
    module = MODULES[name]
    sliders = []
    if module.uses_resolution:
        sliders.append({"name": "Preprocessor Resolution", "value": 512, "min": 64, "max": 2048, "step": 8})
    for setting in (module.a, module.b):
        if setting is not None:
            sliders.append(
                {"name": setting.label, "value": setting.default, "min": setting.minimum, "max": setting.maximum}
            )
    return {"model_free": module.annotator is None, "sliders": sliders}


@router.get("/module_list")
async def module_list(alias_names: bool = False) -> dict:
    """The preprocessors sdrt runs (the annotator-model ones need --annotator-dir and controlnet_aux)."""
    names = list(MODULES)
    if alias_names:
        names = [next((a for a, n in ALIASES.items() if n == name), name) for name in names]
    return {"module_list": names, "module_detail": {n: _detail(ALIASES.get(n, n)) for n in names}}


@router.get("/control_types")
async def control_types(http: Request) -> dict:
    """Each control type (the modules' tags): its modules and the ControlNets whose names mention it."""
    models = await run_in_threadpool(_library(http).labels)
    tags = {tag for module in MODULES.values() for tag in module.tags}
    types = {}
    for tag in sorted(tags):
        modules = [n for n, m in MODULES.items() if tag in m.tags or tag == "All"]
        fitting = [m for m in models if tag.casefold() in m.casefold()] if tag != "All" else models
        types[tag] = {
            "module_list": modules,
            "model_list": fitting,
            "default_option": modules[0] if modules else "none",
            "default_model": fitting[0] if fitting else "None",
        }
    return {"control_types": types}


@router.get("/settings")
async def settings(http: Request) -> dict:
    return {"control_net_unit_count": http.app.state.sdrt.config.max_control_units}


@router.post("/detect")
async def detect_maps(
    http: Request,
    controlnet_module: str = Body("none"),
    controlnet_input_images: list[str] = Body([]),  # noqa: B008
    controlnet_processor_res: int = Body(-1),
    controlnet_threshold_a: float = Body(-1),
    controlnet_threshold_b: float = Body(-1),
    controlnet_masks: list[str] = Body([]),  # noqa: B008
    low_vram: bool = Body(False),
) -> dict:
    """Run a preprocessor on images: their maps as base64 PNGs."""
    try:
        module = module_named(controlnet_module)
    except ValueError as exc:
        raise InputError("controlnet_module", str(exc)) from None
    if not controlnet_input_images:
        raise InputError("controlnet_input_images", "controlnet_input_images is empty: give at least one image")
    if module.needs_mask and len(controlnet_masks) != len(controlnet_input_images):
        raise InputError("controlnet_masks", f"module {module.name} needs one mask per image in controlnet_masks")
    annotator_dir = http.app.state.sdrt.require_pipeline().annotator_dir

    def run() -> list[str]:
        out = []
        for i, b64 in enumerate(controlnet_input_images):
            image = decode_image(b64, f"controlnet_input_images.{i}")
            mask = decode_image(controlnet_masks[i], f"controlnet_masks.{i}", mode="L") if module.needs_mask else None
            resolution = 512 if controlnet_processor_res == -1 else controlnet_processor_res
            try:
                found = detect(
                    module.name, image, resolution, controlnet_threshold_a, controlnet_threshold_b, mask=mask,
                    annotator_dir=annotator_dir,
                )  # fmt: skip
            except ValueError as exc:
                raise InputError("controlnet_module", str(exc)) from None
            out.append(png_base64(found, f"ControlNet module: {module.name}"))
        return out

    return {"images": await run_in_threadpool(run), "info": "Success"}
