"""Tables of a benchmark's records (plain text for the terminal, Markdown for READMEs) and its JSON file."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from sdrt.bench.deep_cache import deep_cache_table
from sdrt.bench.peak import peak_line
from sdrt.bench.records import Record
from sdrt.bench.run import BenchResult
from sdrt.files import atomic_file

MIB = 1024 * 1024
STAGE_NAMES = {
    "text_encoder": "text encoder",
    "vae_encode": "VAE encode",
    "controlnet": "ControlNet",
    "unet": "UNet",
    "scheduler": "scheduler + loop overhead",
    "vae_decode": "VAE decode",
    "other": "other (tokenize, set-up, image conversion)",
}


def format_table(result: BenchResult, markdown: bool = False) -> str:
    """Every scenario group's latency table, throughput by batch, cold starts and notes."""
    records = result.records
    out: list[str] = []
    for group in _groups(records):
        out += [_title(group, markdown), "", _latency_table(group, markdown), ""]
        cached = deep_cache_table(group, markdown, _render, _ms)
        if cached:
            out += ["DeepCache against exact, per sdrt backend (medians; calls per run):", "", cached, ""]
        slower = _slower_lines(group)
        out += [f"- {line}" if markdown else f"  {line}" for line in slower] + ([""] if slower else [])
        peak = peak_line(group)
        out += [peak, ""] if peak else []
    throughput = _throughput_table(records, markdown)
    if throughput:
        out += ["Throughput, images per second (batch / median end-to-end time):", "", throughput, ""]
    cold = _cold_start_table(records, markdown)
    if cold:
        out += [
            "Cold start, each in a fresh process (engines already built; the build from an empty cache apart):",
            "",
            cold,
            "",
        ]
    for note in result.notes:
        out.append(f"Note: {note}")
    out.append(
        "Times are medians over the timed runs (p90 and p99 beside the total). Memory: peak RSS of the benchmark "
        "process during the scenario's runs, with every contender loaded; a cold start's is that of a process "
        "serving one image alone."
    )
    return "\n".join(out).rstrip() + "\n"


def write_json(result: BenchResult, path: str | os.PathLike) -> None:
    """Write the records (one per scenario) to `path`, atomically."""
    with atomic_file(Path(path)) as tmp:
        tmp.write_text(json.dumps(result.to_json(), indent=2) + "\n")


def _groups(records: Sequence[Record]) -> list[list[Record]]:
    groups: dict[tuple, list[Record]] = {}
    for record in records:
        groups.setdefault(record.scenario.group, []).append(record)
    return list(groups.values())


def _title(group: list[Record], markdown: bool) -> str:
    r = group[0]
    s = r.scenario
    runs = max(len(x.samples) for x in group)
    warmup = max(x.warmup for x in group)
    text = (
        f"{s.model} ({s.family}) on {s.device}: {s.size}, batch {s.batch}, {s.steps} steps, {s.scheduler}, "
        f"guidance {s.guidance_scale:g}, {s.mode}"
        + (f" strength {s.strength:g}" if s.strength is not None else "")
        + (f", {s.controlnets} ControlNet{'' if s.controlnets == 1 else 's'}" if s.controlnets else "")
        + f"; {runs or 'no'} timed run{'' if runs == 1 else 's'} after {warmup} warm-up"
    )
    return f"**{text}**" if markdown else text


def _latency_table(group: list[Record], markdown: bool) -> str:
    img2img = group[0].scenario.mode == "img2img"
    control = group[0].scenario.controlnets > 0
    baselines = [r.scenario.contender for r in group if r.scenario.is_baseline and r.ok]
    headers = ["contender", "dtype", "text enc ms"]
    headers += ["VAE enc ms"] if img2img else []
    headers += ["ControlNet ms"] if control else []
    headers += ["UNet/call ms", "sched/step ms", "VAE dec ms", "other ms", "total ms", "p90 ms", "p99 ms", "img/s"]
    headers += ["peak RSS MiB"] + [f"vs {b}" for b in baselines]
    rows = []
    for r in group:
        s = r.scenario
        if not r.ok:
            rows.append([s.contender, s.dtype, f"{r.status}: {r.reason}"])
            continue
        m = r.summaries()
        cells = [s.contender, s.dtype, _ms(m["text_encoder"].median)]
        cells += [_ms(m["vae_encode"].median)] if img2img else []
        cells += [_ms(m["controlnet"].median)] if control else []
        cells += [_ms(m[k].median) for k in ("unet_per_call", "scheduler_per_step", "vae_decode", "other", "total")]
        cells += [_ms(m["total"].p90), _ms(m["total"].p99), f"{r.throughput:.3g}"]
        cells += [_mib(r.memory().get("peak_rss_bytes"))]
        for b in baselines:
            if b == s.contender:
                cells.append("1 (itself)")
            elif b in r.vs_baseline and r.vs_baseline[b]["ratio"].get("total") is not None:
                cells.append(f"{r.vs_baseline[b]['ratio']['total']:.2f}")
            else:
                cells.append("-")
        rows.append(cells)
    return _render(headers, rows, markdown)


def _slower_lines(group: list[Record]) -> list[str]:
    """Where each sdrt contender that is slower than a baseline loses its time."""
    lines = []
    for r in group:
        for base, comparison in r.vs_baseline.items():
            stage = comparison["slower_stage"]
            if stage is None:
                continue
            extra = comparison["extra_seconds"][stage]
            lines.append(
                f"{r.scenario.contender} takes {comparison['ratio']['total']:.2f}x the time of {base}; the stage that "
                f"adds most is {STAGE_NAMES.get(stage, stage)} (+{extra * 1000:.1f} ms per generation)"
            )
    return lines


def _throughput_table(records: Sequence[Record], markdown: bool) -> str:
    """Images/s by batch, one row per (model, size, contender); empty when every scenario has one batch."""
    batches = sorted({r.scenario.batch for r in records})
    if len(batches) < 2:
        return ""
    rows: dict[tuple, dict[int, str]] = {}
    for r in records:
        s = r.scenario
        key = (s.model, s.size, s.contender, s.dtype)
        rows.setdefault(key, {})[s.batch] = f"{r.throughput:.3g}" if r.ok else r.status
    headers = ["model", "size", "contender", "dtype"] + [f"batch {b}" for b in batches]
    body = [list(key) + [cells.get(b, "") for b in batches] for key, cells in rows.items()]
    return _render(headers, body, markdown, left=4)


def _cold_start_table(records: Sequence[Record], markdown: bool) -> str:
    rows = []
    for r in records:
        s, c = r.scenario, r.cold_start
        if c is None and r.cold_start_error is None:
            continue
        head = [s.model, s.contender, f"{s.size} b{s.batch}"]
        if c is None:
            rows.append(head + [f"failed: {r.cold_start_error}"])
            continue
        build = "nothing to build" if c.build_seconds is None else f"{c.build_seconds:.2f}"
        gpu = "" if c.gpu_used_bytes is None else _mib(c.gpu_used_bytes)
        rows.append(
            head
            + [build, f"{c.load_seconds:.2f}", f"{c.first_image_seconds:.2f}", f"{c.load_to_first_image_seconds:.2f}"]
            + [f"{c.process_seconds:.2f}", _mib(c.peak_rss_bytes), gpu]
        )
    if not rows:
        return ""
    headers = ["model", "contender", "scenario", "build s", "load s", "first image s", "load to image s"]
    headers += ["process s", "peak RSS MiB", "GPU MiB"]
    return _render(headers, rows, markdown, left=3)


def _render(headers: list[str], rows: list[list[str]], markdown: bool, left: int = 2) -> str:
    """A table; the first `left` columns are text (left-aligned), the others numbers."""
    if markdown:
        rule = ["---" if i < left else "---:" for i in range(len(headers))]
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(rule) + "|"]
        lines += ["| " + " | ".join(row + [""] * (len(headers) - len(row))) + " |" for row in rows]
        return "\n".join(lines)
    # a row shorter than the header (skipped, failed) runs its last cell across the remaining columns
    widths = [len(h) for h in headers]
    for row in rows:
        cells = row if len(row) == len(headers) else row[:-1]
        widths = [max(w, len(c)) for w, c in zip(widths, cells, strict=False)] + widths[len(cells) :]

    def align(text: str, column: int) -> str:
        return text.ljust(widths[column]) if column < left else text.rjust(widths[column])

    lines = ["  ".join(align(h, i) for i, h in enumerate(headers)).rstrip()]
    for row in rows:
        if len(row) == len(headers):
            lines.append("  ".join(align(c, i) for i, c in enumerate(row)).rstrip())
        else:
            lines.append("  ".join([align(c, i) for i, c in enumerate(row[:-1])] + [row[-1]]))
    return "\n".join(lines)


def _ms(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:.2f}" if ms < 10 else f"{ms:.1f}" if ms < 1000 else f"{ms:.0f}"


def _mib(value: int | None) -> str:
    return "" if value is None else f"{value / MIB:.0f}"
