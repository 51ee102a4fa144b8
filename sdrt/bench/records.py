"""One result record per scenario, and the comparison of sdrt against a baseline in the same scenario."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sdrt.bench.coldstart import ColdStart
from sdrt.bench.memory import Window
from sdrt.bench.runners import Sample
from sdrt.bench.scenario import Scenario
from sdrt.bench.stats import Summary

SCHEMA = "sdrt-bench/1"
STATUSES = ("ok", "skipped", "failed")
# measures compared stage by stage against a baseline (medians over the timed runs)
COMPARED = (
    "text_encoder", "vae_encode", "controlnet", "unet_per_call", "scheduler_per_step", "vae_decode", "other", "total",
)  # fmt: skip

MEMORY_MEANING = (
    "peak_rss_bytes: this process's highest RSS sampled every 10 ms during the scenario's timed runs, with every "
    "contender of the run loaded; rss_growth_bytes: the most RSS rose above its level at the start of one run "
    "(the run's working memory). peak_gpu_allocated_bytes / gpu_allocated_growth_bytes: the same from torch's "
    "allocator (misses ONNX Runtime's own GPU memory); gpu_used_*: the driver's memory in use (includes it, and "
    "any other process on the GPU). A cold start's peak RSS is that of a fresh process serving one image alone."
)


@dataclass
class Record:
    """The outcome of one scenario: its samples, or why it was skipped or failed."""

    scenario: Scenario
    status: str  # "ok", "skipped" or "failed"
    reason: str | None = None  # why it was skipped or failed
    warmup: int = 0  # untimed runs first
    samples: list[Sample] = field(default_factory=list)  # the timed runs
    windows: list[Window] = field(default_factory=list)  # memory over each timed run
    cold_start: ColdStart | None = None  # measured for one scenario per contender
    cold_start_error: str | None = None  # why the cold start could not be measured
    vs_baseline: dict[str, dict[str, Any]] = field(default_factory=dict)  # baseline contender -> comparison
    vs_exact: dict[str, Any] | None = None  # a DeepCache scenario against its backend's exact one (deep_cache.py)
    notes: list[str] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)  # machine, versions, gpu, timing method
    unet_peak: dict[str, Any] | None = None  # CPU: FLOPs of a UNet call and its share of the FMA peak (bench.peak)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} is not one of {', '.join(STATUSES)}")

    @property
    def ok(self) -> bool:
        return self.status == "ok" and bool(self.samples)

    def summaries(self) -> dict[str, Summary]:
        """Median, p90, p99 of every measure over the timed runs."""
        if not self.samples:
            return {}
        names = self.samples[0].measures()
        return {name: Summary.of([s.measures()[name] for s in self.samples]) for name in names}

    def median_stages(self) -> dict[str, float]:
        """Median seconds of the parts of a run that add up to its total (for stacked charts)."""
        if not self.samples:
            return {}
        return {k: Summary.of([s.stages()[k] for s in self.samples]).median for k in self.samples[0].stages()}

    @property
    def throughput(self) -> float | None:
        """Images per second: batch / median end-to-end seconds."""
        if not self.ok:
            return None
        return self.scenario.batch / self.summaries()["total"].median

    def memory(self) -> dict[str, int | None]:
        if not self.windows:
            return {}

        def peak(attr: str) -> int | None:
            values = [getattr(w, attr) for w in self.windows if getattr(w, attr) is not None]
            return max(values) if values else None

        def growth(peak_attr: str, start_attr: str) -> int | None:
            values = [
                getattr(w, peak_attr) - getattr(w, start_attr)
                for w in self.windows
                if getattr(w, peak_attr) is not None and getattr(w, start_attr) is not None
            ]
            return max(values) if values else None

        return {
            "peak_rss_bytes": peak("rss_peak"),
            "rss_growth_bytes": growth("rss_peak", "rss_start"),
            "peak_gpu_allocated_bytes": peak("gpu_allocated_peak"),
            "gpu_allocated_growth_bytes": growth("gpu_allocated_peak", "gpu_allocated_start"),
            "peak_gpu_used_bytes": peak("gpu_used_peak"),
            "gpu_used_growth_bytes": growth("gpu_used_peak", "gpu_used_start"),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "scenario": self.scenario.to_json(),
            "status": self.status,
            "reason": self.reason,
            "runs": len(self.samples),
            "warmup": self.warmup,
            "seconds": {name: s.to_json() for name, s in self.summaries().items()},
            "throughput_images_per_second": self.throughput,
            "unet_calls_per_run": self.samples[0].unet_calls if self.samples else None,
            # of those, the calls that ran the whole UNet and DeepCache's shallow ones (0 without DeepCache)
            "unet_full_calls_per_run": self.samples[0].unet_full_calls if self.samples else None,
            "unet_shallow_calls_per_run": self.samples[0].unet_shallow_calls if self.samples else None,
            "steps_run": self.samples[0].steps if self.samples else None,
            "memory": self.memory() or None,
            "cold_start": None if self.cold_start is None else self.cold_start.to_json(),
            "cold_start_error": self.cold_start_error,
            "vs_baseline": self.vs_baseline,
            "vs_exact": self.vs_exact,
            "notes": self.notes,
            "unet_fma_peak": self.unet_peak,
            "samples": [s.to_json() for s in self.samples],
            **self.environment,
        }


def compare(contender: Record, baseline: Record) -> dict[str, Any]:
    """contender / baseline per measure (medians), seconds gained or lost per stage, and the stage that costs most.

    `slower_stage` names the stage with the largest excess over the baseline when the contender is slower end to
    end (ratio > 1), so a reader sees where the time goes; it is None when the contender is not slower.
    """
    mine, theirs = contender.summaries(), baseline.summaries()
    ratio = {
        name: mine[name].median / theirs[name].median if theirs[name].median > 0 else None
        for name in COMPARED
        if name in mine and name in theirs
    }
    extra = {
        stage: contender.median_stages()[stage] - seconds
        for stage, seconds in baseline.median_stages().items()
        if seconds > 0 or contender.median_stages()[stage] > 0
    }
    slower = ratio.get("total") is not None and ratio["total"] > 1
    worst = max(extra, key=extra.get) if extra else None
    return {
        "ratio": ratio,
        "extra_seconds": extra,
        "slower_stage": worst if slower and extra[worst] > 0 else None,
    }


def attach_comparisons(records: Sequence[Record]) -> None:
    """Fill `vs_baseline` of every sdrt record that ran, against every baseline that ran in the same group."""
    for record in records:
        if record.scenario.is_baseline or not record.ok:
            continue
        for base in records:
            if base.scenario.is_baseline and base.ok and base.scenario.group == record.scenario.group:
                record.vs_baseline[base.scenario.contender] = compare(record, base)
