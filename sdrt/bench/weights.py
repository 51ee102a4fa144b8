"""The weights a benchmark times, and which contenders can run them here (with the reason for each that cannot)."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sdrt.bench.scenario import BASELINES, SDRT_BACKENDS, model_label
from sdrt.families import UnknownFamily
from sdrt.spec import ShapeRanges


@dataclass(frozen=True)
class Weights:
    """An sdrt artifact, the diffusers model directory it came from, or both; never a mix of two models."""

    artifact: Path | None  # exported artifact (onnxruntime and later engine backends)
    model_dir: Path | None  # diffusers model directory (the torch backend and the baselines)
    family: str  # the model family's name, e.g. "sd1" or "sdxl"
    label: str  # name shown in tables
    ranges: ShapeRanges | None  # the artifact's shapes; None for a model directory alone
    native_size: int  # pixels the model was trained at (the default size without an artifact)
    unsupported: str | None = None  # why sdrt cannot run this model (its baselines still can), None when it can
    precision: str = "fp32"  # the artifact's denoiser graph precision ("fp32" or "fp16"), what engine backends run

    @property
    def default_size(self) -> int:
        return self.ranges.opt_size if self.ranges is not None else self.native_size


def resolve_weights(path: str | os.PathLike, model: str | os.PathLike | None = None) -> Weights:
    """Classify `path` (artifact or model directory) and check that `model`, if given, is what it was exported from."""
    from sdrt.manifest import MANIFEST_NAME, read_manifest

    root = Path(path)
    if (root / MANIFEST_NAME).is_file():
        manifest = read_manifest(root)
        model_dir = None if model is None else Path(model)
        native = manifest.ranges.opt_size
        if model_dir is not None:
            from sdrt.model_dir import ModelDir

            model = ModelDir.open(model_dir)
            native = model.native_size
            if model.family.name != manifest.family:
                raise ValueError(
                    f"--model {model_dir} is a {model.family.description}; artifact {root} holds a "
                    f"{manifest.model_family.description}"
                )
            if model.weights_sha256() != manifest.source_sha256:
                raise ValueError(
                    f"--model {model_dir} is not the model artifact {root} was exported from (the weights' sha256 "
                    "differs from the manifest's source_sha256); a comparison needs the same weights on both sides"
                )
        precision = manifest.components[manifest.model_family.denoiser].attributes.get("precision", "fp32")
        return Weights(root, model_dir, manifest.family, model_label(root), manifest.ranges, native, None, precision)
    if (root / "model_index.json").is_file():
        if model is not None:
            raise ValueError(f"{root} is a model directory already; --model goes with an artifact directory")
        from sdrt.model_dir import ModelDir, read_model_index

        try:
            model = ModelDir.open(root)
        except UnknownFamily as exc:  # a model sdrt does not run: time the baselines, list sdrt's backends as skipped
            index = read_model_index(root)
            return Weights(None, root, _baseline_family(index), model_label(root), None, 1024, unsupported=str(exc))
        return Weights(None, root, model.family.name, model_label(root), None, model.native_size)
    raise ValueError(
        f"{root} is neither an sdrt artifact (no manifest.json) nor a diffusers model directory (no model_index.json)"
    )


def _baseline_family(index: dict[str, Any]) -> str:
    """The diffusers pipeline kind a baseline loads for a model sdrt has no family for."""
    return "sdxl" if str(index.get("_class_name", "")).startswith("StableDiffusionXL") else "sd1"


@dataclass(frozen=True)
class ContenderSpec:
    """How to load one contender; plain data, so a fresh process (cold start) can load the same thing."""

    backend: str  # an sdrt backend or a baseline
    path: str  # the artifact or model directory it loads
    family: str  # the model family's name, e.g. "sd1" or "sdxl"
    device: str  # "cpu" or "cuda:N"
    dtype: str  # "float32" or "float16"
    ranges: dict[str, Any] | None = None  # ShapeRanges for the torch backend on a model directory
    refiner: str | None = None  # the SDXL refiner (artifact or model directory, as `path`) it runs after the base
    controlnets: tuple[str, ...] = ()  # ControlNets it can steer with (artifacts or model directories, as `path`)

    @property
    def is_baseline(self) -> bool:
        return self.backend in BASELINES

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ContenderSpec:
        return cls(**{**data, "controlnets": tuple(data.get("controlnets", ()))})


def contender(
    backend: str,
    weights: Weights,
    device: str,
    refiner: Weights | None = None,
    controlnets: tuple[Path, ...] = (),
    controlnet_models: tuple[Path, ...] = (),
) -> tuple[ContenderSpec | None, str | None]:
    """(spec, None) for a contender that can run here (with `refiner` after the base, steered by `controlnets`'
    artifacts or `controlnet_models`' directories as its kind takes), or (None, why it cannot)."""
    spec, reason = _contender(backend, weights, device)
    if spec is not None and (controlnets or controlnet_models):
        needs_artifact = Path(spec.path) == weights.artifact
        nets = controlnets if needs_artifact else controlnet_models
        if not nets:
            kind = "artifacts (--controlnet)" if needs_artifact else "diffusers directories (--controlnet-model)"
            return None, f"this contender runs ControlNets from {kind}; give them"
        spec = replace(spec, controlnets=tuple(str(p) for p in nets))
    if spec is None or refiner is None:
        return spec, reason
    needs_artifact = Path(spec.path) == weights.artifact
    path = refiner.artifact if needs_artifact else refiner.model_dir
    if path is None:
        kind = "artifact (--refiner)" if needs_artifact else "model directory (--refiner-model)"
        return None, f"the refiner runs from a {kind} on this contender; give one"
    return replace(spec, refiner=str(path)), None


def _contender(backend: str, weights: Weights, device: str) -> tuple[ContenderSpec | None, str | None]:
    cuda = device.startswith("cuda")
    if backend in BASELINES:
        if backend == "diffusers-compile" and not cuda:
            return None, "the torch.compile baseline runs on a GPU only (on the CPU the baseline is diffusers fp32)"
        if weights.model_dir is None:
            return None, _NEEDS_MODEL
        dtype = "float16" if cuda else "float32"
        return ContenderSpec(backend, str(weights.model_dir), weights.family, device, dtype), None
    if backend not in SDRT_BACKENDS:
        raise ValueError(f"backend {backend!r} is not one of {', '.join(SDRT_BACKENDS + BASELINES)}")
    if weights.unsupported is not None:
        return None, f"not supported yet: {weights.unsupported}"
    from sdrt.engines import BACKENDS, backend_module

    if backend not in BACKENDS:
        return None, f"not implemented yet: this sdrt has no {backend} backend (it has {', '.join(BACKENDS)})"
    try:  # each backend's options say what it needs that is missing here (a GPU, a library)
        backend_module(backend).options(device=device)
    except ValueError as exc:
        return None, str(exc)
    dtype = engine_dtype(weights)
    if backend == "torch":
        if weights.model_dir is None:
            return None, _NEEDS_MODEL
        ranges = weights.ranges.to_json() if weights.ranges is not None else None  # chunk exactly as the artifact
        return ContenderSpec(backend, str(weights.model_dir), weights.family, device, "float32", ranges), None
    if backend == "onnxruntime" and cuda:
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return None, (
                "this onnxruntime has no CUDAExecutionProvider "
                f"({', '.join(ort.get_available_providers())}); install onnxruntime-gpu"
            )
    if weights.artifact is None:
        return None, f"the {backend} backend runs an exported artifact: give ARTIFACT_DIR (from 'sdrt export')"
    return ContenderSpec(backend, str(weights.artifact), weights.family, device, dtype), None


def engine_dtype(weights: Weights) -> str:
    """What an engine backend computes an artifact's denoiser in: its graph's precision (strongly typed)."""
    return "float16" if weights.precision == "fp16" else "float32"


_NEEDS_MODEL = (
    "needs the diffusers model directory: add --model MODEL_DIR (an artifact does not hold the torch weights)"
)
