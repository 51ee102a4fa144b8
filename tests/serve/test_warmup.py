"""`sdrt serve --warm-shapes`: the engines meet every configured shape at load, before the server is ready."""

from __future__ import annotations

import httpx
import pytest

from sdrt.cli import main
from sdrt.serve.app import create_app
from sdrt.serve.config import ServeConfig, WarmShape, parse_warm_shapes
from sdrt.serve.warmup import warm_up
from tests.serve.conftest import running


class Recorder:
    """An engine passing calls through and recording each call's first input shape."""

    def __init__(self, engine) -> None:
        self.engine, self.spec, self.ranges, self.device = engine, engine.spec, engine.ranges, engine.device
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, feeds):
        self.shapes.append(tuple(next(iter(feeds.values())).shape))
        return self.engine(feeds)


@pytest.fixture()
def recorded(serve_pipeline):
    engines = serve_pipeline.engines
    saved = {name: engines[name] for name in ("unet", "vae_decoder")}
    recorders = {name: Recorder(engine) for name, engine in saved.items()}
    engines.update(recorders)
    yield serve_pipeline, recorders
    engines.update(saved)


def test_parse_warm_shapes():
    assert parse_warm_shapes(["64x128:1,2", "64x128:2", "96x64:1"]) == (
        WarmShape(64, 128, 1),
        WarmShape(64, 128, 2),
        WarmShape(96, 64, 1),
    )
    with pytest.raises(ValueError, match=r"warm shape '512:1' is not WIDTHxHEIGHT:BATCH\[,BATCH...\]"):
        parse_warm_shapes(["512:1"])
    with pytest.raises(ValueError, match="warm shape batch 0 must be at least 1"):
        parse_warm_shapes(["64x64:0"])


def test_warm_up_meets_every_shape_guided(recorded):
    pipe, recorders = recorded
    warm_up(pipe, parse_warm_shapes(["64x128:1,2"]))
    # the UNet sees uncond + cond rows of every image; latents are 1/8 of the pixels (height x width)
    assert set(recorders["unet"].shapes) == {(2, 4, 16, 8), (4, 4, 16, 8)}
    assert recorders["vae_decoder"].shapes == [(1, 4, 16, 8), (2, 4, 16, 8)]


def test_warm_shapes_outside_the_artifact_fail_before_any_work(recorded):
    pipe, recorders = recorded
    with pytest.raises(ValueError, match=r"batch 3 is outside the artifact's 1\.\.2; re-export with --max-batch 3"):
        warm_up(pipe, parse_warm_shapes(["64x64:1", "64x64:3"]))
    with pytest.raises(ValueError, match="height 512 is outside the artifact's range 64..256"):
        warm_up(pipe, parse_warm_shapes(["64x512:1"]))
    assert recorders["unet"].shapes == []


def test_a_warmed_server_is_ready_after_its_warm_up(recorded):
    pipe, recorders = recorded
    with running(create_app(pipe, ServeConfig(warm_shapes=(WarmShape(64, 64, 2),)))) as url:
        assert httpx.get(f"{url}/ready").status_code == 200
        assert recorders["unet"].shapes == [(4, 4, 8, 8)], "warmed before the first request"


def test_more_warm_shapes_than_graphs_kept_is_refused(artifact, capsys):
    argv = ["serve", str(artifact), "--warm-shapes", "64x64:1,2", "128x128:1", "--max-cuda-graphs", "2"]
    assert main(argv) == 2
    assert "--warm-shapes names 3 shapes, but engines keep at most 2 CUDA graphs each" in capsys.readouterr().err
