"""ControlNet preprocessors ("modules"): a photo -> the map a ControlNet reads, as the web UI ControlNet extension
makes them.

The ones that need no model weights run built in, on OpenCV, as the extension defines them: the image scaled so
its short side is the processor resolution (cubic up, area down) and edge-padded to multiples of 64 where the
extension does, the operation, the padding cut off again. The annotator-model ones (depth, openpose, hed, mlsd,
lineart, normal) run through `controlnet_aux` with the annotator weights the user has on disk
(`annotator_dir` / `--annotator-dir`), never downloading; without them, a clear error says what to put where.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Setting:
    """One of a preprocessor's settings (threshold_a or threshold_b): its meaning, default and range."""

    label: str
    default: float
    minimum: float
    maximum: float


@dataclass(frozen=True)
class Module:
    """A preprocessor: what it makes, its settings, and whether it works at the processor resolution."""

    name: str
    run: Callable[..., np.ndarray] | None  # (HWC uint8 RGB, resolution, a, b, mask, seed) -> map; None: annotator
    tags: tuple[str, ...]  # the extension's control types it serves
    a: Setting | None = None  # threshold_a
    b: Setting | None = None  # threshold_b
    uses_resolution: bool = True  # processor_res matters
    needs_mask: bool = False
    annotator: tuple[str, str, tuple[str, ...]] | None = None  # (controlnet_aux class, its weights' repo, files)


def hwc3(x: np.ndarray) -> np.ndarray:
    """Any uint8 image array as (H, W, 3): gray repeated, alpha composed over white (the extension's HWC3)."""
    if x.ndim == 2:
        x = x[:, :, None]
    if x.shape[2] == 1:
        return np.concatenate([x, x, x], axis=2)
    if x.shape[2] == 4:
        color = x[:, :, :3].astype(np.float32)
        alpha = x[:, :, 3:4].astype(np.float32) / 255.0
        return (color * alpha + 255.0 * (1.0 - alpha)).clip(0, 255).astype(np.uint8)
    return x


def resize_with_pad(image: np.ndarray, resolution: int) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """The image scaled to short side `resolution` and edge-padded to multiples of 64; and what cuts the pad off."""
    import cv2

    image = hwc3(image)
    height, width = image.shape[:2]
    k = float(resolution) / float(min(height, width))
    target_h, target_w = int(np.round(height * k)), int(np.round(width * k))
    image = cv2.resize(image, (target_w, target_h), interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA)
    pad_h, pad_w = -target_h % 64, -target_w % 64
    padded = np.pad(image, [[0, pad_h], [0, pad_w], [0, 0]], mode="edge")
    return np.ascontiguousarray(padded), lambda x: np.ascontiguousarray(x[:target_h, :target_w])


def _canny(image, resolution, a, b, mask, seed):
    import cv2

    padded, unpad = resize_with_pad(image, resolution)
    return unpad(cv2.Canny(padded, int(a), int(b)))


def _invert(image, resolution, a, b, mask, seed):
    return 255 - hwc3(image)


def _blur_gaussian(image, resolution, a, b, mask, seed):
    import cv2

    padded, unpad = resize_with_pad(image, resolution)
    return cv2.GaussianBlur(unpad(padded), (0, 0), float(a))


def _tile_resample(image, resolution, a, b, mask, seed):
    import cv2

    image = hwc3(image)
    if a < 1.1:  # the extension's rule: below 1.1 the image is left as it is
        return image
    height, width = int(image.shape[0] / a), int(image.shape[1] / a)
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def _threshold(image, resolution, a, b, mask, seed):
    padded, unpad = resize_with_pad(image, resolution)
    out = np.zeros_like(padded, dtype=np.uint8)
    out[np.min(padded, axis=2) > a] = 255
    return unpad(out)


def _scribble_xdog(image, resolution, a, b, mask, seed):
    import cv2

    padded, unpad = resize_with_pad(image, resolution)
    fine = cv2.GaussianBlur(padded.astype(np.float32), (0, 0), 0.5)
    coarse = cv2.GaussianBlur(padded.astype(np.float32), (0, 0), 5.0)
    dog = (255 - np.min(coarse - fine, axis=2)).clip(0, 255).astype(np.uint8)
    out = np.zeros_like(padded, dtype=np.uint8)
    out[2 * (255 - dog) > a] = 255
    return unpad(out)


def noise_disk(height: int, width: int, frequency: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth noise in [0, 1] of shape (H, W, 1): uniform noise on a coarse grid, upscaled cubically (as the
    extension's)."""
    import cv2

    coarse = rng.uniform(0, 1, size=(height // frequency + 2, width // frequency + 2))
    fine = cv2.resize(coarse, (width + 2 * frequency, height + 2 * frequency), interpolation=cv2.INTER_CUBIC)
    fine = fine[frequency : frequency + height, frequency : frequency + width]
    fine = fine - np.min(fine)
    return (fine / np.max(fine))[:, :, None]


def _shuffle(image, resolution, a, b, mask, seed):
    """Content shuffle: the image remapped through a smooth random flow. The extension draws the flow from numpy's
    global state; here it is drawn from the request's seed, so the same request shuffles the same way."""
    import cv2

    padded, unpad = resize_with_pad(image, resolution)
    image = unpad(padded)
    height, width = image.shape[:2]
    rng = np.random.default_rng(seed)
    x = noise_disk(height, width, 256, rng) * float(width - 1)
    y = noise_disk(height, width, 256, rng) * float(height - 1)
    flow = np.concatenate([x, y], axis=2).astype(np.float32)
    return cv2.remap(image, flow, None, cv2.INTER_LINEAR)


def _lineart_standard(image, resolution, a, b, mask, seed):
    import cv2

    padded, unpad = resize_with_pad(image, resolution)
    x = padded.astype(np.float32)
    blurred = cv2.GaussianBlur(x, (0, 0), 6.0)
    intensity = np.min(blurred - x, axis=2).clip(0, 255)
    strong = intensity[intensity > 8]
    intensity /= max(16.0, float(np.median(strong)) if strong.size else 0.0)
    intensity *= 127
    return unpad(intensity.clip(0, 255).astype(np.uint8))


def _inpaint(image, resolution, a, b, mask, seed):
    """The image with its mask as alpha (RGBA): the ControlNet reads masked pixels as -1 (`hint_tensor`)."""
    rgb = hwc3(image)
    alpha = np.asarray(mask.convert("L").resize((rgb.shape[1], rgb.shape[0]), Image.Resampling.NEAREST))
    return np.concatenate([rgb, alpha[:, :, None]], axis=2)


_SIGMA = Setting("Sigma", 9.0, 0.01, 64.0)
_REPO = "lllyasviel/Annotators"  # where the annotator models' weights are published
MODULES: dict[str, Module] = {
    m.name: m
    for m in (
        Module("none", None, ("All",), uses_resolution=False),
        Module(
            "canny",
            _canny,
            ("Canny",),
            Setting("Low Threshold", 100, 1, 255),
            Setting("High Threshold", 200, 1, 255),
        ),
        Module("invert", _invert, ("Canny", "Lineart", "Scribble", "MLSD"), uses_resolution=False),
        Module("blur_gaussian", _blur_gaussian, ("Tile",), _SIGMA),
        Module("tile_resample", _tile_resample, ("Tile",), Setting("Down Sampling Rate", 1.0, 1.0, 8.0), None, False),
        Module("threshold", _threshold, ("Threshold",), Setting("Binarization Threshold", 127, 0, 255)),
        Module("scribble_xdog", _scribble_xdog, ("Scribble",), Setting("XDoG Threshold", 32, 1, 64)),
        Module("shuffle", _shuffle, ("Shuffle",)),
        Module("lineart_standard", _lineart_standard, ("Lineart",)),
        Module("inpaint", _inpaint, ("Inpaint",), uses_resolution=False, needs_mask=True),
        # annotator models: (controlnet_aux class, the repository their weights come from, the files it reads)
        Module("depth", None, ("Depth",), annotator=("MidasDetector", _REPO, ("dpt_hybrid-midas-501f0c75.pt",))),
        Module(
            "openpose",
            None,
            ("OpenPose",),
            annotator=("OpenposeDetector", _REPO, ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth")),
        ),
        Module("hed", None, ("SoftEdge",), annotator=("HEDdetector", _REPO, ("ControlNetHED.pth",))),
        Module(
            "mlsd",
            None,
            ("MLSD",),
            Setting("MLSD Value Threshold", 0.1, 0.01, 2.0),
            Setting("MLSD Distance Threshold", 0.1, 0.01, 20.0),
            annotator=("MLSDdetector", _REPO, ("mlsd_large_512_fp32.pth",)),
        ),
        Module("lineart", None, ("Lineart",), annotator=("LineartDetector", _REPO, ("sk_model.pth", "sk_model2.pth"))),
        Module("normal_bae", None, ("NormalMap",), annotator=("NormalBaeDetector", _REPO, ("scannet.pt",))),
    )
}  # fmt: skip
ALIASES = {"depth_midas": "depth", "openpose_full": "openpose", "softedge_hed": "hed", "normal": "normal_bae",
           "lineart_realistic": "lineart", "inpaint_global_harmonious": "inpaint"}  # fmt: skip


def module_named(name: str) -> Module:
    """A preprocessor by name (or an extension alias); ValueError listing the known names."""
    found = MODULES.get(ALIASES.get(name, name))
    if found is None:
        raise ValueError(f"unknown ControlNet module {name!r}; known: {', '.join(MODULES)}")
    return found


def detect(
    name: str,
    image: Image.Image,
    resolution: int = 512,
    threshold_a: float | None = None,
    threshold_b: float | None = None,
    mask: Image.Image | None = None,
    seed: int = 0,
    annotator_dir: str | os.PathLike | None = None,
) -> Image.Image:
    """The map preprocessor `name` makes of `image` (an RGB image; RGBA with the mask as alpha for inpaint).

    Settings left out take the module's defaults; out-of-range ones are a ValueError naming the range.
    """
    module = module_named(name)
    if module.name == "none":
        return image
    if module.needs_mask and mask is None:
        raise ValueError(f"ControlNet module {module.name} needs a mask (the inpaint area): give the unit's mask")
    a = _setting(module.name, module.a, threshold_a, "threshold_a")
    b = _setting(module.name, module.b, threshold_b, "threshold_b")
    if module.run is None:
        return _annotate(module, image, resolution, annotator_dir)
    out = module.run(np.asarray(image.convert("RGB")), int(resolution), a, b, mask, seed)
    return Image.fromarray(out.astype(np.uint8))


def _setting(module: str, setting: Setting | None, value: float | None, field: str) -> float:
    if setting is None:
        return 0.0
    if value is None or value == -1:  # the extension's API sends -1 for "the default"
        return float(setting.default)
    if not setting.minimum <= value <= setting.maximum:
        raise ValueError(
            f"{field} {value} is outside {setting.minimum:g}..{setting.maximum:g} ({module}'s {setting.label})"
        )
    return float(value)


def _annotate(module: Module, image: Image.Image, resolution: int, annotator_dir) -> Image.Image:
    """An annotator model's map through controlnet_aux, from weights on disk only."""
    assert module.annotator is not None  # MODULES gives every weightless module a run function
    cls, repo, files = module.annotator
    where = f"put {', '.join(files)} (from {repo}) in a directory and pass it as annotator_dir (--annotator-dir)"
    if annotator_dir is None:
        raise ValueError(f"ControlNet module {module.name} runs an annotator model, whose weights sdrt never "
                         f"downloads: {where}")  # fmt: skip
    root = Path(annotator_dir)
    missing = [f for f in files if not (root / f).is_file()]
    if missing:
        raise ValueError(f"ControlNet module {module.name} needs {', '.join(missing)} in {root}: {where}")
    try:
        import controlnet_aux
    except ImportError as exc:  # it needs torchvision, which has no CPU build beside sdrt's torch on every index
        raise ValueError(
            f"ControlNet module {module.name} runs through controlnet_aux, which cannot be imported here ({exc}); "
            "install controlnet_aux (and the torchvision build matching your torch)"
        ) from exc
    detector = getattr(controlnet_aux, cls).from_pretrained(str(root), filename=files[0])
    return detector(image.convert("RGB"), detect_resolution=int(resolution), image_resolution=int(resolution))
