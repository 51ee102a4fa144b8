"""`sdrt bench`: per-stage latency, throughput, cold start and memory of sdrt against diffusers, in one run.

Library code behind the command and the `benchmarks/` suites: `run_bench(BenchConfig(...))` gives
one `Record` per scenario; `format_table`, `write_json` and `plot` present them.
"""

from sdrt.bench.plot import plot
from sdrt.bench.records import Record
from sdrt.bench.report import format_table, write_json
from sdrt.bench.run import BenchResult, run_bench
from sdrt.bench.scenario import BASELINES, SDRT_BACKENDS, BenchConfig, Scenario

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
