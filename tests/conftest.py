"""Session fixtures: a tiny random-weight SD 1.x model, its export, and pipelines on every CPU backend."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from sdrt.spec import ShapeRanges

# Tiny GAN upscaler files, one per layout and format: (architecture, layout, scale, suffix) by file stem
UPSCALER_FILES = {
    "esrgan-original": ("ESRGAN", "original", 4, ".pth"),
    "esrgan-bsrgan": ("ESRGAN", "bsrgan", 4, ".safetensors"),
    "realesrgan-x4plus": ("ESRGAN", "realesrgan", 4, ".pth"),
    "realesrgan-x2plus": ("ESRGAN", "realesrgan", 2, ".safetensors"),
    "compact-x4": ("Compact", "realesrgan", 4, ".pth"),
    "swinir-x4": ("SwinIR", "swinir", 4, ".pth"),
    "swinir-x2": ("SwinIR", "swinir", 2, ".safetensors"),
}
# The shapes the test artifact supports; the torch backend is given the same so both chunk alike.
RANGES = ShapeRanges(max_batch=2, min_size=64, max_size=256, opt_size=128)
BACKENDS = ("torch", "onnxruntime")


def write_model(tmp_path_factory, name: str, variant: str = "sd1") -> Path:
    """A tiny random-weight model of `variant` in diffusers layout."""
    from sdrt.demo import write_demo_model

    return write_demo_model(tmp_path_factory.mktemp("models") / name, variant=variant)


def export(
    model: Path,
    tmp_path_factory,
    name: str,
    opt_size: int | None = 128,
    tiling: bool = False,
    deep_cache: tuple[int, ...] = (),
) -> Path:
    """`model` exported for RANGES' batch and sizes (and with `tiling`, the UNet's and VAE's circular twins; with
    `deep_cache`, DeepCache's graphs of those branches)."""
    from sdrt.export import ExportConfig, export_model

    out = tmp_path_factory.mktemp("artifacts") / name
    config = ExportConfig(
        max_batch=RANGES.max_batch, min_size=RANGES.min_size, max_size=RANGES.max_size, tiling=tiling,
        deep_cache=deep_cache,
    )  # fmt: skip
    export_model(model, out, config if opt_size is None else replace(config, opt_size=opt_size))
    return out


def load_pipelines(model: Path, artifact: Path) -> dict:
    """The model on the torch backend and its artifact on onnxruntime, by backend name."""
    from sdrt import Pipeline

    return {
        "torch": Pipeline.load(model, backend="torch", ranges=RANGES),
        "onnxruntime": Pipeline.load(artifact, backend="onnxruntime"),
    }


@pytest.fixture(scope="session", autouse=True)
def private_caches(tmp_path_factory):
    """The hash memo in a scratch file, and no engine cache from the environment: tests never touch ~/.cache."""
    import os

    saved = {k: os.environ.get(k) for k in ("SDRT_HASH_MEMO", "SDRT_CACHE_DIR")}
    os.environ["SDRT_HASH_MEMO"] = str(tmp_path_factory.mktemp("memo") / "hash-memo.json")
    os.environ.pop("SDRT_CACHE_DIR", None)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def upscaler_dir(tmp_path_factory) -> Path:
    """A directory of one tiny random upscaler file per entry of UPSCALER_FILES (milliseconds to write)."""
    from sdrt.demo.upscalers import write_upscaler

    directory = tmp_path_factory.mktemp("upscalers")
    for i, (name, (architecture, layout, scale, suffix)) in enumerate(UPSCALER_FILES.items()):
        write_upscaler(directory / f"{name}{suffix}", architecture, layout, scale=scale, seed=i)
    return directory


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory) -> Path:
    return write_model(tmp_path_factory, "demo")


@pytest.fixture(scope="session")
def artifact(demo_model, tmp_path_factory) -> Path:
    """The demo model's artifact, with the circular-padding graphs of seamless tiling (`sdrt export --tiling`)."""
    return export(demo_model, tmp_path_factory, "demo", tiling=True)


@pytest.fixture()
def fresh_artifact(artifact, tmp_path) -> Path:
    """A private copy of the session artifact without engines, for tests that build, damage or lock them."""
    import shutil

    copy = tmp_path / "artifact"
    shutil.copytree(artifact, copy, ignore=shutil.ignore_patterns("engines"))
    return copy


@pytest.fixture(scope="session")
def pipelines(demo_model, artifact):
    return load_pipelines(demo_model, artifact)


@pytest.fixture(scope="session")
def diffusers_pipe(demo_model):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(demo_model, safety_checker=None, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.original_scheduler = pipe.scheduler  # tests swap schedulers; each builds from the model's own config
    return pipe


@pytest.fixture(scope="session")
def sd2_model(tmp_path_factory) -> Path:
    """A tiny SD 2.x model: GELU text encoder padding with "!", linear-projection UNet with upcast, v-prediction."""
    return write_model(tmp_path_factory, "sd2", variant="sd2")


@pytest.fixture(scope="session")
def inpaint_model(tmp_path_factory) -> Path:
    """A tiny SD 1.x inpainting model: a 9-channel UNet."""
    return write_model(tmp_path_factory, "inpaint", variant="inpaint")


@pytest.fixture(scope="session")
def sdxl_model(tmp_path_factory) -> Path:
    """A tiny random-weight SDXL base: two text encoders, size and crop conditioning."""
    return write_model(tmp_path_factory, "sdxl", variant="sdxl")


@pytest.fixture(scope="session")
def sdxl_refiner_model(tmp_path_factory) -> Path:
    """A tiny random-weight SDXL refiner: ViT-bigG alone, aesthetic-score conditioning, four UNet levels."""
    return write_model(tmp_path_factory, "sdxl-refiner", variant="sdxl-refiner")


@pytest.fixture(scope="session")
def sdxl_artifact(sdxl_model, tmp_path_factory) -> Path:
    return export(sdxl_model, tmp_path_factory, "sdxl")


@pytest.fixture(scope="session")
def sdxl_refiner_artifact(sdxl_refiner_model, tmp_path_factory) -> Path:
    return export(sdxl_refiner_model, tmp_path_factory, "sdxl-refiner")


@pytest.fixture(scope="session")
def deep_cache_artifacts(demo_model, sdxl_model, tmp_path_factory) -> dict[str, Path]:
    """The demo SD 1.x and SDXL models exported with DeepCache's graphs of branches 0 and 1 (`--deep-cache 0,1`)."""
    return {
        "sd1": export(demo_model, tmp_path_factory, "demo-deep-cache", deep_cache=(0, 1)),
        "sdxl": export(sdxl_model, tmp_path_factory, "sdxl-deep-cache", deep_cache=(0, 1)),
    }


@pytest.fixture(scope="session")
def sdxl_pipelines(sdxl_model, sdxl_artifact, sdxl_refiner_model, sdxl_refiner_artifact) -> dict:
    """SDXL base with its refiner on the torch backend (model directories) and onnxruntime (artifacts)."""
    from sdrt import Pipeline

    return {
        "torch": Pipeline.load(sdxl_model, backend="torch", ranges=RANGES, refiner=sdxl_refiner_model),
        "onnxruntime": Pipeline.load(sdxl_artifact, backend="onnxruntime", refiner=sdxl_refiner_artifact),
    }


@pytest.fixture(scope="session")
def sdxl_diffusers(sdxl_model, sdxl_refiner_model) -> dict:
    """diffusers' own SDXL pipelines on the same weights: base, img2img and inpainting on the base, the refiner."""
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLInpaintPipeline, StableDiffusionXLPipeline

    base = StableDiffusionXLPipeline.from_pretrained(sdxl_model, local_files_only=True)
    pipes = {
        "txt2img": base,
        "img2img": StableDiffusionXLImg2ImgPipeline(**base.components),
        "inpaint": StableDiffusionXLInpaintPipeline(**base.components),
        "refiner": StableDiffusionXLImg2ImgPipeline.from_pretrained(sdxl_refiner_model, local_files_only=True),
    }
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)
        pipe.original_scheduler = pipe.scheduler
    return pipes


@pytest.fixture(scope="session")
def unclip_model(tmp_path_factory) -> Path:
    """A tiny random-weight Stable unCLIP 2.1: SD 2.x plus a CLIP vision encoder and its noising parts."""
    return write_model(tmp_path_factory, "unclip", variant="unclip")


@pytest.fixture(scope="session")
def unclip_artifact(unclip_model, tmp_path_factory) -> Path:
    return export(unclip_model, tmp_path_factory, "unclip")


@pytest.fixture(scope="session")
def unclip_pipelines(unclip_model, unclip_artifact) -> dict:
    return load_pipelines(unclip_model, unclip_artifact)


@pytest.fixture(scope="session")
def family_manifests(tmp_path_factory, request) -> dict[str, dict]:
    """The manifest an export writes for each demo variant (tests/manifests.py), from the session's models."""
    from tests.manifests import VARIANTS, family_manifest

    fixtures = {
        "sd1": "demo_model",
        "sd2": "sd2_model",
        "inpaint": "inpaint_model",
        "sdxl": "sdxl_model",
        "sdxl-refiner": "sdxl_refiner_model",
        "unclip": "unclip_model",
    }
    out = {}
    for variant in VARIANTS:
        if variant in fixtures:
            model = request.getfixturevalue(fixtures[variant])
        else:
            model = write_model(tmp_path_factory, variant, variant=variant)
        out[variant] = family_manifest(model)
    return out


@pytest.fixture(scope="session")
def x4_model(tmp_path_factory) -> Path:
    """A tiny random-weight SD x4 upscaler: a 7-channel UNet with a noise-level class embedding, a 4x VAE."""
    return write_model(tmp_path_factory, "x4", variant="upscaler_x4")


@pytest.fixture(scope="session")
def x4_artifact(x4_model, tmp_path_factory) -> Path:
    """Exported for outputs of 64..256 pixels (low-res images of 16..64)."""
    return export(x4_model, tmp_path_factory, "x4")


@pytest.fixture(scope="session")
def x4_pipelines(x4_model, x4_artifact) -> dict:
    """The x4 upscaler on torch (its directory, RANGES at its VAE's factor 4), onnxruntime and openvino."""
    from dataclasses import replace

    from sdrt import Pipeline

    return {
        "torch": Pipeline.load(x4_model, backend="torch", ranges=replace(RANGES, latent_factor=4)),
        "onnxruntime": Pipeline.load(x4_artifact, backend="onnxruntime"),
        "openvino": Pipeline.load(x4_artifact, backend="openvino"),
    }


@pytest.fixture(scope="session")
def controlnet_models(tmp_path_factory) -> dict[str, Path]:
    """Two tiny ControlNets for the demo SD 1.x model (diffusers layout, zero convolutions re-drawn), by name."""
    root = tmp_path_factory.mktemp("controlnets")
    from sdrt.demo import write_demo_model

    return {name: write_demo_model(root / name, seed=seed, variant="controlnet") for name, seed in
            (("tiny_canny", 0), ("tiny_depth", 5))}  # fmt: skip


@pytest.fixture(scope="session")
def controlnet_artifacts(controlnet_models, tmp_path_factory) -> Path:
    """The two ControlNets exported, in one directory (a server's --controlnet-dir)."""
    from sdrt.export import ExportConfig, export_model

    root = tmp_path_factory.mktemp("controlnet-artifacts")
    config = ExportConfig(max_batch=RANGES.max_batch, min_size=RANGES.min_size, max_size=RANGES.max_size, opt_size=128)
    for name, path in controlnet_models.items():
        export_model(path, root / name, config)
    return root


@pytest.fixture(scope="session")
def controlnet_pipelines(demo_model, artifact, controlnet_models, controlnet_artifacts) -> dict:
    """The demo model with its ControlNets on torch (diffusers directories), onnxruntime and openvino (artifacts)."""
    from sdrt import Pipeline

    pipes = {
        "torch": Pipeline.load(
            demo_model, backend="torch", ranges=RANGES, controlnet_dir=next(iter(controlnet_models.values())).parent
        ),
        "onnxruntime": Pipeline.load(artifact, backend="onnxruntime", controlnet_dir=controlnet_artifacts),
        "openvino": Pipeline.load(artifact, backend="openvino", controlnet_dir=controlnet_artifacts),
    }
    return pipes
