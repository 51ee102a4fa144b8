"""A real (tiny) benchmark of the demo artifact: its records, table, JSON and chart; what skips on a CPU, and why."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image

from sdrt.bench import BenchConfig, format_table, plot, run_bench, write_json
from sdrt.bench.memory import MemorySampler
from sdrt.bench.run import resolve_device
from sdrt.bench.weights import contender, resolve_weights

STAGES = {
    "text_encoder",
    "vae_encode",
    "controlnet",
    "unet",
    "unet_per_call",
    "unet_full_per_call",
    "unet_shallow_per_call",
    "scheduler_per_step",
    "vae_decode",
    "other",
    "total",
}


@pytest.fixture(scope="module")
def result(artifact, demo_model):
    config = BenchConfig(
        path=artifact,
        model=demo_model,
        sizes=((64, 64),),
        batches=(1, 2, 4),  # the test artifact's max_batch is 2: batch 4 is dropped with a note
        steps=2,
        runs=2,
        warmup=1,
        device="cpu",
        cold_start=False,
        settle_seconds=0.0,
    )
    return run_bench(config)


def _by(result, contender, batch):
    (record,) = [r for r in result.records if r.scenario.contender == contender and r.scenario.batch == batch]
    return record


def test_every_contender_has_a_record_per_scenario(result):
    contenders = ["sdrt-onnxruntime", "sdrt-torch", "sdrt-tensorrt", "sdrt-openvino", "diffusers", "diffusers-compile"]
    assert [(r.scenario.contender, r.scenario.batch) for r in result.records] == [
        (c, b) for b in (1, 2) for c in contenders
    ]
    assert result.notes == ["batch 4 dropped: the artifact's max_batch is 2 (re-export with --max-batch 4 to time it)"]
    for batch in (1, 2):
        for name in ("sdrt-onnxruntime", "sdrt-torch", "sdrt-openvino", "diffusers"):
            assert _by(result, name, batch).status == "ok"
        trt = _by(result, "sdrt-tensorrt", batch)
        assert trt.status == "skipped" and "needs TensorRT 10.x or 11.x" in trt.reason and "NVIDIA GPU" in trt.reason
        assert trt.scenario.dtype == "float32"  # what it would run in: the artifact's precision (strongly typed)
        compiled = _by(result, "diffusers-compile", batch)
        assert compiled.status == "skipped" and "GPU only" in compiled.reason
    assert not result.failed


def test_json_records_hold_stages_throughput_memory_and_ratios(result, tmp_path):
    path = tmp_path / "bench.json"
    write_json(result, path)
    data = json.loads(path.read_text())
    assert data["schema"] == "sdrt-bench/1" and len(data["records"]) == 12  # 6 contenders x 2 batches
    for record in data["records"]:
        assert record["scenario"]["model"] == "demo" and record["machine"]["cpu_cores_logical"] >= 1
        assert record["versions"]["torch"] == torch.__version__ and record["gpu"] is None
        assert record["timing"]["stages"].startswith("host clock")
        if record["status"] != "ok":
            assert record["seconds"] == {} and record["samples"] == [] and record["reason"]
            continue
        seconds, batch = record["seconds"], record["scenario"]["batch"]
        assert set(seconds) == STAGES and record["runs"] == 2 and len(record["samples"]) == 2
        for s in seconds.values():
            assert s["min"] <= s["median"] <= s["p90"] <= s["p99"] <= s["max"] and s["n"] == 2
        assert seconds["total"]["median"] > seconds["unet"]["median"] > 0
        assert seconds["text_encoder"]["median"] > 0, "the prompt encoders' engine calls are timed too"
        assert seconds["vae_encode"]["max"] == 0.0  # text-to-image never calls the VAE encoder
        assert seconds["controlnet"]["max"] == 0.0  # no ControlNet in this scenario
        # guidance doubles the rows; the artifact takes 2 x max_batch = 4 rows, so one UNet call per step
        assert record["steps_run"] == 2 and record["unet_calls_per_run"] == 2
        assert record["throughput_images_per_second"] == pytest.approx(batch / seconds["total"]["median"])
        memory = record["memory"]
        assert memory["peak_rss_bytes"] > 100 * 2**20 and memory["rss_growth_bytes"] >= 0
        assert memory["peak_gpu_allocated_bytes"] is None  # no GPU
        for run in record["samples"]:  # the parts of a run never add up to more than the run
            parts = run["text_encoder"] + run["denoise"] + run["vae_decode"]
            assert parts <= run["total"] and run["unet"] <= run["denoise"]
        if record["scenario"]["backend"] == "diffusers":
            assert record["vs_baseline"] == {}
        else:
            vs = record["vs_baseline"]["diffusers"]
            (base,) = [
                r["seconds"]["total"]["median"]
                for r in data["records"]
                if r["scenario"]["backend"] == "diffusers" and r["scenario"]["batch"] == batch
            ]
            assert vs["ratio"]["total"] == pytest.approx(seconds["total"]["median"] / base)
            assert vs["ratio"]["vae_encode"] is None  # nothing to compare in text-to-image
            if vs["ratio"]["total"] > 1:
                assert vs["slower_stage"] == max(vs["extra_seconds"], key=vs["extra_seconds"].get)
            else:
                assert vs["slower_stage"] is None


def test_table_lists_every_contender_and_why_some_did_not_run(result):
    table = format_table(result)
    lines = table.splitlines()
    assert lines[0] == (
        "demo (sd1) on cpu: 64x64, batch 1, 2 steps, dpmpp_2m, guidance 7.5, txt2img; 2 timed runs after 1 warm-up"
    )
    header = lines[2].split()
    assert header[:3] == ["contender", "dtype", "text"] and header[-2:] == ["vs", "diffusers"]
    rows = {line.split()[0]: line for line in lines[3:9]}  # 6 contenders
    assert rows["diffusers"].endswith("1 (itself)")
    ratio = _by(result, "sdrt-onnxruntime", 1).vs_baseline["diffusers"]["ratio"]["total"]
    assert rows["sdrt-onnxruntime"].endswith(f"{ratio:.2f}")
    assert "skipped: device 'cpu': the tensorrt backend needs TensorRT 10.x or 11.x" in rows["sdrt-tensorrt"]
    assert "skipped: the torch.compile baseline runs on a GPU only" in rows["diffusers-compile"]
    assert "Throughput, images per second" in table and "batch 1  batch 2" in table
    assert "Note: batch 4 dropped" in table
    markdown = format_table(result, markdown=True)
    assert "| contender | dtype | text enc ms |" in markdown and "|---|---|---:|" in markdown


def test_cpu_tables_print_the_unet_share_of_the_fma_peak(result, artifact, tmp_path):
    from sdrt.bench.peak import fma_peak, onnx_flops, unet_shapes

    text = format_table(result)
    assert "UNet per call as a share of the CPU's FMA peak" in text and fma_peak().method in text
    graph = artifact / "unet" / "model.onnx"
    for batch in (1, 2):
        for name in ("sdrt-onnxruntime", "sdrt-openvino", "sdrt-torch", "diffusers"):
            peak = _by(result, name, batch).unet_peak
            # guidance: 2 rows per image; the share is the FLOPs over the median UNet call time over the peak
            assert peak["flops_per_call"] == onnx_flops(graph, unet_shapes(artifact, 64, 64, rows=2 * batch))
            seconds = _by(result, name, batch).summaries()["unet_per_call"].median
            assert peak["fraction"] == pytest.approx(peak["flops_per_call"] / seconds / fma_peak().flops_per_second)
            assert f"{name} {peak['fraction'] * 100:.0f}%" in text
        assert _by(result, "sdrt-tensorrt", batch).unet_peak is None  # skipped: nothing timed
    write_json(result, tmp_path / "bench.json")
    record = json.loads((tmp_path / "bench.json").read_text())["records"][0]
    assert record["unet_fma_peak"]["fma_peak"]["method"] == fma_peak().method


def test_plot_writes_a_png(result, tmp_path):
    out = tmp_path / "chart.png"
    plot(result.records, out)
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] > 800 and image.size[1] > 300
    skipped_only = [r for r in result.records if r.status != "ok"]
    with pytest.raises(ValueError, match="nothing to plot"):
        plot(skipped_only, tmp_path / "empty.png")


def test_inputs_are_checked_before_anything_runs(artifact, demo_model, tmp_path):
    with pytest.raises(ValueError, match="height 512 is outside the artifact's range 64..256"):
        run_bench(BenchConfig(path=artifact, sizes=((64, 512),), cold_start=False))
    with pytest.raises(ValueError, match="every batch in \\[3\\] exceeds the artifact's max_batch 2"):
        run_bench(BenchConfig(path=artifact, batches=(3,), cold_start=False))
    with pytest.raises(ValueError, match="neither an sdrt artifact"):
        resolve_weights(tmp_path)
    with pytest.raises(ValueError, match="is a model directory already"):
        resolve_weights(demo_model, demo_model)
    # other weights than the artifact's: a comparison would be meaningless
    other = tmp_path / "other"
    shutil.copytree(demo_model, other)
    with open(other / "unet" / "diffusion_pytorch_model.safetensors", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match="is not the model artifact .* was exported from"):
        resolve_weights(artifact, other)


def test_without_the_model_directory_torch_and_baselines_say_what_they_need(artifact):
    weights = resolve_weights(artifact)
    for backend in ("torch", "diffusers"):
        spec, reason = contender(backend, weights, "cpu")
        assert spec is None and "add --model MODEL_DIR" in reason
    spec, reason = contender("onnxruntime", weights, "cpu")
    assert reason is None and spec.path == str(artifact) and spec.dtype == "float32"


def test_a_backend_this_sdrt_lacks_is_listed_not_faked(artifact, monkeypatch):
    import sdrt.engines

    monkeypatch.setattr(sdrt.engines, "BACKENDS", {"onnxruntime": sdrt.engines.BACKENDS["onnxruntime"]})
    spec, reason = contender("tensorrt", resolve_weights(artifact), "cpu")
    assert spec is None and reason == "not implemented yet: this sdrt has no tensorrt backend (it has onnxruntime)"


def test_gpu_parts_skip_with_a_reason_on_a_cpu_machine(artifact, demo_model):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the GPU paths run in test_gpu_bench instead")
    with pytest.raises(ValueError, match="device 'cuda' is not available"):
        resolve_device("cuda")
    assert resolve_device("auto") == "cpu"
    weights = resolve_weights(artifact, demo_model)
    _, reason = contender("diffusers-compile", weights, "cpu")
    assert "GPU only" in reason
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        _, reason = contender("onnxruntime", weights, "cuda:0")
        assert "no CUDAExecutionProvider" in reason and "install onnxruntime-gpu" in reason
    with MemorySampler("cpu") as sampler, sampler.window() as window:
        pass
    assert window.rss_peak >= window.rss_start > 0 and window.gpu_allocated_peak is None


@pytest.mark.gpu
def test_gpu_bench_times_with_cuda_events(artifact, demo_model):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU and a CUDA build of torch; this machine has neither")
    config = BenchConfig(
        path=artifact,
        model=demo_model,
        backends=("torch",),
        baselines=("diffusers",),
        sizes=((64, 64),),
        steps=2,
        runs=1,
        device="cuda",
        cold_start=False,
        settle_seconds=0.0,
    )
    result = run_bench(config)
    assert not result.failed
    for record in result.records:
        assert record.environment["timing"]["stages"] == "CUDA events on the current stream"
        assert record.environment["gpu"]["name"] == torch.cuda.get_device_name()
        assert record.memory()["peak_gpu_allocated_bytes"] > 0
    dtypes = {r.scenario.contender: r.scenario.dtype for r in result.records}
    assert dtypes == {"sdrt-torch": "float32", "diffusers": "float16"}


def test_controlnet_scenarios_time_the_controlnet_stage_beside_diffusers(artifact, demo_model, controlnet_models,
                                                                       controlnet_artifacts, tmp_path):  # fmt: skip
    names = sorted(controlnet_models)
    config = BenchConfig(
        path=artifact,
        model=demo_model,
        backends=("onnxruntime", "torch"),
        baselines=("diffusers",),
        sizes=((64, 64),),
        steps=2,
        runs=1,
        warmup=1,
        controlnets=tuple(controlnet_artifacts / n for n in names),
        controlnet_models=tuple(controlnet_models[n] for n in names),
        control_counts=(0, 2),
        device="cpu",
        cold_start=False,
        settle_seconds=0.0,
    )
    assert "--controlnets 0,2" in config.command()
    result = run_bench(config)
    assert [(r.scenario.contender, r.scenario.controlnets, r.status) for r in result.records] == [
        (c, n, "ok") for n in (0, 2) for c in ("sdrt-onnxruntime", "sdrt-torch", "diffusers")
    ]
    for record in result.records:
        (sample,) = record.samples
        # two ControlNets per UNet call (batched guidance: one call a step) ran, and were timed, or none at all
        assert (sample.controlnet > 0) == (record.scenario.controlnets == 2)
        assert sample.unet_calls == 2
        assert sample.loop_overhead >= 0 and sample.denoise >= sample.unet + sample.controlnet
    table = format_table(result)
    assert "2 ControlNets" in table and "ControlNet ms" in table
    plot(result.records, tmp_path / "bench.png")
    # a model directory that is not the artifact's source is refused before anything runs
    swapped = BenchConfig(
        path=artifact, model=demo_model, controlnets=tuple(controlnet_artifacts / n for n in names),
        controlnet_models=tuple(controlnet_models[n] for n in reversed(names)), cold_start=False,
    )  # fmt: skip
    with pytest.raises(ValueError, match="is not the ControlNet artifact .* was exported from"):
        run_bench(swapped)
