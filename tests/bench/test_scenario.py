"""Scenarios and bench configurations are checked up front, with errors that name the field."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from sdrt.bench.scenario import BenchConfig, Scenario, parse_ints, parse_size
from sdrt.cli import _parser

GOOD = {
    "model": "demo",
    "family": "sd1",
    "backend": "onnxruntime",
    "device": "cpu",
    "dtype": "float32",
    "width": 64,
    "height": 96,
    "batch": 2,
    "steps": 3,
}


def test_a_good_scenario_names_its_contender_and_group():
    s = Scenario(**GOOD)
    assert (s.contender, s.size, s.is_baseline) == ("sdrt-onnxruntime", "64x96", False)
    base = Scenario(**GOOD | {"backend": "diffusers"})
    assert base.contender == "diffusers" and base.is_baseline
    assert s.group == base.group  # compared with each other
    assert s.group != Scenario(**GOOD | {"batch": 1}).group
    assert s.to_json()["contender"] == "sdrt-onnxruntime"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"width": 100}, "width 100 is not a multiple of 8"),
        ({"height": 0}, "height 0 must be at least 8"),
        ({"height": 64.0}, "height 64.0 is not an integer"),
        ({"batch": 0}, "batch 0 must be at least 1"),
        ({"batch": True}, "batch True is not an integer"),
        ({"steps": 0}, "steps 0 must be at least 1"),
        ({"backend": "tensorflow"}, "backend 'tensorflow' is not one of"),
        ({"device": "tpu"}, "device 'tpu' is not one of cpu, cuda"),
        ({"dtype": "bfloat16"}, "dtype 'bfloat16' is not one of"),
        ({"guidance_scale": float("nan")}, "guidance_scale nan is not a finite number"),
        ({"mode": "img2img"}, "strength None is outside (0, 1]"),
        ({"strength": 0.5}, "strength 0.5 is only for img2img"),
    ],
)
def test_bad_scenarios_name_the_field(change, message):
    with pytest.raises(ValueError) as exc:
        Scenario(**GOOD | change)
    assert message in str(exc.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"batches": ()}, "batches is empty"),
        ({"batches": (1, -2)}, "batch -2 must be at least 1"),
        ({"sizes": ((64, 60),)}, "height 60 is not a multiple of 8"),
        ({"sizes": ()}, "sizes is empty"),
        ({"runs": 0}, "runs 0 must be at least 1"),
        ({"warmup": -1}, "warmup -1 must be at least 0"),
        ({"backends": ("onnxruntime", "onnxruntime")}, "repeat a name"),
        ({"backends": ("trt",)}, "backend 'trt' is not one of"),
        ({"baselines": ("comfyui",)}, "baseline 'comfyui' is not one of"),
        ({"backends": (), "baselines": ()}, "nothing to time"),
        ({"strength": 1.5}, "strength 1.5 is outside (0, 1]"),
        ({"device": "tpu"}, "device 'tpu' is not auto, cpu or cuda"),
    ],
)
def test_bad_configs_name_the_field(change, message):
    with pytest.raises(ValueError) as exc:
        BenchConfig(path=Path("x"), **change)
    assert message in str(exc.value)


def test_parse_size_and_lists():
    assert parse_size("512x768") == (512, 768)
    assert parse_size("64X64") == (64, 64)
    assert parse_ints("--batch", "1,2, 4,") == (1, 2, 4)
    for bad in ("512", "512x", "axb", "1x2x3"):
        with pytest.raises(ValueError, match="is not WIDTHxHEIGHT"):
            parse_size(bad)
    with pytest.raises(ValueError, match="--batch '1,two' is not a comma-separated list"):
        parse_ints("--batch", "1,two")


def test_command_reproduces_the_config_through_the_cli():
    config = BenchConfig(
        path=Path("artifacts/a b"),
        model=Path("models/m"),
        label="sd15",
        backends=("torch",),
        baselines=("diffusers",),
        sizes=((256, 256), (512, 384)),
        batches=(1, 4),
        steps=7,
        runs=2,
        warmup=0,
        scheduler="euler_a",
        guidance_scale=5.0,
        mode="img2img",
        strength=0.6,
        device="cpu",
        cold_start=False,
    )
    argv = shlex.split(config.command())
    assert argv[:3] == ["sdrt", "bench", "artifacts/a b"]
    args = _parser().parse_args(argv[1:])  # the command line is one the CLI accepts
    assert (args.model, args.label, args.backend, args.baseline, args.no_compile) == (
        Path("models/m"),
        "sd15",
        "torch",
        "diffusers",
        True,
    )
    assert [parse_size(s) for s in args.sizes.split(",")] == [(256, 256), (512, 384)]
    assert parse_ints("--batch", args.batch) == (1, 4)
    assert (args.steps, args.runs, args.warmup, args.scheduler, args.guidance_scale) == (7, 2, 0, "euler_a", 5.0)
    assert (args.mode, args.strength, args.device, args.no_cold_start) == ("img2img", 0.6, "cpu", True)
    assert "--baseline none" in BenchConfig(path=Path("x"), baselines=()).command()
