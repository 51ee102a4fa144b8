"""The benchmark chart: latency per stage, and throughput against batch size, sdrt beside the baselines."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from sdrt.bench.records import Record
from sdrt.files import atomic_file

# stage -> (label, colour); stacked in this order
_STAGES = {
    "text_encoder": ("text encoder", "#4c72b0"),
    "vae_encode": ("VAE encode", "#8172b2"),
    "controlnet": ("ControlNet", "#64b5cd"),
    "unet": ("UNet", "#dd8452"),
    "scheduler": ("scheduler + loop overhead", "#55a868"),
    "vae_decode": ("VAE decode", "#c44e52"),
    "other": ("other", "#937860"),
}


def plot(records: Sequence[Record], path: str | os.PathLike) -> None:
    """One row per model: median seconds per stage at the smallest batch (left), images/s by batch (right)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ran = [r for r in records if r.ok]
    if not ran:
        raise ValueError("no scenario ran, so there is nothing to plot")
    models = list(dict.fromkeys(r.scenario.model for r in ran))
    figure = Figure(figsize=(13, 1.5 + 3.2 * len(models)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(models), 2, squeeze=False, width_ratios=(3, 2))
    for row, model in zip(axes, models, strict=True):
        mine = [r for r in ran if r.scenario.model == model]
        _stage_bars(row[0], mine)
        _throughput_lines(row[1], mine)
    with atomic_file(Path(path)) as tmp:
        figure.savefig(tmp, format="png", dpi=110)


def _stage_bars(ax, records: list[Record]) -> None:
    smallest = min(r.scenario.batch for r in records)
    bars = [r for r in records if r.scenario.batch == smallest]
    labels = [f"{r.scenario.contender} ({r.scenario.dtype}) {r.scenario.size}" for r in bars]
    left = [0.0] * len(bars)
    for stage, (label, colour) in _STAGES.items():
        widths = [r.median_stages().get(stage, 0.0) for r in bars]
        if not any(widths):
            continue
        ax.barh(labels, widths, left=left, label=label, color=colour)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    s = bars[0].scenario
    ax.set_title(f"{s.model}: latency per stage, batch {smallest}, {s.steps} steps, {s.device} (median)")
    ax.set_xlabel("seconds")
    ax.invert_yaxis()
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.18), ncols=3, frameon=False)


def _throughput_lines(ax, records: list[Record]) -> None:
    lines: dict[str, list[Record]] = {}
    for r in records:
        lines.setdefault(f"{r.scenario.contender} {r.scenario.size}", []).append(r)
    for label, points in lines.items():
        points.sort(key=lambda r: r.scenario.batch)
        style = "--" if points[0].scenario.is_baseline else "-"
        ax.plot([r.scenario.batch for r in points], [r.throughput for r in points], style, marker="o", label=label)
    ax.set_title("throughput against batch size")
    ax.set_xlabel("images per generation (batch)")
    ax.set_ylabel("images per second")
    ax.set_xticks(sorted({r.scenario.batch for r in records}))
    ax.set_ylim(bottom=0)
    ax.legend(fontsize="small")
