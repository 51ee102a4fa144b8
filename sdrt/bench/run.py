"""`run_bench`: every contender on every scenario, alternating run by run in one process."""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sdrt.bench.coldstart import measure_cold_start
from sdrt.bench.deep_cache import attach_exact
from sdrt.bench.machine import gpu_info, machine_info, versions
from sdrt.bench.memory import MemorySampler
from sdrt.bench.peak import annotate as annotate_peak
from sdrt.bench.records import MEMORY_MEANING, SCHEMA, Record, attach_comparisons
from sdrt.bench.runners import Runner, load_runner
from sdrt.bench.scenario import BASELINES, BenchConfig, Scenario
from sdrt.bench.weights import ContenderSpec, Weights, contender, engine_dtype, resolve_weights

if TYPE_CHECKING:
    from sdrt.runtime.deep_cache import DeepCache

log = logging.getLogger(__name__)

WARMUP_SEED = 0
RUN_SEED = 1000

Entry = tuple[str, "DeepCache | None"]  # a contender: (backend or baseline, DeepCache setting or None for exact)


@dataclass
class BenchResult:
    """Every scenario's record, and notes about the run as a whole."""

    records: list[Record]
    notes: list[str] = field(default_factory=list)
    command: str | None = None  # the command line that produced it, for the published tables

    @property
    def failed(self) -> list[Record]:
        return [r for r in self.records if r.status == "failed"]

    def failures(self) -> list[str]:
        """What went wrong, one line each: failed scenarios and cold starts (a run with any exits non-zero)."""
        lines = [f"{r.scenario.contender}: {r.reason}" for r in self.failed]
        lines += [
            f"{r.scenario.contender} cold start: {r.cold_start_error}" for r in self.records if r.cold_start_error
        ]
        return lines

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "command": self.command,
            "notes": self.notes,
            "memory_meaning": MEMORY_MEANING,
            "records": [r.to_json() for r in self.records],
        }


def resolve_device(device: str) -> str:
    """Resolve "auto" to "cuda" when torch sees a GPU, else "cpu", and "cuda" to "cuda:N"; ValueError if absent."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} is not available: this torch has no CUDA or there is no GPU")
        index = torch.device(device).index
        return f"cuda:{torch.cuda.current_device() if index is None else index}"
    return device


def run_mode(mode: str, family: str) -> str:
    """The mode a family runs: the x4 upscaler always upscales (its default txt2img means upscale); others as asked."""
    if family == "upscaler_x4":
        if mode not in ("txt2img", "upscale"):
            raise ValueError(f"mode {mode} is not for the x4 upscaler: it runs upscale (a low-res image in)")
        return "upscale"
    if mode == "upscale":
        raise ValueError(f"mode upscale is the x4 upscaler's; this model is a {family} model")
    return mode


def plan(config: BenchConfig, weights: Weights) -> tuple[list[tuple[int, int]], list[int], list[str]]:
    """The sizes and batches to run, and notes on what was dropped; ValueError for sizes the artifact cannot take."""
    notes = []
    sizes = list(config.sizes or [(weights.default_size, weights.default_size)])
    batches = sorted(set(config.batches))
    if weights.ranges is not None:
        for width, height in sizes:
            weights.ranges.check_size(height, width)
        dropped = [b for b in batches if b > weights.ranges.max_batch]
        if dropped:
            batches = [b for b in batches if b <= weights.ranges.max_batch]
            notes.append(
                f"batch {', '.join(map(str, dropped))} dropped: the artifact's max_batch is {weights.ranges.max_batch} "
                f"(re-export with --max-batch {max(dropped)} to time it)"
            )
        if not batches:
            raise ValueError(
                f"every batch in {list(config.batches)} exceeds the artifact's max_batch {weights.ranges.max_batch}"
            )
    return sizes, batches, notes


def run_bench(config: BenchConfig) -> BenchResult:
    """Time every available contender on every (size, batch) of `config`; list the others as skipped, with why."""
    device = resolve_device(config.device)
    weights = resolve_weights(config.path, config.model)
    refiner = None if config.refiner is None else resolve_weights(config.refiner, config.refiner_model)
    if refiner is not None and (weights.family, refiner.family) != ("sdxl", "sdxl_refiner"):
        raise ValueError(f"--refiner {config.refiner} is a {refiner.family} model; an sdxl base takes an sdxl_refiner")
    sizes, batches, notes = plan(config, weights)
    mode = run_mode(config.mode, weights.family)
    if config.mode == "img2img" and weights.artifact is not None:
        from sdrt.manifest import read_manifest

        if "vae_encoder" not in read_manifest(weights.artifact).components:
            raise ValueError(f"artifact {weights.artifact} has no vae_encoder: it cannot run img2img")
    if weights.unsupported is not None:
        notes.append(f"sdrt does not run this model ({weights.unsupported}); its backends are skipped")
    environment = _environment(device)

    controlnets, controlnet_models = _controlnets(config)
    specs: dict[str, ContenderSpec] = {}
    reasons: dict[str, str] = {}
    for backend in config.backends + config.baselines:
        spec, reason = contender(backend, weights, device, refiner, controlnets, controlnet_models)
        if spec is not None:
            specs[backend] = spec
        else:
            reasons[backend] = reason or "unavailable"

    def scenario(entry: Entry, width: int, height: int, batch: int, controlnets: int) -> Scenario:
        backend, deep_cache = entry
        spec = specs.get(backend)
        return Scenario(
            model=config.label or weights.label,
            family=weights.family,
            backend=backend,
            device=device.split(":")[0],
            dtype=spec.dtype if spec is not None else _dtype(backend, device, weights),
            width=width,
            height=height,
            batch=batch,
            steps=config.steps,
            scheduler=config.scheduler,
            guidance_scale=config.guidance_scale,
            mode=mode,
            strength=config.strength if mode == "img2img" else None,
            refiner_switch_at=config.refiner_switch_at,
            controlnets=controlnets,
            deep_cache=deep_cache,
        )

    # contenders: every sdrt backend exact and with each DeepCache setting (one loaded pipeline runs them all), then
    # the baselines
    entries: list[Entry] = [(b, d) for b in config.backends for d in (None, *config.deep_caches)]
    entries += [(b, None) for b in config.baselines]
    groups = [(w, h, b, n) for (w, h) in sizes for b in batches for n in config.control_counts]
    records: dict[tuple[Entry, tuple[int, int, int, int]], Record] = {}
    for group in groups:
        for entry in entries:
            record = Record(scenario(entry, *group), "ok", warmup=config.warmup, environment=environment)
            if entry[0] in reasons:
                record.status, record.reason, record.warmup = "skipped", reasons[entry[0]], 0
            records[(entry, group)] = record

    if config.cold_start:  # first, while this process holds no model: the machine is the child's alone
        _cold_starts(specs, {b: records[((b, None), groups[0])] for b in specs})

    runners: dict[str, Runner] = {}
    for backend, spec in specs.items():
        log.info("loading %s", records[((backend, None), groups[0])].scenario.contender)
        try:
            runners[backend] = load_runner(spec)
        except Exception as exc:  # a contender that cannot load is reported, and the others still run
            mine = [records[(e, g)] for e in entries if e[0] == backend for g in groups]
            _fail(mine, f"loading failed: {type(exc).__name__}: {exc}")
    _skip_refused([r for (e, _), r in records.items() if e[1] is not None and e[0] in runners], runners)

    with MemorySampler(device) as sampler:
        for group in groups:
            _time_group({e: records[(e, group)] for e in entries if e[0] in runners}, runners, config, sampler)

    ordered = [records[(e, g)] for g in groups for e in entries]
    attach_comparisons(ordered)
    attach_exact(ordered)
    if not device.startswith("cuda") and weights.artifact is not None:  # the UNet against the FMA peak
        annotate_peak(ordered, weights.artifact)
    for record in ordered:
        record.notes.extend(notes)
    return BenchResult(ordered, notes)


def _cold_starts(specs: dict[str, ContenderSpec], records: dict[str, Record]) -> None:
    """Measure each contender's cold start in fresh processes, at its record's scenario."""
    for backend, spec in specs.items():
        record = records[backend]
        log.info("cold start: %s (fresh processes)", record.scenario.contender)
        try:
            record.cold_start = measure_cold_start(spec, record.scenario)
        except ValueError as exc:
            record.cold_start_error = str(exc)
            log.error("cold start of %s failed: %s", record.scenario.contender, exc)


def _skip_refused(records: Sequence[Record], runners: dict[str, Runner]) -> None:
    """Mark skipped, with the pipeline's reason, the scenarios a loaded contender refuses (e.g. DeepCache on a
    backend whose artifact lacks its networks), before any is timed."""
    for record in records:
        check = getattr(runners[record.scenario.backend], "refusal", None)
        reason = None if check is None or record.status != "ok" else check(record.scenario)
        if reason is not None:
            log.warning("%s: skipped: %s", record.scenario.contender, reason)
            record.status, record.reason, record.warmup = "skipped", reason, 0


def _time_group(
    records: dict[Entry, Record], runners: dict[str, Runner], config: BenchConfig, sampler: MemorySampler
) -> None:
    """Warm up each contender, then alternate timed runs, rotating who goes first so drift hits all alike."""
    live = [e for e, r in records.items() if r.status == "ok"]
    for entry in list(live):
        record = records[entry]
        log.info("warm-up: %s, %s", record.scenario.contender, _describe(record.scenario))
        try:
            for i in range(config.warmup):
                time.sleep(config.settle_seconds)
                runners[record.scenario.backend].run(record.scenario, seed=WARMUP_SEED + i)
        except Exception as exc:
            _fail([record], f"warm-up failed: {type(exc).__name__}: {exc}")
            live.remove(entry)
    for i in range(config.runs):
        order = live[i % len(live) :] + live[: i % len(live)] if live else []
        for entry in order:
            record = records[entry]
            if record.status != "ok":
                continue
            time.sleep(config.settle_seconds)
            try:
                with sampler.window() as window:
                    sample = runners[record.scenario.backend].run(record.scenario, seed=RUN_SEED + i)
            except Exception as exc:
                _fail([record], f"run {i + 1} failed: {type(exc).__name__}: {exc}")
                continue
            record.samples.append(sample)
            record.windows.append(window)
        log.info("timed run %d of %d done", i + 1, config.runs)


def _fail(records: Sequence[Record], reason: str) -> None:
    log.error("%s: %s", records[0].scenario.contender, reason)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # after an out-of-memory error, let the other contenders have the memory
    for record in records:
        record.status, record.reason = "failed", reason
        record.samples.clear()
        record.windows.clear()


def _dtype(backend: str, device: str, weights: Weights) -> str:
    """What a skipped contender would run in: GPU baselines in float16, engine backends the artifact's precision."""
    if backend in BASELINES:
        return "float16" if device.startswith("cuda") else "float32"
    return "float32" if backend == "torch" else engine_dtype(weights)


def _describe(s: Scenario) -> str:
    return f"{s.size}, batch {s.batch}, {s.steps} steps"


def _environment(device: str) -> dict[str, Any]:
    cuda = device.startswith("cuda")
    return {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "gpu": gpu_info(device),
        "versions": versions(),
        "timing": {
            "stages": "CUDA events on the current stream" if cuda else "host clock (perf_counter)",
            "total": "host clock, synchronized with the device before and after" if cuda else "host clock",
        },
    }


def _controlnets(config: BenchConfig) -> tuple[tuple[Path, ...], tuple[Path, ...]]:
    """(ControlNet artifacts, their model directories): --controlnet alone may name model directories; a pair
    must hold the same weights, as the base model's pair does."""
    from sdrt.manifest import MANIFEST_NAME, read_manifest
    from sdrt.model_dir import ModelDir

    nets, models = config.controlnets, config.controlnet_models
    if nets and not models and not any((p / MANIFEST_NAME).is_file() for p in nets):
        return (), nets  # model directories: the torch backend and the baselines run them
    for artifact in nets:
        if not (artifact / MANIFEST_NAME).is_file():
            raise ValueError(f"--controlnet {artifact} is not an artifact (no manifest.json) while others are")
    for artifact, model in zip(nets, models, strict=True):
        if ModelDir.open(model).weights_sha256() != read_manifest(artifact).source_sha256:
            raise ValueError(
                f"--controlnet-model {model} is not the ControlNet artifact {artifact} was exported from (the "
                "weights' sha256 differs from the manifest's source_sha256)"
            )
    return nets, models
