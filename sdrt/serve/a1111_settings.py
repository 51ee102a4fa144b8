"""The web UI API's settings: its model names, the options clients read and write, and override_settings.

Options are shared by every client of a server, as in the web UI: `POST /sdapi/v1/options` changes them for
all later requests. Only settings that exist here can be written (`send_seed`, `sd_model_checkpoint` naming
one of the models served, which becomes the default, `CLIP_stop_at_last_layers`, and the others at the only
value sdrt honours); anything else is refused with a 422 naming it, never stored and ignored. Model names are
resolved by the server's catalog (`sdrt.serve.catalog`), before this module sees the settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sdrt.excerpt import excerpt
from sdrt.runtime.deep_cache import DeepCache
from sdrt.runtime.model import Model
from sdrt.runtime.pipeline import Pipeline
from sdrt.serve.catalog import CatalogEntry
from sdrt.serve.errors import InputError, shown_key

# settings whose only value here is the one listed (what sdrt does); a request may state it, never change it
FIXED = {
    "sd_vae": ("Automatic", "None"),
    "eta_noise_seed_delta": (0,),
    "samples_format": ("png",),
    "enable_pnginfo": (True,),
}
# settings a client may write, with their defaults (sd_model_checkpoint and CLIP skip are checked against the model)
WRITABLE = {"send_seed": True, "CLIP_stop_at_last_layers": 1}
# override_settings keys of DeepCache (a request's own setting, never a stored option): DeepCache field -> key
DEEP_CACHE_KEYS = {"interval": "deep_cache_interval", "branch": "deep_cache_branch"}


def title(pipe: Pipeline, model: Model | None = None) -> str:
    """The web UI's checkpoint title, "name [hash]", of the base model (or of `model`)."""
    model = model or pipe.model
    return f"{model.name} [{model.manifest.source_sha256[:10]}]"


def model_names(pipe: Pipeline, model: Model | None = None) -> set[str]:
    """What clients may call the base model (or `model`): title, name, name with a file suffix, short or full hash."""
    model = model or pipe.model
    name, sha = model.name, model.manifest.source_sha256
    return {title(pipe, model), name, f"{name}.safetensors", f"{name}.ckpt", sha[:10], sha}


def clip_stop(value: object, pipe: Pipeline, field: str) -> int:
    """CLIP_stop_at_last_layers as an int (a float with no fraction, as the web UI's slider sends, is one)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    top = pipe.clip_skip_max + 1
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
        raise InputError(field, f"{field} {excerpt(value)} is outside 1..{top} (an integer)")
    return value


def read_options(default: CatalogEntry, stored: Mapping[str, Any]) -> dict[str, Any]:
    """GET /sdapi/v1/options: the settings this server has, with their current values (`default`: the model)."""
    return {
        "sd_model_checkpoint": default.title,
        "sd_checkpoint_hash": default.sha256,
        **{key: stored.get(key, default) for key, default in WRITABLE.items()},
        **{key: values[0] for key, values in FIXED.items()},
        "eta_ddim": 0.0,
        "eta_ancestral": 1.0,
    }


def write_options(pipe: Pipeline, stored: dict[str, Any], options: Mapping[str, Any]) -> None:
    """POST /sdapi/v1/options: every setting checked first (against `pipe`, the model they will apply to), then
    all stored (none when one is refused). The caller has resolved and loaded `sd_model_checkpoint`."""
    changes: dict[str, Any] = {}
    for key, value in options.items():
        if key == "sd_model_checkpoint":
            continue
        elif key == "send_seed":
            if not isinstance(value, bool):
                raise InputError(key, f"send_seed {excerpt(value)} is not true or false")
            changes[key] = value
        elif key == "CLIP_stop_at_last_layers":
            changes[key] = clip_stop(value, pipe, key)
        elif key in FIXED and value in FIXED[key]:
            continue
        else:
            shown = shown_key(key)
            raise InputError(shown, f"{shown} {excerpt(value)} cannot be set on this server; {_known()}")
    stored.update(changes)


def clip_skip(overrides: Mapping[str, Any], pipe: Pipeline, stored: Mapping[str, Any]) -> int:
    """diffusers' clip_skip for a request: CLIP_stop_at_last_layers N (override, else the option) is N - 1.

    The caller has resolved `sd_model_checkpoint` (the request's model, `pipe`)."""
    settings = dict(overrides)
    settings.pop("sd_model_checkpoint", None)
    settings.pop("sd_checkpoint_hash", None)
    settings.pop("send_seed", None)  # a UI setting: no effect on the image
    for key in DEEP_CACHE_KEYS.values():  # read by deep_cache()
        settings.pop(key, None)
    field = "override_settings.CLIP_stop_at_last_layers"
    stop_at = settings.pop("CLIP_stop_at_last_layers", stored.get("CLIP_stop_at_last_layers", 1))
    for key, value in settings.items():
        if value not in FIXED.get(key, ()):
            field = f"override_settings.{shown_key(key)}"
            raise InputError(field, f"{field} {excerpt(value)} is not supported by sdrt; {_known()}")
    return clip_stop(stop_at, pipe, field) - 1


def deep_cache(overrides: Mapping[str, Any]) -> DeepCache | None:
    """DeepCache for a request from override_settings.deep_cache_interval (on when given) and deep_cache_branch."""
    given = {field: overrides[key] for field, key in DEEP_CACHE_KEYS.items() if key in overrides}
    if not given:
        return None
    if "interval" not in given:
        key = DEEP_CACHE_KEYS["interval"]
        raise InputError(f"override_settings.{key}", f"override_settings.{key} is needed to turn DeepCache on")
    for field, value in given.items():  # the web UI's sliders send whole numbers as floats
        if isinstance(value, float) and value.is_integer():
            given[field] = int(value)
    try:
        return DeepCache(**given)
    except ValueError as exc:
        field = next((f for f in given if f"deep_cache {f}" in str(exc)), "interval")
        raise InputError(f"override_settings.{DEEP_CACHE_KEYS[field]}", f"override_settings: {exc}") from None


def _known() -> str:
    fixed = ", ".join(f"{key} ({values[0]!r} only)" for key, values in FIXED.items())
    deep = ", ".join(DEEP_CACHE_KEYS.values())
    return (
        "the settings here are sd_model_checkpoint (one of GET /sdapi/v1/sd-models), send_seed, "
        f"CLIP_stop_at_last_layers, {fixed}; per request also {deep}"
    )
