"""Session fixtures: one tiny random-weight SD 1.x model, its export, and pipelines on every CPU backend."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdrt.spec import ShapeRanges

# The shapes the test artifact supports; the torch backend is given the same so both chunk alike.
RANGES = ShapeRanges(max_batch=2, min_size=64, max_size=256, opt_size=128)
BACKENDS = ("torch", "onnxruntime")


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory) -> Path:
    from sdrt.demo_model import write_demo_model

    return write_demo_model(tmp_path_factory.mktemp("models") / "demo")


@pytest.fixture(scope="session")
def artifact(demo_model, tmp_path_factory) -> Path:
    from sdrt.export import ExportConfig, export_model

    out = tmp_path_factory.mktemp("artifacts") / "demo"
    export_model(demo_model, out, ExportConfig(max_batch=2, min_size=64, max_size=256, opt_size=128))
    return out


@pytest.fixture(scope="session")
def pipelines(demo_model, artifact):
    from sdrt import Pipeline

    return {
        "torch": Pipeline.load(demo_model, backend="torch", ranges=RANGES),
        "onnxruntime": Pipeline.load(artifact, backend="onnxruntime"),
    }


@pytest.fixture(scope="session")
def diffusers_pipe(demo_model):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(demo_model, safety_checker=None, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.original_scheduler = pipe.scheduler  # tests swap schedulers; each builds from the model's own config
    return pipe
