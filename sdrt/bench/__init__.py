"""`sdrt bench`: per-stage latency, throughput, cold start and memory of sdrt against diffusers, in one run.

Library code behind the command and the `benchmarks/` suites: `run_bench(BenchConfig(...))` gives
one `Record` per scenario; `format_table`, `write_json` and `plot` present them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sdrt.lazy import lazy_names

if TYPE_CHECKING:
    from sdrt.bench.plot import plot
    from sdrt.bench.records import Record
    from sdrt.bench.report import format_table, write_json
    from sdrt.bench.run import BenchResult, run_bench
    from sdrt.bench.scenario import BASELINES, SDRT_BACKENDS, BenchConfig, Scenario

# imported on first use: the runners import torch, which `sdrt bench --help` (reading the scenario) does without
__getattr__ = lazy_names(
    __name__,
    {
        "plot": "sdrt.bench.plot",
        "Record": "sdrt.bench.records",
        "format_table": "sdrt.bench.report",
        "write_json": "sdrt.bench.report",
        "BenchResult": "sdrt.bench.run",
        "run_bench": "sdrt.bench.run",
        **{name: "sdrt.bench.scenario" for name in ("BASELINES", "SDRT_BACKENDS", "BenchConfig", "Scenario")},
    },
)

__all__ = [
    "BASELINES",
    "SDRT_BACKENDS",
    "BenchConfig",
    "BenchResult",
    "Record",
    "Scenario",
    "format_table",
    "plot",
    "run_bench",
    "write_json",
]
