"""`sdrt bench --deep-cache`: exact and DeepCache side by side on one backend, full and shallow UNet steps apart."""

from __future__ import annotations

import json

import pytest

from sdrt.bench import BenchConfig, format_table, run_bench
from sdrt.bench.scenario import Scenario, parse_deep_caches
from sdrt.cli import main
from sdrt.runtime.deep_cache import DeepCache

STEPS = 7  # DeepCache 3: the whole UNet at steps 0, 3, 6; DeepCache 5:1 at steps 0 and 5


def test_the_flag_takes_settings_repeated_or_as_a_list():
    assert parse_deep_caches(["3", "5:1,2:0"]) == (DeepCache(3, 0), DeepCache(5, 1), DeepCache(2, 0))
    config = BenchConfig(path=".", backends=("torch",), deep_caches=parse_deep_caches(["3,5:1"]), cold_start=False)
    assert "--deep-cache 3:0,5:1 " in config.command()
    with pytest.raises(ValueError, match=r"deep_caches \['3:0', '3:0'\] repeat a setting"):
        BenchConfig(path=".", backends=("torch",), deep_caches=parse_deep_caches(["3", "3:0"]))
    with pytest.raises(ValueError, match="deep_caches need an sdrt backend"):
        BenchConfig(path=".", backends=(), baselines=("diffusers",), deep_caches=(DeepCache(3, 0),))
    with pytest.raises(ValueError, match="deep_cache 3 is not a DeepCache"):
        BenchConfig(path=".", backends=("torch",), deep_caches=(3,))


def test_a_scenario_carries_its_setting_and_baselines_run_exact():
    fields = {"model": "m", "family": "sd1", "device": "cpu", "dtype": "float32", "width": 64, "height": 64}
    fields |= {"batch": 1, "steps": 7}
    cached = Scenario(backend="torch", deep_cache=DeepCache(3, 1), **fields)
    exact = Scenario(backend="torch", **fields)
    assert cached.contender == "sdrt-torch+deepcache-3:1" and cached.group == exact.group
    data = cached.to_json()
    assert data["deep_cache"] == {"interval": 3, "branch": 1}
    data.pop("contender")
    assert Scenario(**data) == cached  # read back from JSON (a cold start's child process)
    with pytest.raises(ValueError, match="deep_cache is sdrt's: the diffusers baseline runs exact"):
        Scenario(backend="diffusers", deep_cache=DeepCache(3, 0), **fields)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "deep_cache interval 0 is outside 1..1000"),
        ("3:-1", "deep_cache branch -1 must be at least 0"),
        ("3:x", "--deep-cache '3:x' is not INTERVAL[:BRANCH], e.g. 3 or 3:1"),
        ("3,3", r"deep_caches ['3:0', '3:0'] repeat a setting"),
    ],
)
def test_bad_values_are_refused_before_anything_loads(demo_model, capsys, value, message):
    argv = ["bench", str(demo_model), "--backend", "torch", "--baseline", "none", "--no-cold-start"]
    assert main([*argv, "--deep-cache", value]) == 2
    assert message in capsys.readouterr().err


def test_a_gan_upscaler_takes_no_deep_cache(upscaler_dir, capsys):
    path = next(p for p in upscaler_dir.iterdir() if p.suffix in (".pth", ".safetensors"))
    assert main(["bench", str(path), "--deep-cache", "3", "--no-cold-start"]) == 2
    assert "--deep-cache is for diffusion models" in capsys.readouterr().err


def test_exact_and_deep_cache_side_by_side(demo_model, tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", str(demo_model), "--backend", "torch", "--baseline", "none", "--sizes", "64x64"]
    argv += ["--steps", str(STEPS), "--runs", "2", "--warmup", "0", "--device", "cpu", "--no-cold-start"]
    assert main([*argv, "--deep-cache", "3", "--deep-cache", "5:1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "DeepCache against exact, per sdrt backend" in printed
    assert "sdrt-torch+deepcache-3:0" in printed and "interval 5, branch 1" in printed

    data = json.loads(out.read_text())
    assert "--deep-cache 3:0,5:1" in data["command"]
    exact, dc3, dc5 = data["records"]
    assert [r["scenario"]["deep_cache"] for r in (exact, dc3, dc5)] == [
        None,
        {"interval": 3, "branch": 0},
        {"interval": 5, "branch": 1},
    ]
    assert all(r["status"] == "ok" and r["runs"] == 2 for r in (exact, dc3, dc5))
    calls = [
        (r["unet_calls_per_run"], r["unet_full_calls_per_run"], r["unet_shallow_calls_per_run"])
        for r in data["records"]
    ]
    assert calls == [(STEPS, STEPS, 0), (STEPS, 3, 4), (STEPS, 2, 5)]
    for record, shallow in ((exact, 0), (dc3, 4), (dc5, 5)):
        for sample in record["samples"]:
            assert sample["unet_shallow_calls"] == shallow and sample["unet_calls"] == STEPS
            assert (sample["unet_shallow"] > 0) == (shallow > 0) and sample["unet"] > sample["unet_shallow"]
        seconds = record["seconds"]
        assert seconds["unet_full_per_call"]["median"] > 0
        assert (seconds["unet_shallow_per_call"]["median"] > 0) == (shallow > 0)
    assert exact["vs_exact"] is None
    for record in (dc3, dc5):
        v = record["vs_exact"]
        assert v["exact"] == "sdrt-torch"
        want = record["seconds"]["total"]["median"] / exact["seconds"]["total"]["median"]
        assert v["ratio"]["total"] == pytest.approx(want) and v["speedup"] == pytest.approx(1 / want)
        want = record["seconds"]["unet"]["median"] / exact["seconds"]["unet"]["median"]
        assert v["ratio"]["unet"] == pytest.approx(want)
        want = record["seconds"]["unet_shallow_per_call"]["median"] / exact["seconds"]["unet_per_call"]["median"]
        assert v["unet_shallow_vs_full_call"] == pytest.approx(want)


def test_a_backend_that_cannot_run_deep_cache_lists_it_as_skipped(artifact, demo_model):
    result = onnxruntime_bench(artifact, demo_model, 2, DeepCache(2, 0))
    exact, cached = result.records
    assert exact.status == "ok" and exact.vs_exact is None
    assert cached.status == "skipped" and "deep_cache" in cached.reason and not cached.samples
    assert cached.scenario.contender == "sdrt-onnxruntime+deepcache-2:0"
    assert not result.failures()
    assert f"sdrt-onnxruntime+deepcache-2:0  interval 2, branch 0  skipped: {cached.reason}" in format_table(result)


def test_an_artifacts_deep_cache_graphs_are_timed(deep_cache_artifacts, demo_model):
    # onnxruntime loads the branch's graphs on first use (Model.load_deep_cache): their calls are timed too
    result = onnxruntime_bench(deep_cache_artifacts["sd1"], demo_model, STEPS, DeepCache(3, 1))
    assert not result.failures()
    exact, cached = result.records
    assert exact.status == "ok" and cached.status == "ok"
    (sample,) = cached.samples
    assert (sample.unet_calls, sample.unet_shallow_calls) == (STEPS, 4)
    assert sample.unet > sample.unet_shallow > 0
    # the FMA-peak share of a DeepCache run is its whole-UNet calls' (the shallow ones would inflate it)
    from sdrt.bench.peak import fma_peak, fraction_of_peak

    full = cached.summaries()["unet_full_per_call"].median
    want = fraction_of_peak(cached.unet_peak["flops_per_call"], full, fma_peak())
    assert cached.unet_peak["fraction"] == pytest.approx(want)
    assert cached.unet_peak["flops_per_call"] == exact.unet_peak["flops_per_call"]


def onnxruntime_bench(artifact, model, steps: int, deep_cache: DeepCache):
    """One run of exact and `deep_cache` on onnxruntime at 64x64, no baseline, no cold start."""
    config = BenchConfig(
        path=artifact,
        model=model,
        backends=("onnxruntime",),
        baselines=(),
        sizes=((64, 64),),
        steps=steps,
        runs=1,
        warmup=0,
        device="cpu",
        cold_start=False,
        deep_caches=(deep_cache,),
    )
    return run_bench(config)
