"""ControlNet units of a request (Zhang et al. 2023, "Adding Conditional Control to Text-to-Image Diffusion Models").

A unit names a ControlNet, its conditioning image and how it steers: `scale` (diffusers'
`controlnet_conditioning_scale`), `start`/`end` (`control_guidance_start/end`) and `mode` (the web UI ControlNet
extension's control modes). Everything here is a runtime value: a request may name any ControlNets the
pipeline can load, and changing a scale, a window or a mode rebuilds nothing. Each field is a request parameter
(`sdrt generate --control CN=map.png:0.8`, the native API's `control` list, the web UI extension's units).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from PIL import Image

from sdrt.excerpt import excerpt
from sdrt.params import Param, check_declared, declare, declared
from sdrt.runtime.image_inputs import open_image

# mode -> the web UI extension's label
CONTROL_MODES = {
    "balanced": "Balanced",
    "prompt": "My prompt is more important",  # residual i times 0.825 ** (12 - i)
    "control": "ControlNet is more important",  # that, on the conditional rows only
}
# resize mode -> the web UI extension's label
RESIZE_MODES = {
    "resize": "Just Resize",  # stretched to the output size (diffusers' prepare_image)
    "crop": "Crop and Resize",  # scaled to cover the output, centre cropped
    "fill": "Resize and Fill",  # scaled to fit inside the output, the rest filled with the border's median colour
}
MAX_SCALE = 2.0  # the extension's weight slider goes to 2
# passes -> the extension's hr_option label
PASSES = {"both": "Both", "first": "Low res only", "hires": "High res only"}


@dataclass(frozen=True)
class Control:
    """One ControlNet unit: a ControlNet, its conditioning image, and how strongly and when it steers."""

    model: str = declare(
        None,
        "str",
        "the ControlNet: an artifact directory, or the name of one in the pipeline's controlnet_dir (torch "
        "backend: also a diffusers ControlNet directory)",
    )
    image: Any = declare(None, "image", "the conditioning image: a map (edges, depth, pose), or a photo with module")
    scale: float = declare(
        1.0, "float", "controlnet_conditioning_scale: how strongly its residuals steer", minimum=0.0, maximum=MAX_SCALE
    )
    start: float = declare(
        0.0, "float", "control_guidance_start: the share of the steps before it starts", minimum=0.0, maximum=1.0
    )
    end: float = declare(
        1.0, "float", "control_guidance_end: the share of the steps after which it stops", minimum=0.0, maximum=1.0
    )
    mode: str = declare(
        "balanced",
        "str",
        "balanced; prompt (the prompt matters more: residual i x 0.825^(12-i)); control (that, on the conditional "
        "rows only)",
        choices=tuple(CONTROL_MODES),
    )
    module: str = declare("none", "str", "a preprocessor run on image first (see sdrt detect --help): none, canny, ...")
    resize_mode: str = declare(
        "resize",
        "str",
        "how the image meets the output size: resize (stretched, as diffusers), crop (cover, centre crop) or fill "
        "(fit, border colour around)",
        choices=tuple(RESIZE_MODES),
    )
    processor_res: int = declare(512, "int", "the preprocessor's working resolution (short side)", minimum=64)
    pixel_perfect: bool = declare(
        False, "bool", "the preprocessor works at the output's resolution (the extension's pixel perfect)"
    )
    threshold_a: float | None = declare(None, "float", "the preprocessor's first setting (canny: low threshold)")
    threshold_b: float | None = declare(None, "float", "the preprocessor's second setting (canny: high threshold)")
    mask: Any = declare(None, "image", "the inpaint preprocessor's mask: its white pixels are masked")
    weights: Any = declare(
        None,
        "floats",
        "each residual's own factor, down blocks then the mid block (13 for SD 1.x/2.x, 10 for SDXL), in place of "
        "scale and mode (the extension's advanced_weighting)",
    )
    passes: str = declare(
        "both",
        "str",
        "with the hires fix: the passes it steers, both, first (the low-resolution pass only) or hires (the second "
        "pass only); without the hires fix it steers the one pass",
        choices=tuple(PASSES),
    )
    # the map the ControlNet reads: the image, or what the preprocessor made of it (set when the request is made)
    hint: Image.Image | None = None
    label: str | None = None  # the ControlNet as infotexts name it, "name [hash]" (set when the request is made)

    def __post_init__(self) -> None:
        if isinstance(self.model, os.PathLike):
            object.__setattr__(self, "model", str(Path(self.model)))
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"control model {excerpt(self.model)} is not a ControlNet name or directory")
        if self.image is None:
            raise ValueError(f"control unit {self.model!r} has no image: give image=... (a map, or a photo and module)")
        check_declared(self, prefix="control ")
        if self.weights is not None:
            weights = self.weights if isinstance(self.weights, (list, tuple)) else None
            if not weights or not all(_finite(w) and w >= 0 for w in weights):
                raise ValueError(
                    f"control weights {excerpt(self.weights)} is not a list of numbers >= 0 (one per residual: 13 for "
                    "SD 1.x/2.x, 10 for SDXL)"
                )
            object.__setattr__(self, "weights", tuple(float(w) for w in weights))
        if self.start > self.end:
            raise ValueError(f"control start {self.start} is after end {self.end}: start <= end")

    @property
    def name(self) -> str:
        """The ControlNet's name, as infotexts and listings give it: its directory's name."""
        return Path(self.model).name

    def opened(self, height: int, width: int, seed: int = 0, annotator_dir: str | os.PathLike | None = None) -> Control:
        """This unit with its image (and mask) read, and its hint made (the preprocessor run, if any) for an
        output of height x width.

        `seed` is the request's: a preprocessor that draws (shuffle) draws from it, so a request is reproducible.
        """
        from sdrt.runtime.preprocessors import detect

        image = open_image(self.image, "control image")
        mask = None if self.mask is None else open_image(self.mask, "control mask")
        resolution = self.processor_res
        if self.pixel_perfect:  # the extension's estimate: the map at the size it meets the output at
            k_h, k_w = height / image.height, width / image.width
            k = min(k_h, k_w) if self.resize_mode == "fill" else max(k_h, k_w)
            resolution = max(64, round(k * min(image.height, image.width)))
        hint = detect(
            self.module, image, resolution, self.threshold_a, self.threshold_b, mask=mask, seed=seed,
            annotator_dir=annotator_dir,
        )  # fmt: skip
        return replace(self, image=image, mask=mask, hint=hint, processor_res=resolution)

    def infotext(self, model: str | None = None) -> str:
        """The unit as the extension writes it in an image's infotext (`ControlNet 0: "Module: ..."`)."""
        from sdrt.runtime.preprocessors import module_named

        module = module_named(self.module)
        a = self.threshold_a if self.threshold_a not in (None, -1) else (module.a.default if module.a else -1)
        b = self.threshold_b if self.threshold_b not in (None, -1) else (module.b.default if module.b else -1)
        fields = {
            "Module": module.name,
            "Model": model or self.label or self.name,
            "Weight": float(self.scale),
            "Resize Mode": RESIZE_MODES[self.resize_mode],
            "Processor Res": self.processor_res,
            "Threshold A": float(a),
            "Threshold B": float(b),
            "Guidance Start": float(self.start),
            "Guidance End": float(self.end),
            "Pixel Perfect": self.pixel_perfect,
            "Control Mode": CONTROL_MODES[self.mode],
        }
        return ", ".join(f"{k}: {v}" for k, v in fields.items())

    def in_pass(self, hires_pass: bool) -> Control | None:
        """The unit as it steers a pass of a hires fix (None: it does not steer that pass).

        In the second pass the extension forces soft weights on canny and mlsd maps (its "soft injection" in high
        resolution fixes, which it found to reduce artifacts): a balanced unit of those steers as "prompt" there.
        """
        if self.passes == ("first" if hires_pass else "hires"):
            return None
        if hires_pass and self.mode == "balanced" and ("canny" in self.module or "mlsd" in self.module):
            return replace(self, mode="prompt")
        return self


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


CLI_SYNTAX = "CONTROLNET=IMAGE[:SCALE[:START:END]][,FIELD=VALUE...]"
_CLI_FIELDS = (
    "mode", "module", "resize_mode", "processor_res", "pixel_perfect", "threshold_a", "threshold_b", "mask",
    "weights", "passes",
)  # fmt: skip


def parse_cli(value: str) -> Control:
    """`--control CN=IMAGE[:SCALE[:START:END]][,FIELD=VALUE...]` as a unit; FIELD is any of the unit's other
    fields (mode, module, resize_mode, processor_res, pixel_perfect, threshold_a, threshold_b, mask, weights as
    numbers separated by /, passes)."""
    head, *options = value.split(",")
    model, sep, rest = head.partition("=")
    if not sep or not model or not rest:
        raise ValueError(f"--control {value!r} is not {CLI_SYNTAX}")
    parts = rest.split(":")
    if len(parts) not in (1, 2, 4):
        raise ValueError(f"--control {value!r} is not {CLI_SYNTAX}")
    try:
        numbers = [float(p) for p in parts[1:]]
    except ValueError as exc:
        raise ValueError(f"--control {value!r}: scale, start and end are numbers ({exc})") from None
    fields: dict[str, Any] = dict(zip(("scale", "start", "end"), numbers, strict=False))
    types = {p.name: p.type for p in declared(Control)}
    for option in options:
        name, sep, text = option.partition("=")
        name = name.strip()
        if not sep or name not in _CLI_FIELDS:
            raise ValueError(
                f"--control {value!r}: {option!r} is not FIELD=VALUE with FIELD one of {', '.join(_CLI_FIELDS)}"
            )
        fields[name] = _cli_value(name, types[name], text.strip(), value)
    return Control(model, image=Path(parts[0]), **fields)


def _cli_value(name: str, type: str, text: str, value: str) -> Any:
    try:
        if type == "int":
            return int(text)
        if type == "float":
            return float(text)
    except ValueError:
        raise ValueError(f"--control {value!r}: {name} {text!r} is not a number") from None
    if type == "bool":
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"--control {value!r}: {name} {text!r} is not true or false")
        return text.lower() in ("true", "1")
    if type == "image":
        return Path(text)
    if type == "floats":  # weights=1/1/0.5/...: "/" between numbers (the unit's fields are comma-separated)
        try:
            return tuple(float(t) for t in text.split("/"))
        except ValueError:
            raise ValueError(f"--control {value!r}: {name} {text!r} is not numbers separated by /") from None
    return text


PARAMS = (
    Param(
        "control",
        "object",
        "ControlNet units: each a ControlNet, its conditioning image, scale, start, end and mode "
        f"(CLI: --control {CLI_SYNTAX}, repeatable)",
        owner="controlnet",
        fields=declared(Control, owner="controlnet"),
        make=Control,
        many=True,
        parse=parse_cli,
        flag="--control",
        webui="alwayson_scripts.controlnet.args",
    ),
    Param(
        "guess_mode",
        "bool",
        "diffusers' guess mode: the ControlNets run on the conditional rows only, their residuals scaled by "
        "logspace(-1, 0)",
        default=False,
        owner="controlnet",
    ),
)
