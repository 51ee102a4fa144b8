"""The built-in ControlNet preprocessors equal their OpenCV definitions (the web UI ControlNet extension's), written
out here from those definitions; the annotator-model ones say what they need instead of downloading it."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from sdrt.runtime.preprocessors import MODULES, detect
from tests.runtime.test_img2img import input_image

PHOTO = input_image(120, 90, seed=3)  # not a multiple of 64: the padding and its removal matter
RES = 96


def _resize_pad(x: np.ndarray, resolution: int):
    """The extension's resize_image_with_pad: short side to `resolution` (cubic up, area down), edge pad to 64."""
    h, w = x.shape[:2]
    k = resolution / min(h, w)
    th, tw = int(np.round(h * k)), int(np.round(w * k))
    x = cv2.resize(x, (tw, th), interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA)
    padded = np.pad(x, [[0, (64 - th % 64) % 64], [0, (64 - tw % 64) % 64], [0, 0]], mode="edge")
    return padded, lambda y: y[:th, :tw]


def _rgb() -> np.ndarray:
    return np.asarray(PHOTO.convert("RGB"))


def _reference(name: str, a: float, b: float) -> np.ndarray:
    x = _rgb()
    if name == "canny":
        p, unpad = _resize_pad(x, RES)
        return unpad(cv2.Canny(p, int(a), int(b)))
    if name == "invert":
        return 255 - x
    if name == "blur_gaussian":
        p, unpad = _resize_pad(x, RES)
        return cv2.GaussianBlur(unpad(p), (0, 0), a)
    if name == "tile_resample":
        return cv2.resize(x, (int(x.shape[1] / a), int(x.shape[0] / a)), interpolation=cv2.INTER_AREA)
    if name == "threshold":
        p, unpad = _resize_pad(x, RES)
        return unpad(np.where(p.min(axis=2, keepdims=True) > a, 255, 0).repeat(3, axis=2).astype(np.uint8))
    if name == "scribble_xdog":
        p, unpad = _resize_pad(x, RES)
        dog = (255 - np.min(cv2.GaussianBlur(p.astype(np.float32), (0, 0), 5.0)
                             - cv2.GaussianBlur(p.astype(np.float32), (0, 0), 0.5), axis=2)).clip(0, 255)  # fmt: skip
        out = np.zeros_like(p)
        out[2 * (255 - dog.astype(np.uint8)) > a] = 255
        return unpad(out)
    if name == "lineart_standard":
        p, unpad = _resize_pad(x, RES)
        f = p.astype(np.float32)
        intensity = np.min(cv2.GaussianBlur(f, (0, 0), 6.0) - f, axis=2).clip(0, 255)
        intensity = intensity / max(16, np.median(intensity[intensity > 8])) * 127
        return unpad(intensity.clip(0, 255).astype(np.uint8))
    raise AssertionError(name)


@pytest.mark.parametrize(
    ("name", "a", "b"),
    [("canny", 80, 160), ("invert", None, None), ("blur_gaussian", 2.5, None), ("tile_resample", 2.0, None),
     ("threshold", 100, None), ("scribble_xdog", 20, None), ("lineart_standard", None, None)],
)  # fmt: skip
def test_built_in_preprocessors_equal_their_opencv_definitions(name, a, b):
    ours = np.asarray(detect(name, PHOTO, RES, a, b))
    theirs = _reference(name, a if a is not None else 0, b if b is not None else 0)
    if theirs.ndim == 3 and ours.ndim == 2:
        theirs = theirs[:, :, 0]
    assert ours.shape == theirs.shape and np.array_equal(ours, theirs)


def test_defaults_none_inpaint_and_shuffle():
    assert np.array_equal(np.asarray(detect("canny", PHOTO, RES)), np.asarray(detect("canny", PHOTO, RES, 100, 200)))
    assert detect("none", PHOTO) is PHOTO
    mask = Image.new("L", PHOTO.size)
    mask.paste(255, (10, 10, 50, 40))
    painted = np.asarray(detect("inpaint", PHOTO, mask=mask))
    assert painted.shape == (90, 120, 4) and np.array_equal(painted[:, :, :3], _rgb())
    assert np.array_equal(painted[:, :, 3], np.asarray(mask))
    shuffled = [np.asarray(detect("shuffle", PHOTO, RES, seed=s)) for s in (1, 1, 2)]
    assert np.array_equal(shuffled[0], shuffled[1]) and not np.array_equal(shuffled[0], shuffled[2])
    assert shuffled[0].shape == (RES, 128, 3)  # the extension's processor resolution, unpadded


def test_settings_out_of_range_and_missing_masks_are_refused():
    with pytest.raises(ValueError, match=r"threshold_a 300 is outside 1\.\.255 \(canny's Low Threshold\)"):
        detect("canny", PHOTO, RES, 300, None)
    with pytest.raises(ValueError, match="needs a mask"):
        detect("inpaint", PHOTO)


def test_annotator_modules_need_weights_on_disk_and_never_download(tmp_path):
    with pytest.raises(ValueError, match=r"depth runs an annotator model.*dpt_hybrid-midas-501f0c75\.pt"):
        detect("depth", PHOTO)
    with pytest.raises(
        ValueError, match=rf"needs body_pose_model\.pth, hand_pose_model\.pth, facenet\.pth in {tmp_path}"
    ):
        detect("openpose", PHOTO, annotator_dir=tmp_path)
    for file in MODULES["hed"].annotator[2]:
        (tmp_path / file).write_bytes(b"weights")
    try:
        import controlnet_aux  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="runs through controlnet_aux, which cannot be imported here"):
            detect("hed", PHOTO, annotator_dir=tmp_path)
    else:  # pragma: no cover - controlnet_aux needs torchvision, which this environment cannot have
        pytest.skip("controlnet_aux is importable here: the annotator path itself is not tested with real weights")
