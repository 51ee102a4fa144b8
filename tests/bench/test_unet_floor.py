"""benchmarks/unet_floor.py on the demo artifact: variants in fresh processes, their table and the profiler path."""

from __future__ import annotations

from benchmarks.unet_floor import markdown, measure, profile


def test_variants_run_in_fresh_processes_and_report_time_share_memory_and_agreement(artifact):
    result = measure(artifact, ["ort", "ort-spin", "ov-latency"], size=64, rows=2, calls=2, rounds=1)
    assert result["unet_flops_per_call"] > 0 and result["fma_peak"]["flops_per_second"] > 0
    for name, v in result["variants"].items():
        assert "error" not in v, (name, v)
        assert v["median_ms"] > 0 and 0 < v["fraction_of_peak"] and v["peak_rss_bytes"] > 0
        assert v["median_cpu_seconds"] > 0 and v["fraction_of_peak_by_cpu_time"] > 0
        assert len(result["runs"][name][0]["seconds"]) == 2
    assert result["variants"]["ort-spin"]["max_abs_diff_vs_first"] == 0.0  # spinning changes no arithmetic
    assert result["variants"]["ov-latency"]["max_abs_diff_vs_first"] < 1e-4
    table = markdown(result, "cmd")
    assert "| ort-spin |" in table and "% of peak by CPU time" in table


def test_profile_splits_one_call_by_op_type(artifact):
    result = profile(artifact, "ort", size=64, rows=2)
    assert result["op_seconds"] and {"Conv", "MatMul"} <= set(result["op_seconds"])
    assert 0.5 < sum(result["op_share"].values()) <= 1.0 + 1e-6  # kernels are most of a run, never more
